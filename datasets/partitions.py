"""Hive-partitioned logs: ``ROOT/dt=2026-12-01/hour=13/part-*.parquet``.

A log that keeps growing lands as time partitions, each a directory of ``key=value`` path
segments under one root (the keys outermost first, as ``data.partitioning.keys`` names them).
:func:`list_partitions` finds them through ``pyarrow.dataset``'s Hive partitioning (given the
key names, so no file is opened to list them: a file still being written cannot break the
listing), groups the files by partition, orders the partitions by their key values (a value
that is an integer compares as one: ``hour=9`` before ``hour=10``) and says which are
complete: a partition is complete once its marker file (``_SUCCESS`` by default, written by
the producer after its last data file) is in it. Training reads complete partitions only.

A Parquet file under the root whose directory is not exactly one ``key=value`` segment per
key, in order, is a producer's mistake and stops the listing with a :class:`DataError` naming
it; nothing under the root is skipped silently (hidden and ``_``-prefixed names excepted,
as everywhere in :mod:`datasets.paths`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from fusionrec.datasets.paths import _is_uri, _uri_prefix
from fusionrec.errors import DataError

__all__ = ["Partition", "list_partitions", "parse_partition_name", "partition_order", "window"]


@dataclass(frozen=True)
class Partition:
    """One partition: ``name`` is its path under the root (``dt=2026-12-01/hour=13``),
    ``values`` its key values in key order, ``files`` its Parquet files (sorted; URIs when the
    root is a URI) and ``complete`` whether its marker is there."""

    name: str
    values: tuple[str, ...]
    files: tuple[str, ...]
    complete: bool

    @property
    def order(self) -> tuple:
        return partition_order(self.values)


def partition_order(values: Sequence[str]) -> tuple:
    """Sort key of a partition's values: integers numerically, everything else as text, and an
    integer before a text value of the same key (so the order is total)."""
    return tuple((0, int(v), "") if _is_int(v) else (1, 0, v) for v in values)


def _is_int(value: str) -> bool:
    return value.lstrip("-").isdigit() and value not in ("-", "")


def parse_partition_name(name: str, keys: Sequence[str], what: str) -> tuple[str, ...]:
    """The values of a partition named ``key=value/...`` with exactly ``keys``, in order.

    Raises:
        DataError: another form, naming ``what`` (the config key or path that gave ``name``).
    """
    parts = [p for p in name.strip("/").split("/") if p]
    got = [p.split("=", 1)[0] for p in parts]
    if got != list(keys) or any("=" not in p for p in parts):
        form = "/".join(f"{k}=..." for k in keys)
        raise DataError(f"{what}: {name!r} is not a partition of the form {form}")
    return tuple(p.split("=", 1)[1] for p in parts)


def window(partitions: Sequence[Partition], first: Optional[str], last: Optional[str], keys: Sequence[str]) -> list[Partition]:
    """The partitions from ``first`` to ``last`` (both inclusive, by key order; None: open)."""
    lo = partition_order(parse_partition_name(first, keys, "data.partitioning.first")) if first else None
    hi = partition_order(parse_partition_name(last, keys, "data.partitioning.last")) if last else None
    return [p for p in partitions if (lo is None or p.order >= lo) and (hi is None or p.order <= hi)]


def list_partitions(root: str, keys: Sequence[str], marker: Optional[str]) -> list[Partition]:
    """Every partition under ``root`` (a local directory or a filesystem URI), in key order.

    Args:
        root: the directory the ``key=value`` directories are in.
        keys: the partition keys, outermost first.
        marker: the file name that makes a partition complete; None: every partition is.

    Raises:
        DataError: ``root`` cannot be listed (not a directory, unreachable filesystem), or a
            Parquet file under it is not inside exactly one partition directory.
    """
    if not keys:
        raise DataError("data.partitioning.keys: name at least one partition key")
    fs, base, prefix = _filesystem(root)
    try:
        info = fs.get_file_info(base)
        if info.type != pafs.FileType.Directory:
            raise DataError(f"{root}: no such directory (the root of the partitioned log)")
        key_schema = pa.schema([(k, pa.string()) for k in keys])
        # An explicit schema of just the keys: the dataset opens no file to infer one.
        dataset = ds.dataset(base, filesystem=fs, format="parquet", schema=key_schema,
                             partitioning=ds.partitioning(key_schema, flavor="hive"))  # fmt: skip
        fragments = [(f.path, ds.get_partition_keys(f.partition_expression)) for f in dataset.get_fragments()]
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot list the partitioned log {root!r}: {err}") from None
    groups: dict[tuple[str, ...], list[str]] = {}
    top = base.rstrip("/") + "/"
    for path, found in fragments:
        if not path.endswith(".parquet"):
            continue
        values = tuple(str(found.get(k)) for k in keys)
        name = "/".join(f"{k}={v}" for k, v in zip(keys, values))
        rel_dir = os.path.dirname(path[len(top) :] if path.startswith(top) else path)
        if len(found) != len(keys) or rel_dir != name:
            form = "/".join(f"{k}=..." for k in keys)
            raise DataError(f"{prefix}{path}: not inside a partition directory {form} of {root}")
        groups.setdefault(values, []).append(path)
    names = {values: "/".join(f"{k}={v}" for k, v in zip(keys, values)) for values in groups}
    if marker:
        probes = fs.get_file_info([f"{top}{names[v]}/{marker}" for v in groups])
        complete = {v: p.type == pafs.FileType.File for v, p in zip(groups, probes)}
    else:
        complete = {v: True for v in groups}
    out = [Partition(names[v], v, tuple(sorted(prefix + p for p in paths)), complete[v]) for v, paths in groups.items()]
    return sorted(out, key=lambda p: p.order)


def _filesystem(root: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path on it, what to put in front of its paths to name them as given)."""
    if not _is_uri(root):
        return pafs.LocalFileSystem(), os.path.abspath(root), ""
    try:
        fs, path = pafs.FileSystem.from_uri(root)
    except (pa.ArrowException, ValueError, OSError) as err:
        raise DataError(f"cannot open data path {root!r}: {err}") from None
    if isinstance(fs, pafs.LocalFileSystem):
        return fs, path, ""
    return fs, path, _uri_prefix(root, path, root)
