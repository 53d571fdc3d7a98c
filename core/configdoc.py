"""The config reference (``docs/config.md``), generated from the typed config dataclasses.

Every key of every section is listed with its type, default and one line of meaning. The
meaning is the ``#:`` comment attached to the field in the dataclass's source, either at the
end of the field's line or on the line(s) directly above it::

    batch_size: int = 256  #: rows per batch on each rank (>= 1)

    #: stop after this many steps (>= 1); null: run all epochs
    max_steps: Optional[int] = None

Types and defaults are read from the dataclasses themselves, the way
:mod:`fusionrec.typedconfig` reads YAML: ``Optional[X]`` accepts ``null``, a union of
dataclasses is chosen by its ``type`` key, and a field without a default is required.

The reference is the part of the file between :data:`BEGIN` and :data:`END`; the text around
it is written by hand and kept as it is::

    python -m fusionrec.configdoc                         # print the generated part
    python -m fusionrec.configdoc --out docs/config.md    # rewrite the generated part of the file
    python -m fusionrec.configdoc --check docs/config.md  # exit 1 when the file is out of date

This module imports no section itself: the root dataclass is named by ``--root``
(default :data:`DEFAULT_ROOT`) and imported when the command runs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import importlib
import inspect
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

DEFAULT_ROOT = "fusionrec.pipeline.config:ExperimentConfig"
BEGIN = (
    "<!-- BEGIN generated config reference: `make docs` (python -m fusionrec.configdoc --out docs/config.md) "
    "writes it from the config dataclasses; edit their #: comments, not this part -->"
)
END = "<!-- END generated config reference -->"
DOC_MARK = "#:"
_TABLE_PIPE = " \\| "  # a pipe inside a Markdown table cell

_HOW_TO_READ = """\
## Reference

Generated from the config dataclasses; every section below is one mapping of the YAML file.

How to read the tables:

- **key path**: `tasks[]` is each element of the list `tasks`; `sharding.constraints.<name>` is
  the value under each key of the mapping `sharding.constraints` (the key is a name you choose,
  here a table's). `--set` addresses list elements by index or by `name`.
- **type**: `int`, `str`, `bool`; `float` also accepts an integer. Write exponents with a dot
  (`1.0e-8`): YAML reads `1e-8` as a string. `x` | `y` is one of those strings. "or `null`" means
  the key may be `null`, which is also its default unless another is given. A linked name is a
  nested mapping with its own section; "mapping by `type`" is one of several mappings, chosen by
  its `type` key, each with its own table.
- **default**: **required** means the key must be given. `{}` means the whole mapping may be
  left out, every key then taking its default; `{type: x}` means that variant with its defaults.

Rules that span several keys are in [Rules that span keys](#rules-that-span-keys).
"""


# ------------------------------------------------------------------------- field docs


@functools.lru_cache(maxsize=None)
def _module_docs(module_name: str) -> dict[str, dict[str, str]]:
    """Class name → field name → ``#:`` text, for every class of a module."""
    source = inspect.getsource(sys.modules[module_name])
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line number → text of a comment starting with DOC_MARK
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.string.startswith(DOC_MARK):
            comments[tok.start[0]] = tok.string[len(DOC_MARK):].strip()
    found: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        docs = found.setdefault(node.name, {})
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            parts = []
            line = stmt.lineno - 1  # comment-only lines directly above the field
            while line >= 1 and line in comments and lines[line - 1].lstrip().startswith(DOC_MARK):
                parts.insert(0, comments[line])
                line -= 1
            if stmt.end_lineno in comments:
                parts.append(comments[stmt.end_lineno])
            text = " ".join(p for p in parts if p)
            if text:
                docs[stmt.target.id] = text
    return found


def field_docs(cls: type) -> dict[str, str]:
    """Field name → its one-line ``#:`` description, for the fields of dataclass ``cls`` that
    have one."""
    return dict(_module_docs(cls.__module__).get(cls.__name__, {}))


# ------------------------------------------------------------------------- the sections


@dataclasses.dataclass
class Section:
    """One dataclass of the config and the key paths where it appears.

    ``variant_of`` is the tagged-union group it belongs to (its path), or ``None``.
    """

    cls: type
    paths: list[str]
    variant_of: str | None = None


@dataclasses.dataclass
class UnionGroup:
    """A tagged union of dataclasses at one or more key paths: its variants, by ``type``."""

    paths: list[str]
    variants: list[type]


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _dataclass_options(tp: Any) -> list[type] | None:
    """The dataclasses of a union of (only) dataclasses, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) > 1 and all(dataclasses.is_dataclass(a) for a in options):
            return options
    return None


def _tags(cls: type) -> list[str]:
    return list(typing.get_args(typing.get_type_hints(cls)["type"]))


def sections(root: type) -> list[Section | UnionGroup]:
    """Every dataclass reachable from ``root``, in depth-first field order (a section follows
    the section that holds it); a class reached at several paths is listed once."""
    order: list[Section | UnionGroup] = []
    by_cls: dict[type, Section] = {}
    by_union: dict[tuple[type, ...], UnionGroup] = {}

    def visit_cls(cls: type, path: str, variant_of: str | None = None) -> None:
        if cls in by_cls:
            by_cls[cls].paths.append(path)
            return
        section = by_cls[cls] = Section(cls, [path], variant_of)
        order.append(section)
        hints = typing.get_type_hints(cls)
        for f in _fields(cls):
            visit_type(hints[f.name], f"{path}.{f.name}" if path else f.name)

    def visit_type(tp: Any, path: str) -> None:
        options = _dataclass_options(tp)
        if options is not None:
            key = tuple(options)
            if key in by_union:
                by_union[key].paths.append(path)
                return
            group = by_union[key] = UnionGroup([path], options)
            order.append(group)
            for option in options:
                visit_cls(option, path, variant_of=path)
            return
        if dataclasses.is_dataclass(tp):
            visit_cls(tp, path)
            return
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is list:
            visit_type(args[0], f"{path}[]")
        elif origin is dict:
            visit_type(args[1], f"{path}.<name>")
        elif origin in (Union, types.UnionType):
            for arg in args:
                visit_type(arg, path)

    visit_cls(root, "")
    return order


def missing_docs(root: type) -> list[str]:
    """``module.Class.field`` for every field reachable from ``root`` without a ``#:``
    description (empty when the reference is complete)."""
    missing = []
    for section in sections(root):
        if isinstance(section, Section):
            docs = field_docs(section.cls)
            missing += [f"{section.cls.__module__}.{section.cls.__name__}.{f.name}"
                        for f in _fields(section.cls) if f.name not in docs]
    return missing


# ------------------------------------------------------------------------- rendering


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _heading(section: Section) -> str:
    paths = ", ".join(f"`{p}`" for p in section.paths)
    if section.variant_of is not None:
        return f"{paths} with `type: {' | '.join(_tags(section.cls))}`"
    return paths if section.paths != [""] else "Top level"


def _code(value: str) -> str:
    return f"`{value}`"


def _yaml(value: Any) -> str:
    """A default as it would be written in the YAML file (flow style, one line)."""
    if dataclasses.is_dataclass(value):
        names = {f.name for f in _fields(type(value))}
        return f"{{type: {value.type}}}" if "type" in names else "{}"
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _type(tp: Any, anchors: dict[Any, str]) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return _TABLE_PIPE.join(_code(str(a)) for a in args)
    options = _dataclass_options(tp)
    if options is not None:
        links = ", ".join(f"[{_code(_TABLE_PIPE.join(_tags(o)))}](#{anchors[o]})" for o in options)
        return f"mapping by `type`: {links}"
    if dataclasses.is_dataclass(tp):
        return f"[{tp.__name__}](#{anchors[tp]})"
    if origin in (Union, types.UnionType):
        parts = [_type(a, anchors) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or `null`" if type(None) in args else text
    if origin is list:
        inner = _type(args[0], anchors)
        return f"list of ({inner})" if (" or " in inner or "\\|" in inner) else f"list of {inner}"
    if origin is dict:
        return f"mapping of {_type(args[0], anchors)} to {_type(args[1], anchors)}"
    if tp in (int, float, str, bool):
        return _code(tp.__name__)
    raise TypeError(f"configdoc cannot describe the field type {tp!r}")


def _default(f: dataclasses.Field, tagged: bool) -> str:
    if tagged and f.name == "type":
        return "**required**"
    if f.default is not dataclasses.MISSING:
        return _code(_yaml(f.default))
    if f.default_factory is not dataclasses.MISSING:
        return _code(_yaml(f.default_factory()))
    return "**required**"


def _cell(text: str) -> str:
    """Escape a table cell: every pipe (GitHub splits cells at pipes even inside code spans),
    and, outside code spans, a ``<`` that would start HTML."""
    return _no_html(text.replace("|", "\\|"))


def _prose(doc: str | None) -> str:
    """A class docstring as Markdown: RST ``literals`` and :role:`targets` become code spans."""
    if not doc:
        return ""
    doc = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", doc)
    doc = doc.replace("``", "`")
    paragraphs = [" ".join(p.split()) for p in doc.strip().split("\n\n")]
    return "\n\n".join(_no_html(p) for p in paragraphs if p)


def _no_html(text: str) -> str:
    """Escape a ``<`` outside code spans, which Markdown would read as the start of HTML."""
    parts = text.split("`")
    return "`".join(p.replace("<", "\\<") if i % 2 == 0 else p for i, p in enumerate(parts))


def render(root: type) -> str:
    """The generated part of the reference for ``root``, markers included.

    Raises:
        ValueError: a field has no ``#:`` description (see :func:`missing_docs`).
    """
    missing = missing_docs(root)
    if missing:
        raise ValueError("config fields without a #: description: " + ", ".join(missing))
    order = sections(root)
    anchors: dict[Any, str] = {}
    for section in order:
        if isinstance(section, Section):
            anchors[section.cls] = _slug(_heading(section))
    out = [BEGIN, "", _HOW_TO_READ]
    for section in order:
        if isinstance(section, UnionGroup):
            paths = ", ".join(_code(p) for p in section.paths)
            links = ", ".join(f"[{_code(' | '.join(_tags(v)))}](#{anchors[v]})" for v in section.variants)
            out += [f"## {paths}", "", f"One of these mappings, chosen by its `type` key: {links}.", ""]
            continue
        level = "###" if section.variant_of is not None else "##"
        out += [f"{level} {_heading(section)}", ""]
        out += [f"`{section.cls.__module__}.{section.cls.__name__}`", ""]
        prose = _prose(section.cls.__doc__) if section.cls.__doc__ != _auto_doc(section.cls) else ""
        if prose:
            out += [prose, ""]
        hints = typing.get_type_hints(section.cls)
        docs = field_docs(section.cls)
        tagged = section.variant_of is not None
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for f in _fields(section.cls):
            out.append(
                f"| `{f.name}` | {_type(hints[f.name], anchors)} | {_default(f, tagged)} | {_cell(docs[f.name])} |"
            )
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def _auto_doc(cls: type) -> str:
    """The docstring ``@dataclass`` makes up for a class without one (the signature)."""
    try:
        return cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")
    except (TypeError, ValueError):
        return ""


# ------------------------------------------------------------------------- the file


def generated_part(text: str) -> str | None:
    """The generated part of a reference file, markers included; None when it has none."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(END)] + "\n"


def replace_generated(text: str, generated: str) -> str:
    """``text`` with its generated part replaced by ``generated``."""
    old = generated_part(text)
    if old is None:
        raise ValueError(f"no generated part (between {BEGIN!r} and {END!r}) to replace")
    start = text.find(BEGIN)
    return text[:start] + generated + text[start + len(old):]


def stale_diff(text: str, generated: str, name: str = "docs/config.md") -> str:
    """A unified diff from the file's generated part to ``generated``; empty when up to date."""
    old = generated_part(text)
    if old is None:
        return f"{name} has no generated part (between the markers {BEGIN!r} and {END!r})\n"
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), generated.splitlines(keepends=True), f"{name} (on disk)", f"{name} (generated)"
    ))


def load_root(spec: str) -> type:
    """The dataclass named by ``module:Class``."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusionrec.configdoc", description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--out", type=Path, help="rewrite the generated part of this file (created when missing)")
    what.add_argument("--check", type=Path, help="exit 1 when this file's generated part is out of date")
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"module:Class of the root dataclass ({DEFAULT_ROOT})")
    args = parser.parse_args(argv)
    try:
        generated = render(load_root(args.root))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check is not None:
        diff = stale_diff(args.check.read_text(), generated, str(args.check))
        if diff:
            sys.stdout.write(diff)
            print(f"error: {args.check} is out of date; run `make docs`", file=sys.stderr)
            return 1
        return 0
    if args.out is None:
        sys.stdout.write(generated)
        return 0
    text = args.out.read_text() if args.out.exists() else generated
    try:
        args.out.write_text(replace_generated(text, generated))
    except ValueError as err:
        print(f"error: {args.out}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
