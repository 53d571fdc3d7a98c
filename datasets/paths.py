"""Where the Parquet logs are: resolving directories, globs and filesystem URIs to files,
and opening one file with errors that name it."""

from __future__ import annotations

import fnmatch
import glob as globlib
import os
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fusionrec.errors import DataError

__all__ = ["open_parquet", "resolve_paths"]

_GLOB_CHARS = "*?["


# ----------------------------------------------------------------------------- paths


def _is_uri(spec: str) -> bool:
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").replace("-", "").isalnum()


def _visible_parquet(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".parquet") and not base.startswith((".", "_"))


def resolve_paths(spec: str) -> list[str]:
    """The Parquet files named by ``spec``, sorted.

    ``spec`` is a directory (every ``*.parquet`` directly inside, hidden and ``_``-prefixed
    names skipped), a glob (``data/*/part-*.parquet``; ``**`` recurses), or a single file;
    either a local path or a URI that ``pyarrow.fs.FileSystem.from_uri`` understands
    (``file://``, ``s3://``, ``gs://``, ``hdfs://`` ...). Local and ``file://`` specs give
    local paths, other URIs give URIs of the same scheme and authority.

    Raises:
        DataError: nothing matches, naming ``spec``.
    """
    if not spec:
        raise DataError("empty data path")
    if _is_uri(spec):
        base, query = (spec.split("?", 1) + [""])[:2]
        glob_at = min((base.find(c) for c in _GLOB_CHARS if c in base), default=-1)
        root = base if glob_at < 0 else base[: base.rfind("/", 0, glob_at) + 1]
        try:
            fs, root_path = pafs.FileSystem.from_uri(root + (f"?{query}" if query else ""))
        except (pa.ArrowException, ValueError, OSError) as err:
            raise DataError(f"cannot open data path {spec!r}: {err}") from None
        if isinstance(fs, pafs.LocalFileSystem):
            return _resolve_local(os.path.join(root_path, base[len(root) :]) if glob_at >= 0 else root_path, spec)
        prefix = _uri_prefix(root, root_path, spec)
        suffix = f"?{query}" if query else ""
        return [prefix + p + suffix for p in _list_fs(fs, root_path, base[len(root) :] if glob_at >= 0 else None, spec)]
    return _resolve_local(spec, spec)


def _resolve_local(path: str, spec: str) -> list[str]:
    if any(c in path for c in _GLOB_CHARS):
        found = [p for p in globlib.glob(path, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(path):
        found = [str(p) for p in Path(path).iterdir() if p.is_file() and _visible_parquet(p.name)]
    else:
        found = [path] if os.path.isfile(path) else []
    if not found:
        raise DataError(f"no Parquet files match {spec!r}")
    return sorted(found)


def _uri_prefix(root_uri: str, root_path: str, spec: str) -> str:
    """The part of ``root_uri`` in front of the filesystem path ``root_path``."""
    uri, path = root_uri.rstrip("/"), root_path.rstrip("/")
    if not uri.endswith(path):
        raise DataError(f"cannot map paths of {spec!r} back to URIs (filesystem path {root_path!r})")
    return uri[: len(uri) - len(path)]


def _list_fs(fs: pafs.FileSystem, root: str, pattern: Optional[str], spec: str) -> list[str]:
    try:
        info = fs.get_file_info(root)
        if pattern is None and info.type == pafs.FileType.File:
            return [root]
        if info.type != pafs.FileType.Directory:
            raise DataError(f"no Parquet files match {spec!r}")
        recursive = pattern is not None and ("/" in pattern or "**" in pattern)
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=recursive))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot list data path {spec!r}: {err}") from None
    base = root.rstrip("/") + "/"
    found = []
    for entry in entries:
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(base) :] if entry.path.startswith(base) else entry.base_name
        if pattern is None and _visible_parquet(rel) and "/" not in rel:
            found.append(entry.path)
        elif pattern is not None and _glob_match(rel, pattern):
            found.append(entry.path)
    if not found:
        raise DataError(f"no Parquet files match {spec!r}")
    return sorted(found)


def _glob_match(rel: str, pattern: str) -> bool:
    """Shell-style match of a relative path; ``*`` stays within one folder unless the
    pattern has ``**``, which matches any depth."""
    if "**" in pattern:
        return fnmatch.fnmatchcase(rel, pattern.replace("**/", "*").replace("**", "*"))
    return rel.count("/") == pattern.count("/") and fnmatch.fnmatchcase(rel, pattern)


def open_parquet(path: str) -> pq.ParquetFile:
    """Open one Parquet file (local path or filesystem URI) and read its footer; page
    checksums, where the writer stored them, are verified on every read.

    Raises:
        DataError: the file cannot be opened or is not Parquet (truncated, empty, corrupt
            footer), naming the file.
    """
    try:
        if _is_uri(path):
            fs, inner = pafs.FileSystem.from_uri(path)
            source = fs.open_input_file(inner)
        else:
            source = path
        return pq.ParquetFile(source, page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError) as err:
        size = _size(path)
        why = "0 bytes, an interrupted write?" if size == 0 else str(err)
        raise DataError(f"{path}: not a readable Parquet file ({why})") from None


def _size(path: str) -> Optional[int]:
    try:
        if _is_uri(path):
            fs, inner = pafs.FileSystem.from_uri(path)
            return fs.get_file_info(inner).size
        return os.path.getsize(path)
    except (pa.ArrowException, OSError, ValueError):
        return None
