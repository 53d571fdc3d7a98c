"""docs/config.md: the generated config reference matches the dataclasses, and every key has a
description (a new config key without a ``#:`` comment fails here)."""

import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Literal, Optional, Union

import pytest

from fusionrec import configdoc
from fusionrec.pipeline.config import ExperimentConfig, load_config

REFERENCE = "docs/config.md"
REGENERATE = "run `make docs` (python -m fusionrec.configdoc --out docs/config.md) and commit the result"


def test_every_config_field_has_a_description():
    missing = configdoc.missing_docs(ExperimentConfig)
    assert not missing, (
        "config fields without a one-line description; add a `#: ...` comment at the end of the "
        f"field's line or on the line above it, then {REGENERATE}: {missing}"
    )


def test_committed_reference_is_up_to_date(repo_root):
    committed = (repo_root / REFERENCE).read_text()
    diff = configdoc.stale_diff(committed, configdoc.render(ExperimentConfig), REFERENCE)
    assert not diff, f"{REFERENCE} is out of date; {REGENERATE}.\n" + "\n".join(diff.splitlines()[:60])


def test_every_link_in_the_reference_has_a_target(repo_root):
    text = (repo_root / REFERENCE).read_text()
    headings = {configdoc._slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and not links - headings, f"links without a heading in {REFERENCE}: {sorted(links - headings)}"
    assert (repo_root / "docs" / "data.md").exists()


def test_reference_names_every_key_of_the_example_configs(repo_root):
    """Every key set in configs/*.yaml has a row in the reference."""
    text = configdoc.render(ExperimentConfig)
    for path in sorted((repo_root / "configs").glob("*.yaml")):
        for name in _keys(load_config(path)):
            assert f"| `{name}` |" in text, f"{path.name}: key {name!r} has no row in {REFERENCE}"


def _keys(obj) -> set[str]:
    """Field names of every dataclass inside ``obj`` (mapping keys are names, not config keys)."""
    if is_dataclass(obj):
        return {f.name for f in fields(obj)} | {k for f in fields(obj) for k in _keys(getattr(obj, f.name))}
    if isinstance(obj, dict):
        return {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_sections_follow_the_yaml_structure():
    titles = {tuple(s.paths) for s in configdoc.sections(ExperimentConfig)}
    for expected in [("",), ("features",), ("features.tables[]",), ("tasks[]",), ("model.bottom",),
                     ("model.fusion",), ("train.sparse_optimizer", "train.dense_optimizer"),
                     ("features.normalization.<name>",), ("sharding.constraints.<name>",), ("synthetic",)]:
        assert expected in titles, expected


# ---------------------------------------------------------------- the generator on a toy config


@dataclass
class _Leaf:
    """A leaf section."""

    size: int = 4  #: how big
    #: what it is called
    name: Optional[str] = None


@dataclass
class _VariantA:
    type: Literal["a"] = "a"  #: selects a
    rate: float = 1.0e-8  #: how fast


@dataclass
class _VariantB:
    type: Literal["b", "b2"] = "b"  #: selects b
    dims: list[Union[int, list[int]]] = field(default_factory=lambda: [[8, 4]])  #: widths | layers


@dataclass
class _Root:
    leaves: list[_Leaf]  #: the leaves
    choice: Union[_VariantA, _VariantB] = field(default_factory=_VariantA)  #: a or b
    by_name: dict[str, _Leaf] = field(default_factory=dict)  #: leaves by name
    mode: Literal["x", "y"] = "x"  #: x or y
    undocumented: bool = False


def test_missing_description_is_reported():
    assert configdoc.missing_docs(_Root) == [f"{__name__}._Root.undocumented"]
    with pytest.raises(ValueError, match="undocumented"):
        configdoc.render(_Root)


def test_render_describes_types_defaults_and_tagged_unions(monkeypatch):
    monkeypatch.setitem(configdoc._module_docs(__name__)["_Root"], "undocumented", "a flag")
    text = configdoc.render(_Root)
    assert "| `leaves` | list of [_Leaf](#leaves-by_namename) | **required** | the leaves |" in text
    assert "## `leaves[]`, `by_name.<name>`" in text
    assert "| `name` | `str` or `null` | `null` | what it is called |" in text
    assert "| `mode` | `x` \\| `y` | `x` | x or y |" in text
    assert "### `choice` with `type: b | b2`" in text
    assert "| `type` | `b` \\| `b2` | **required** | selects b |" in text  # the tag picks the variant
    assert "| `dims` | list of (`int` or list of `int`) | `[[8, 4]]` | widths \\| layers |" in text
    assert "| `rate` | `float` | `1.0e-08` | how fast |" in text  # written so that YAML reads a number
    links = "[`a`](#choice-with-type-a), [`b \\| b2`](#choice-with-type-b--b2)"
    assert f"| `choice` | mapping by `type`: {links} | `{{type: a}}` | a or b |" in text
    assert "A leaf section." in text


def test_generated_part_is_replaced_in_place():
    generated = configdoc.BEGIN + "\nnew\n" + configdoc.END + "\n"
    text = "# hand-written\n\n" + configdoc.BEGIN + "\nold\n" + configdoc.END + "\n\n## also hand-written\n"
    updated = configdoc.replace_generated(text, generated)
    assert updated == "# hand-written\n\n" + generated + "\n## also hand-written\n"
    assert configdoc.stale_diff(updated, generated) == ""
    assert "-old" in configdoc.stale_diff(text, generated)
    assert "no generated part" in configdoc.stale_diff("# nothing\n", generated)
