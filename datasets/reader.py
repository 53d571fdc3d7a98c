"""Streaming Parquet → :class:`~datasets.batch.Batch` reader.

**Plan.** At construction the reader reads every file's footer (in parallel threads), checks
the schema (missing column, wrong Arrow type, a file unlike the first: :class:`DataError`
naming the file and the column) and lists the row groups. Nothing else is read up front.

**Epoch order.** An epoch reads the N rows of all row groups in one order: files sorted by
path and row groups in file order, or, with ``shuffle=True``, all row groups permuted by
``(seed, epoch)`` (which shuffles the files and the row groups inside them at once). With
``shuffle_buffer_rows`` = S > 0 the rows of each window ``[i*S, (i+1)*S)`` of that order are
also permuted, by ``(seed, epoch, i)``. The epoch order depends on the files and those
settings only, never on the world size, the workers or the batch size.

**Passes and ranks.** A pass reads an epoch's rows, all of them or (after a resume on another
layout, below) the ones still to train, as a list of intervals of the epoch order (the pass
order, M rows). Rank r of W takes the contiguous slice ``[r*M//W, (r+1)*M//W)`` of it. With
``drop_last=True`` every rank yields exactly ``(M // W) // batch_size`` full batches, so ranks
never disagree on the number of steps; each rank drops the rest of its slice, fewer than
``batch_size + 1`` rows, and counts it (``rows_dropped_partial_batch``). Files of any sizes
balance because the split is by rows, not by files.

**Workers.** Inside ``torch.utils.data.DataLoader(reader, batch_size=None, num_workers=n)``
(or :func:`make_loader`), worker w takes the contiguous share
``[w*S//n, (w+1)*S//n)`` of the rank's S batches, so every row of a pass is read by exactly
one worker of one rank. The DataLoader hands out batches round-robin over the workers
(worker 0's first, worker 1's first, ..., worker 0's second, ...), which fixes the order of a
rank's batches for a given ``num_workers``.

**Windows.** A worker reads its rows window by window, a window being whole batches of
consecutive rows of the pass order (up to ``CHUNK_ROWS``, ending inside the row group or
shuffle window it starts in when a batch fits there); row groups are read one at a time with
only the schema's columns (the last one stays cached for the next window), concatenated,
converted to numpy in one vectorised pass, and cut into batches. With a shuffle buffer each
shuffle window a reading window touches is read whole, kept for the next one, and its
permuted rows taken. Memory is bounded by about one window, one shuffle window and one row
group per worker, whatever the dataset size.

**Resume.** A position is ``(epoch, the pass's intervals, batches_consumed)``, k batches being
how many of that pass this rank's train loop has finished. For a given layout (world size,
batch size, workers, drop_last) k determines, for every rank and worker share, how many of its
batches were consumed (the round-robin order is inverted exactly), so
:meth:`ParquetReader.load_state_dict` on the same layout makes the next pass yield exactly
batches k, k+1, ... of the uninterrupted one: it seeks straight to the row group of each
share's next row, and the resumed DataLoader's worker i takes the share ``(i + s) mod n``
where s is the share whose batch comes next, so its round-robin continues the interrupted
one. On another layout (a cluster of another size, other workers or batch size) the consumed
rows, a union of per-share prefixes, are taken out of the pass's intervals and the rest
becomes a pass of its own, split over the new layout as above: no row twice, none skipped
(except the new drop_last's fewer than ``batch_size + 1`` per rank). The state saved in a
checkpoint (:meth:`ParquetReader.state_dict`) is the same on every rank, so rank 0's copy
restores all, on any layout.

**Bad values.** See :mod:`datasets.convert` for the policy of each case. Every batch carries
the events of its rows in ``batch.stats``; :meth:`ParquetReader.data_stats` sums the batches
that were handed out in this process, which includes those that came from DataLoader workers
when iterating through :func:`make_loader`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset

from fusionrec.datasets.batch import Batch
from fusionrec.datasets.convert import (
    COUNTERS,
    Block,
    BlockConverter,
    DataError,
    concat_tables,
    is_id_type,
    is_list_type,
    is_number_type,
    is_string_type,
)
from fusionrec.datasets.paths import _list_fs, _uri_prefix, open_parquet, resolve_paths  # noqa: F401  (re-exported)
from fusionrec.datasets.schema import Schema

__all__ = [
    "DataError",
    "ParquetReader",
    "ReaderLoader",
    "check_file_schema",
    "make_loader",
    "read_batches",
    "resolve_paths",
]

STATE_VERSION = 2
CHUNK_ROWS = 65_536  # rows per window when there is no shuffle buffer
OPEN_FILES = 4  # open files kept per iterating process


# ----------------------------------------------------------------------------- schema check

_FLOAT = "a float (or integer or boolean)"
_ID = "an integer or string"
_LIST = "a list<integer> or list<string>"
_FLOAT_LIST = "a list<float>"


def _column_kinds(schema: Schema, labels: bool = True) -> dict[str, tuple[str, str]]:
    """Needed column → (expected kind, what the schema uses it for); without the task labels
    when ``labels`` is False."""
    f = schema.features
    kinds = {name: (_FLOAT, "dense feature") for name in f.dense}
    for s in f.sparse:
        kinds[s.name] = (_LIST, "multi-valued sparse feature") if s.multi_valued else (_ID, "sparse feature")
        if s.weight_column:
            kinds[s.weight_column] = (
                (_FLOAT_LIST, f"id weights of {s.name!r}")
                if s.multi_valued
                else (
                    _FLOAT,
                    f"id weights of {s.name!r}",
                )
            )
    for s in f.sequences:
        kinds[s.name] = (_LIST, "sequence feature")
    for t in schema.tasks if labels else []:
        kinds[t.name] = (_FLOAT, f"label of task {t.name!r}")
    if f.weight_column:
        kinds[f.weight_column] = (_FLOAT, "weight column")
    if f.group_column:
        kinds[f.group_column] = (_ID, "group column")
    return kinds


def _fits(kind: str, t: pa.DataType) -> bool:
    if kind == _FLOAT:
        return is_number_type(t)
    if kind == _ID:
        return is_id_type(t)
    if kind == _FLOAT_LIST:
        return is_list_type(t) and is_number_type(t.value_type)
    return is_list_type(t) and is_id_type(t.value_type)


def _type_key(t: pa.DataType) -> str:
    """Type identity across files, ignoring list field names and dictionary encoding."""
    if pa.types.is_dictionary(t):
        return _type_key(t.value_type)
    if is_list_type(t):
        return f"{t.__class__.__name__}<{_type_key(t.value_type)}>"
    return str(t)


def check_file_schema(path: str, arrow_schema: pa.Schema, schema: Schema, labels: bool = True) -> None:
    """Raise DataError naming ``path`` and the column when a needed column (the task labels
    only with ``labels``) is missing or of an incompatible type."""
    for name, (kind, role) in _column_kinds(schema, labels).items():
        index = arrow_schema.get_field_index(name)
        if index < 0:
            have = arrow_schema.names
            shown = ", ".join(have[:20]) + (", ..." if len(have) > 20 else "")
            raise DataError(f"{path}: missing column {name!r} ({role}); the file has: {shown}")
        t = arrow_schema.field(index).type
        if not _fits(kind, t):
            hint = ""
            if kind == _ID and is_list_type(t):
                hint = " (declare the feature multi_valued to read a list column)"
            raise DataError(f"{path}: column {name!r} ({role}) has type {t}; expected {kind} column{hint}")


def _read_footer(path: str) -> tuple[pa.Schema, list[int]]:
    pf = open_parquet(path)
    try:
        meta = pf.metadata
        return pf.schema_arrow, [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    finally:
        pf.close()


# ----------------------------------------------------------------------------- helpers


def _split(total: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of share ``index`` when ``total`` items are cut into ``parts`` contiguous shares."""
    return index * total // parts, (index + 1) * total // parts


def next_worker(counts: Sequence[int], taken: Sequence[int]) -> int:
    """The worker whose batch comes next in the round-robin order once each worker w has
    handed out ``taken[w]`` of its ``counts[w]`` batches (0 when all are done): the one
    with the fewest batches handed out, the lowest id among equals."""
    active = [(t, w) for w, (c, t) in enumerate(zip(counts, taken)) if t < c]
    return min(active)[1] if active else 0


def interleaved_counts(counts: Sequence[int], k: int) -> list[int]:
    """How many batches of each worker are among the first ``k`` a DataLoader hands out when
    worker w yields ``counts[w]`` batches: it goes round-robin over the workers that still
    have batches, in worker order."""
    taken = [0] * len(counts)
    active = [w for w, c in enumerate(counts) if c > 0]
    remaining = min(k, sum(counts))
    while remaining > 0 and active:
        rounds = min(min(counts[w] - taken[w] for w in active), remaining // len(active))
        if rounds == 0:
            for w in active[:remaining]:
                taken[w] += 1
            break
        for w in active:
            taken[w] += rounds
        remaining -= rounds * len(active)
        active = [w for w in active if taken[w] < counts[w]]
    return taken


def consumed_intervals(
    rows: int, world_size: int, num_workers: int, batch_size: int, drop_last: bool, batches_consumed: int
) -> list[tuple[int, int]]:
    """The rows [lo, hi) of a pass order of ``rows`` rows that a reader layout has consumed
    once every rank's train loop has finished ``batches_consumed`` batches: per rank, per
    worker share, the share's first batches (as many as the DataLoader's round-robin handed
    out). Sorted, disjoint."""
    out = []
    nw = max(1, num_workers)
    for r in range(world_size):
        lo, hi = _split(rows, world_size, r)
        nb = (rows // world_size) // batch_size if drop_last else math.ceil((hi - lo) / batch_size)
        stop = lo + nb * batch_size if drop_last else hi
        shares = [_split(nb, nw, w) for w in range(nw)]
        taken = interleaved_counts([b - a for a, b in shares], min(batches_consumed, nb))
        for (a, _), t in zip(shares, taken):
            if t:
                out.append((lo + a * batch_size, min(lo + (a + t) * batch_size, stop)))
    return sorted(out)


class _Pass:
    """The rows one pass over an epoch reads, and this rank's share of them.

    ``segments`` (int64 [K, 2]) are intervals [lo, hi) of the epoch order, in that order: one,
    ``[0, N]``, for a whole epoch; for a pass resumed on another layout, the rows the
    interrupted pass had not consumed. Their concatenation is the *pass order* (``rows``
    rows). Rank r of W takes its contiguous slice ``[r*M//W, (r+1)*M//W)`` and cuts it into
    batches (``drop_last``: ``(M // W) // batch_size`` full ones on every rank)."""

    def __init__(self, segments, batch_size: int, rank: int, world_size: int, drop_last: bool) -> None:
        self.segments = np.asarray(segments, dtype=np.int64).reshape(-1, 2)
        self.starts = np.zeros(len(self.segments) + 1, dtype=np.int64)
        np.cumsum(self.segments[:, 1] - self.segments[:, 0], out=self.starts[1:])
        self.rows = int(self.starts[-1])
        m, w, b = self.rows, world_size, batch_size
        self.slice_start, slice_stop = _split(m, w, rank)
        if drop_last:
            self.num_batches = (m // w) // b
            self.slice_stop = self.slice_start + self.num_batches * b
        else:
            self.num_batches = math.ceil((slice_stop - self.slice_start) / b)
            self.slice_stop = slice_stop
        self.rows_dropped = slice_stop - self.slice_stop

    def is_whole_epoch(self, total_rows: int) -> bool:
        return len(self.segments) == 1 and (int(self.segments[0, 0]), int(self.segments[0, 1])) == (0, total_rows)

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Rows [lo, hi) of the pass order as intervals of the epoch order."""
        out = []
        i = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while lo < hi:
            first, seg_start, seg_stop = int(self.segments[i, 0]), int(self.starts[i]), int(self.starts[i + 1])
            b = min(hi, seg_stop)
            out.append((first + lo - seg_start, first + b - seg_start))
            lo, i = b, i + 1
        return out

    def locate(self, row: int) -> tuple[int, int]:
        """(the epoch row of pass row ``row``, the pass row where its segment ends)."""
        i = int(np.searchsorted(self.starts, row, side="right")) - 1
        return int(self.segments[i, 0]) + row - int(self.starts[i]), int(self.starts[i + 1])

    def without(self, consumed: Sequence[tuple[int, int]]) -> list[list[int]]:
        """The segments of the epoch order left once pass rows ``consumed`` (sorted, disjoint)
        are taken out, adjacent ones merged."""
        left, at = [], 0
        for lo, hi in [*consumed, (self.rows, self.rows)]:
            if lo > at:
                for a, b in self.pieces(at, lo):
                    if left and left[-1][1] == a:
                        left[-1][1] = b
                    else:
                        left.append([a, b])
            at = max(at, hi)
        return left


class _Layout(NamedTuple):
    """An epoch's row groups: their order and first rows (int64 [G+1] cumulative)."""

    epoch: int
    order: np.ndarray
    starts: np.ndarray


class _Source:
    """Row groups for one iterating process: a few files kept open, the last row group
    decoded kept for the window that follows, and (with a shuffle buffer) the last shuffle
    window read with its permutation."""

    def __init__(self, reader: "ParquetReader") -> None:
        self.reader = reader
        self.files: OrderedDict[int, pq.ParquetFile] = OrderedDict()
        self.last: Optional[tuple[int, pa.Table]] = None
        self.window: Optional[tuple[int, pa.Table, np.ndarray]] = None

    def group(self, g: int) -> pa.Table:
        if self.last is not None and self.last[0] == g:
            return self.last[1]
        r = self.reader
        f, index, rows = int(r._group_file[g]), int(r._group_index[g]), int(r._group_rows[g])
        path = r.paths[f]
        pf = self.files.pop(f, None) or open_parquet(path)
        self.files[f] = pf
        while len(self.files) > OPEN_FILES:
            self.files.popitem(last=False)[1].close()
        try:
            table = pf.read_row_group(index, columns=r.columns)
        except (pa.ArrowException, OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read row group {index} ({err})") from None
        if table.num_rows != rows:
            raise DataError(f"{path}: row group {index} has {table.num_rows} rows, its footer says {rows}")
        self.last = (g, table)
        return table

    def close(self) -> None:
        for pf in self.files.values():
            pf.close()
        self.files.clear()
        self.last = None
        self.window = None


# ----------------------------------------------------------------------------- the reader


class ParquetReader(IterableDataset):
    """Iterates the :class:`~datasets.batch.Batch` es of this rank's share of an epoch.

    Each batch (B = ``batch_size``; the last one smaller only with ``drop_last=False``):
    dense [B, Dd] float32; sparse KJT (keys ``schema.features.pooled_features``, float32
    weights on every key when ``schema.features.weighted_pooling``) and sequence KJT (keys
    ``schema.features.sequence_table_features``), int64 values, int32 lengths [K*B], stride
    B; labels [B, T] float32 in task order; weights [B] float32; plus the non-field
    attributes ``group_ids`` and ``stats`` (see :class:`~datasets.batch.Batch`).

    Use it directly as an iterator (``num_workers=0``), inside
    ``DataLoader(reader, batch_size=None, num_workers=reader.num_workers)``, or through
    :func:`make_loader`, which picks between the two and pins memory on CUDA machines.

    Args:
        paths: Parquet files (local paths or URIs), or one spec for :func:`resolve_paths`
            (a directory, a glob, a file). Read in sorted order.
        schema: the columns to read and how.
        batch_size: rows per batch.
        rank, world_size: this process's share, ``0 <= rank < world_size``.
        drop_last: True: exactly ``(N // world_size) // batch_size`` full batches on every
            rank. False: every row of the rank's slice, the last batch possibly partial.
        seed: seeds the epoch orders and the shuffle buffer.
        shuffle: permute the row groups (and so the files) per epoch by ``(seed, epoch)``.
        shuffle_buffer_rows: when > 0 (and ``shuffle``), also permute the rows inside each
            window of that many rows of the epoch order; memory grows with it.
        num_workers: DataLoader workers :func:`make_loader` starts (0: read in this process).
        labels: False: the files need no task label columns (logs to score, not to train
            on); every batch's labels are then NaN.
        ordered: True: ``paths`` are already in their reading order (the partitions of a
            partitioned log, oldest first), kept as given instead of sorted.

    Attributes:
        paths: the files, sorted (or as given, ``ordered``). total_rows: rows in all files (from the footers).
        epoch: the epoch the next pass reads (:meth:`set_epoch`).
        resume_note: after :meth:`load_state_dict` re-split a pass for another layout, one
            line saying from what to what and how many rows remain; else None.

    Raises:
        DataError: a file cannot be read, lacks a column, has a column of the wrong type,
            or gives a column another type than the first file does (at construction, from
            the footers); a row group cannot be decoded (during iteration).
    """

    def __init__(
        self,
        paths: str | Sequence[str],
        schema: Schema,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        *,
        seed: int = 0,
        shuffle: bool = False,
        shuffle_buffer_rows: int = 0,
        num_workers: int = 0,
        labels: bool = True,
        ordered: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(paths, (str, os.PathLike)):
            paths = resolve_paths(os.fspath(paths))
        if not paths:
            raise DataError("no Parquet files given")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_workers < 0 or shuffle_buffer_rows < 0 or seed < 0:
            raise ValueError("num_workers, shuffle_buffer_rows and seed must be >= 0")
        self.paths = [os.fspath(p) for p in paths] if ordered else sorted(os.fspath(p) for p in paths)
        self.schema = schema
        self.batch_size, self.rank, self.world_size, self.drop_last = batch_size, rank, world_size, drop_last
        self.seed, self.shuffle, self.num_workers = seed, shuffle, num_workers
        self.shuffle_buffer_rows = shuffle_buffer_rows if shuffle else 0
        self.labels = labels
        self.columns = [c for c in schema.columns if labels or c not in schema.task_names]
        self._converter = BlockConverter(schema, labels)
        self._stats: dict[str, int] = {}
        self._first_files: dict[str, str] = {}  # counter -> the file of the first batch it fired in
        self._rows_read = 0
        self._plan()
        self._whole = self._make_pass([[0, self.total_rows]])
        self._resumed: Optional[tuple[int, _Pass]] = None  # (epoch, the re-split rest of it)
        self.resume_note: Optional[str] = None
        self.epoch = 0
        self._start_batch = 0
        self._position = 0  # batches of the current pass handed out in this process

    def _make_pass(self, segments) -> _Pass:
        return _Pass(segments, self.batch_size, self.rank, self.world_size, self.drop_last)

    def _pass_of(self, epoch: int) -> _Pass:
        """The pass over ``epoch``: the whole epoch, or the rest of it a resume re-split."""
        if self._resumed is not None and self._resumed[0] == epoch:
            return self._resumed[1]
        return self._whole

    @property
    def _pass(self) -> _Pass:
        return self._pass_of(self.epoch)

    def _plan(self) -> None:
        """Read every footer, check the schemas, and list the row groups."""
        threads = min(16, len(self.paths))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            footers = list(pool.map(_read_footer, self.paths))
        files, indices, rows = [], [], []
        first: Optional[tuple[str, dict[str, pa.DataType]]] = None
        empty = 0
        for i, (path, (arrow_schema, group_rows)) in enumerate(zip(self.paths, footers)):
            check_file_schema(path, arrow_schema, self.schema, self.labels)
            types = {c: arrow_schema.field(c).type for c in self.columns}
            if first is None:
                first = (path, types)
            else:
                for c in self.columns:
                    if _type_key(types[c]) != _type_key(first[1][c]):
                        raise DataError(
                            f"{path}: column {c!r} has type {types[c]} but {first[0]} has type {first[1][c]}; "
                            "all files must share one schema"
                        )
            if sum(group_rows) == 0:
                empty += 1
            for g, r in enumerate(group_rows):
                if r:
                    files.append(i)
                    indices.append(g)
                    rows.append(r)
        self._column_types = first[1] if first is not None else {}
        self._group_file = np.array(files, dtype=np.int32)
        self._group_index = np.array(indices, dtype=np.int32)
        self._group_rows = np.array(rows, dtype=np.int64)
        self.total_rows = int(self._group_rows.sum())
        if empty:
            self._stats["empty_files_skipped"] = empty
        digest = hashlib.sha1()
        for i, path in enumerate(self.paths):
            digest.update(os.path.basename(path).encode() + b"\0")
            digest.update(self._group_rows[self._group_file == i].tobytes())
        self._fingerprint = digest.hexdigest()[:16]

    def id_types(self) -> dict[str, str]:
        """``"string"`` (hashed) or ``"integer"`` (taken modulo the table size) for every id
        feature (sparse and sequence), from the footers (all files share one schema)."""
        out = {}
        for name in [f.name for f in self.schema.features.sparse] + [s.name for s in self.schema.features.sequences]:
            t = self._column_types[name]
            t = t.value_type if is_list_type(t) else t
            out[name] = "string" if is_string_type(t) else "integer"
        return out

    # -- sizes ------------------------------------------------------------------------

    @property
    def num_batches(self) -> int:
        """Batches this rank yields in the current pass (equal on all ranks when
        ``drop_last``): a whole epoch's, or fewer in an epoch whose rest a resume re-split."""
        return self._pass.num_batches

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank yields in a whole epoch."""
        return self._whole.num_batches

    def __len__(self) -> int:
        """Batches the next pass yields: ``num_batches`` less the resumed start batch."""
        return self._pass.num_batches - self._start_batch

    @property
    def num_rows(self) -> int:
        """Rows this rank yields in the current pass."""
        return self._pass.slice_stop - self._pass.slice_start

    @property
    def first_row(self) -> int:
        """Index of this rank's first row of a whole epoch in the files' order (row groups in
        file order, files as resolved). Without shuffling and with one worker, rows come in
        that order from here."""
        return self._whole.slice_start

    @property
    def rows_dropped(self) -> int:
        """Rows of this rank's slice that ``drop_last`` leaves out of the current pass (0 when
        drop_last=False)."""
        return self._pass.rows_dropped

    @property
    def total_rows_dropped(self) -> int:
        """Rows of the current pass that no rank reads, summed over all ranks."""
        if not self.drop_last:
            return 0
        return self._pass.rows - self.world_size * self._pass.num_batches * self.batch_size

    # -- epochs and positions ---------------------------------------------------------

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next pass read the whole ``epoch`` from its batch ``start_batch`` on (0: all of it)."""
        if epoch < 0:
            raise ValueError("epoch must be >= 0")
        if not 0 <= start_batch <= self._whole.num_batches:
            raise ValueError(f"start_batch must be in [0, {self._whole.num_batches}], got {start_batch}")
        if self._resumed is not None and self._resumed[0] == epoch:
            self._resumed = None
        self.epoch, self._start_batch, self._position = epoch, start_batch, start_batch

    def _begin(self, epoch: int, segments, start_batch: int) -> None:
        """Make the next pass read the rows ``segments`` of ``epoch`` from its batch ``start_batch`` on."""
        part = self._make_pass(segments)
        self.set_epoch(epoch)
        if not part.is_whole_epoch(self.total_rows):
            self._resumed = (epoch, part)
        self._start_batch = self._position = start_batch

    def state_dict(self, epoch: Optional[int] = None, batches_consumed: Optional[int] = None) -> dict:
        """The reader position as plain JSON-able data, to save in a checkpoint.

        Args:
            epoch: the epoch of the position (default: the current pass's, ``self.epoch``).
            batches_consumed: batches of that epoch's pass this rank's train loop has
                finished. Pass the loop's own count: a pipeline that prefetches pulls batches
                before it trains on them. Default: the batches handed out in this process so
                far (exact only when nothing prefetches).

        Returns:
            ``{"version", "epoch", "batches_consumed", "segments", "rows_remaining",
            "num_batches", "batch_size", "world_size", "num_workers", "seed", "shuffle",
            "shuffle_buffer_rows", "drop_last", "total_rows", "files", "fingerprint",
            "workers"}``. ``segments`` are the pass's rows as ``[lo, hi)`` intervals of the
            epoch order (``[[0, total_rows]]`` for a whole epoch); ``rows_remaining`` the rows
            of the epoch not yet consumed. Everything but ``workers`` is identical on every
            rank; ``workers`` (this rank's per-worker ``{"worker", "batches_consumed",
            "file", "row"}`` — where each worker reads next) is informational. A finished
            pass is stored as the start of the next epoch.
        """
        epoch = self.epoch if epoch is None else epoch
        part = self._pass_of(epoch)
        k = self._position if batches_consumed is None else batches_consumed
        if not 0 <= k <= part.num_batches:
            raise ValueError(f"batches_consumed must be in [0, {part.num_batches}], got {k}")
        if k == part.num_batches and (k > 0 or part is not self._whole):
            epoch, k, part = epoch + 1, 0, self._whole
        done = consumed_intervals(part.rows, self.world_size, self.num_workers, self.batch_size, self.drop_last, k)
        return {
            "version": STATE_VERSION,
            "epoch": int(epoch),
            "batches_consumed": int(k),
            "segments": part.segments.tolist(),
            "rows_remaining": part.rows - sum(hi - lo for lo, hi in done),
            "num_batches": part.num_batches,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_buffer_rows": self.shuffle_buffer_rows,
            "drop_last": self.drop_last,
            "total_rows": self.total_rows,
            "files": len(self.paths),
            "fingerprint": self._fingerprint,
            "workers": self.worker_positions(epoch, k),
        }

    def load_state_dict(self, state: dict) -> None:
        """Make the next pass continue right after the position ``state`` records.

        A position at the start of an epoch fits any reader. Inside an epoch the epoch order
        must be the same: the same files (row counts per row group), seed and shuffle
        settings, else :class:`DataError` naming what differs. Then, with the same batch
        size, world size, number of workers and drop_last, the next pass yields exactly the
        batches the interrupted one would have; with any of those changed, the rows the
        interrupted pass had not consumed (on any rank or worker, including those its
        ``drop_last`` would have left out) are re-split over this layout as a pass of their
        own (:attr:`resume_note` says so): no row twice, none skipped.
        """
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise DataError(f"reader state version {version!r} is not one of 1, {STATE_VERSION}")
        epoch, k = int(state["epoch"]), int(state["batches_consumed"])
        saved_rows = int(state.get("total_rows", self.total_rows))
        segments = state.get("segments") or [[0, saved_rows]]
        self.resume_note = None
        if k == 0 and segments == [[0, saved_rows]]:
            self.set_epoch(epoch)
            return
        mine = self.state_dict(epoch, 0)
        keys = ("seed", "shuffle", "shuffle_buffer_rows", "total_rows", "files", "fingerprint")
        diff = [f"{key}: saved {state.get(key)!r}, now {mine[key]!r}" for key in keys if state.get(key) != mine[key]]
        if diff:
            raise DataError(
                f"cannot resume the reader inside epoch {epoch} (batch {k}): the data or its order changed since "
                f"the checkpoint ({'; '.join(diff)})"
            )
        if version == 1 and self.shuffle_buffer_rows:
            raise DataError(
                f"cannot resume the reader inside epoch {epoch} (batch {k}): the position was saved by reader "
                "state version 1, whose shuffle-buffer order this reader does not rebuild; resume from a "
                "checkpoint at an epoch boundary"
            )
        layout = {
            "batch_size": int(state["batch_size"]),
            "world_size": int(state["world_size"]),
            "num_workers": max(1, int(state.get("num_workers") or 0)),  # 0 and 1: one share
            "drop_last": bool(state["drop_last"]),
        }
        here = {"batch_size": self.batch_size, "world_size": self.world_size,
                "num_workers": max(1, self.num_workers), "drop_last": self.drop_last}  # fmt: skip
        if layout == here:
            self._begin(epoch, segments, k)
            return
        saved = _Pass(segments, layout["batch_size"], 0, layout["world_size"], layout["drop_last"])
        if k > saved.num_batches:
            raise DataError(f"reader state: batches_consumed {k} exceeds the {saved.num_batches} batches of its pass")
        done = consumed_intervals(saved.rows, layout["world_size"], layout["num_workers"], layout["batch_size"],
                                  layout["drop_last"], k)  # fmt: skip
        left = saved.without(done)
        self._begin(epoch, left or [[0, 0]], 0)
        changed = ", ".join(f"{key} {layout[key]} -> {here[key]}" for key in layout if layout[key] != here[key])
        self.resume_note = (
            f"epoch {epoch} resumed on another reader layout ({changed}): {self._pass.rows:,} of its "
            f"{self.total_rows:,} rows remain, re-split into {self._pass.num_batches} batches per rank"
        )

    def worker_positions(self, epoch: Optional[int] = None, batches_consumed: Optional[int] = None) -> list[dict]:
        """Per worker of this rank: how many of its batches the position covers and the file
        and row (inside that file) where it reads next (None when it is done)."""
        epoch = self.epoch if epoch is None else epoch
        part = self._pass_of(epoch)
        k = self._position if batches_consumed is None else batches_consumed
        nw = max(1, self.num_workers)
        ranges = [_split(part.num_batches, nw, w) for w in range(nw)]
        taken = interleaved_counts([hi - lo for lo, hi in ranges], k)
        layout = self._layout(epoch)
        out = []
        for w, ((lo, hi), m) in enumerate(zip(ranges, taken)):
            entry = {"worker": w, "batches_consumed": m, "file": None, "row": None}
            if lo + m < hi:
                row = self._base_row(layout, part.locate(part.slice_start + (lo + m) * self.batch_size)[0])
                i = int(np.searchsorted(layout.starts, row, side="right")) - 1
                g = int(layout.order[i])
                earlier = self._group_rows[:g][self._group_file[:g] == self._group_file[g]].sum()
                entry.update(file=self.paths[int(self._group_file[g])], row=row - int(layout.starts[i]) + int(earlier))
            out.append(entry)
        return out

    # -- bad-value counters -----------------------------------------------------------

    def data_stats(self, per_column: bool = False) -> dict[str, int]:
        """Bad-value events in the batches handed out in this process so far (directly or
        through :func:`make_loader`, workers included), plus ``rows_dropped_partial_batch``
        per pass started and ``empty_files_skipped`` at construction.

        Args:
            per_column: keys ``"counter/column"`` instead of totals per counter.

        Returns:
            totals: every counter of :data:`datasets.convert.COUNTERS`, 0 when nothing
            happened; per column: only the non-zero ``counter/column`` entries.
        """
        if per_column:
            return dict(sorted(self._stats.items()))
        totals = dict.fromkeys(COUNTERS, 0)
        for key, value in self._stats.items():
            name = key.split("/", 1)[0]
            totals[name] = totals.get(name, 0) + value
        return totals

    @property
    def rows_read(self) -> int:
        """Rows of the batches handed out in this process so far (all passes)."""
        return self._rows_read

    def first_files(self) -> dict[str, str]:
        """Per bad-value counter that fired in this process (``counter`` and ``counter/column``):
        the file(s) of the first batch it fired in."""
        return dict(self._first_files)

    def _add_stats(self, stats: dict[str, int]) -> None:
        for key, value in stats.items():
            self._stats[key] = self._stats.get(key, 0) + value

    def _count(self, batch: Batch) -> None:
        """Count a batch handed out: its rows, its bad-value events and where they first happened."""
        self._rows_read += batch.batch_size
        if batch.stats:
            self._add_stats(batch.stats)
            for key, value in batch.stats.items():
                if value:  # per counter, and per counter/column
                    self._first_files.setdefault(key.split("/", 1)[0], batch.source or "?")
                    self._first_files.setdefault(key, batch.source or "?")

    def _pass_started(self) -> None:
        if self._pass.rows_dropped:
            self._add_stats({"rows_dropped_partial_batch": self._pass.rows_dropped})

    # -- the epoch order ----------------------------------------------------------------

    def _layout(self, epoch: int) -> _Layout:
        """The row groups of ``epoch`` in order, and their first rows."""
        g = len(self._group_rows)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 0x0F11E5]).permutation(g)
        else:
            order = np.arange(g)
        starts = np.zeros(g + 1, dtype=np.int64)
        np.cumsum(self._group_rows[order], out=starts[1:])
        return _Layout(epoch, order, starts)

    def _window_permutation(self, epoch: int, window: int) -> np.ndarray:
        """The order of the rows of shuffle window ``window`` of ``epoch`` (int64 [rows in it])."""
        s = self.shuffle_buffer_rows
        rows = min(s, self.total_rows - window * s)
        return np.random.default_rng([self.seed, epoch, 0xB0FFE2, window]).permutation(rows)

    def _base_row(self, layout: _Layout, row: int) -> int:
        """Where row ``row`` of the epoch order lies in the order of its row groups."""
        s = self.shuffle_buffer_rows
        if not s:
            return row
        return row // s * s + int(self._window_permutation(layout.epoch, row // s)[row % s])

    def _unit_end(self, layout: _Layout, row: int) -> int:
        """The first epoch row after ``row`` that lies in another row group (no shuffle buffer)
        or shuffle window."""
        s = self.shuffle_buffer_rows
        if s:
            return min((row // s + 1) * s, self.total_rows)
        return int(layout.starts[int(np.searchsorted(layout.starts, row, side="right"))])

    # -- reading ----------------------------------------------------------------------

    def _window_batches(self, start: int, part: _Pass, layout: _Layout) -> tuple[int, int]:
        """The reading window (rank batch indices [start, b)) that starts at batch ``start``:
        up to ``CHUNK_ROWS`` rows, and ending at the last batch boundary inside the row group
        (or shuffle window) and pass segment it starts in, when a whole batch fits there, so
        that most windows come from a single row group or window and convert without
        copies."""
        size = self.batch_size
        b = start + max(1, CHUNK_ROWS // size)
        row = part.slice_start + start * size
        epoch_row, segment_end = part.locate(row)
        fits = min(self._unit_end(layout, epoch_row) - epoch_row, segment_end - row)
        inside = start + fits // size
        if inside > start:
            b = min(b, inside)
        return start, b

    def _read_base(self, source: _Source, layout: _Layout, lo: int, hi: int) -> pa.Table:
        """Rows [lo, hi) of the epoch's row groups in order, only the schema's columns."""
        pieces = []
        starts = layout.starts
        i = int(np.searchsorted(starts, lo, side="right")) - 1
        while lo < hi:
            g, g_start, g_stop = int(layout.order[i]), int(starts[i]), int(starts[i + 1])
            table = source.group(g)
            b = min(hi, g_stop)
            pieces.append(table if (lo == g_start and b == g_stop) else table.slice(lo - g_start, b - lo))
            lo, i = b, i + 1
        return concat_tables(pieces)

    def _read_epoch(self, source: _Source, layout: _Layout, lo: int, hi: int) -> pa.Table:
        """Rows [lo, hi) of the epoch order. With a shuffle buffer, each shuffle window it
        touches is read whole (kept for the next call) and its permuted rows taken."""
        s = self.shuffle_buffer_rows
        if not s:
            return self._read_base(source, layout, lo, hi)
        pieces = []
        while lo < hi:
            w = lo // s
            if source.window is None or source.window[0] != w:
                table = self._read_base(source, layout, w * s, min((w + 1) * s, self.total_rows))
                source.window = (w, table, self._window_permutation(layout.epoch, w))
            _, table, permutation = source.window
            b = min(hi, (w + 1) * s)
            pieces.append(table.take(pa.array(permutation[lo - w * s : b - w * s])))
            lo = b
        return concat_tables(pieces)

    def _read_rows(self, source: _Source, layout: _Layout, part: _Pass, lo: int, hi: int) -> pa.Table:
        """Rows [lo, hi) of the pass order."""
        return concat_tables([self._read_epoch(source, layout, a, b) for a, b in part.pieces(lo, hi)])

    def _convert(self, table: pa.Table, layout: _Layout, part: _Pass, lo: int, hi: int) -> Block:
        try:
            return self._converter.convert(table)
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:
            raise DataError(f"{self._files_of(layout, part, lo, hi)}: cannot convert rows to tensors ({err})") from None

    def _files_of(self, layout: _Layout, part: _Pass, lo: int, hi: int) -> str:
        """The file(s) holding rows [lo, hi) of the pass order (with a shuffle buffer, of the
        shuffle windows holding them), comma-separated."""
        s, files = self.shuffle_buffer_rows, set()
        for a, b in part.pieces(lo, hi):
            if s:
                a, b = a // s * s, min((b - 1) // s * s + s, self.total_rows)
            first = int(np.searchsorted(layout.starts, a, side="right")) - 1
            last = int(np.searchsorted(layout.starts, b - 1, side="right")) - 1
            files.update(self.paths[int(self._group_file[int(g)])] for g in layout.order[first : last + 1])
        return ", ".join(sorted(files))

    def _windows(self, part: _Pass, layout: _Layout, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(first batch, first row, end row) of each reading window from batch ``start`` to ``stop``."""
        size, j = self.batch_size, start
        while j < stop:
            _, b = self._window_batches(j, part, layout)
            b = min(b, stop)
            yield j, part.slice_start + j * size, min(part.slice_start + b * size, part.slice_stop)
            j = b

    def _worker_batches(self, epoch: int, part: _Pass, start: int, stop: int) -> Iterator[Batch]:
        """Batches ``start .. stop-1`` (rank batch indices) of ``part``, the pass over ``epoch``.

        One background thread reads (decodes) the next window while this one converts the
        current one, so I/O and decoding overlap with the numpy work."""
        layout = self._layout(epoch)
        size = self.batch_size
        source = _Source(self)
        windows = self._windows(part, layout, start, stop)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-read")

        def read(window: Optional[tuple[int, int, int]]):
            if window is None:
                return None
            return window, self._read_rows(source, layout, part, window[1], window[2])

        try:
            pending = pool.submit(read, next(windows, None))
            while True:
                done = pending.result()
                if done is None:
                    break
                (_, lo, hi), table = done
                pending = pool.submit(read, next(windows, None))
                block = self._convert(table, layout, part, lo, hi)
                del table, done
                for row in range(0, block.n, size):
                    batch = self._converter.batch(block, row, min(row + size, block.n))
                    if batch.stats:
                        batch.source = self._files_of(layout, part, lo, hi)
                    yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            source.close()

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        nw, w = (1, 0) if info is None else (info.num_workers, info.id)
        part = self._pass
        counts = [b - a for a, b in (_split(part.num_batches, nw, i) for i in range(nw))]
        taken = interleaved_counts(counts, self._start_batch)
        # A resumed pass starts its round-robin at the worker whose batch comes next: the
        # DataLoader's worker i plays share (i + that worker) mod n.
        share = (w + next_worker(counts, taken)) % nw
        lo, hi = _split(part.num_batches, nw, share)
        batches = self._worker_batches(self.epoch, part, lo + taken[share], hi)
        if info is not None:  # a DataLoader worker: the parent counts (make_loader)
            yield from batches
            return
        self._position = self._start_batch
        self._pass_started()
        for batch in batches:
            self._count(batch)
            self._position += 1
            yield batch


# ----------------------------------------------------------------------------- loaders


def _worker_message(err: Exception) -> str:
    """The original message of an error re-raised by the DataLoader from a worker."""
    text = str(err)
    marker = "DataError: "
    return text.rsplit(marker, 1)[-1].strip() if marker in text else text


class ReaderLoader:
    """What :func:`make_loader` returns: iterate it once per epoch pass (after
    ``reader.set_epoch`` / ``reader.load_state_dict``); ``len()`` is the pass's batches."""

    def __init__(self, reader: ParquetReader, pin_memory: Optional[bool] = None, prefetch_factor: int = 2) -> None:
        self.reader = reader
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor

    def __len__(self) -> int:
        return len(self.reader)

    def __iter__(self) -> Iterator[Batch]:
        reader = self.reader
        if reader.num_workers == 0:
            for batch in reader:
                yield batch.pin_memory() if self.pin_memory else batch
            return
        loader = DataLoader(
            reader,
            batch_size=None,
            num_workers=reader.num_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor,
            persistent_workers=False,  # every pass must see the parent's epoch and position
            worker_init_fn=_leave_process_group,
        )
        reader._position = reader._start_batch
        reader._pass_started()
        batches = iter(loader)
        try:
            for batch in batches:
                reader._count(batch)
                reader._position += 1
                yield batch
        except DataError as err:
            message = _worker_message(err)
        else:
            return
        _stop_workers(batches)
        raise DataError(message)


def _leave_process_group(worker_id: int) -> None:
    """Run a DataLoader worker in a process group of its own.

    torchrun stops a training process by signalling its whole process group (SIGTERM, or SIGUSR1
    when asked to forward it), and a DataLoader worker dies of a signal its parent did not send;
    the training process then fails with "DataLoader worker exited unexpectedly" instead of
    saving the checkpoint the signal asks for. Out of the group, the workers see only their
    parent's signals and still end with it (the DataLoader's own watchdog)."""
    os.setpgid(0, 0)


def _stop_workers(batches) -> None:
    """End a failed DataLoader pass's worker processes now. Left to the DataLoader, workers
    holding prefetched batches take its status-check interval (5 s) each to be killed."""
    for process in getattr(batches, "_workers", []):
        if process.is_alive():
            process.terminate()
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def make_loader(reader: ParquetReader, *, pin_memory: Optional[bool] = None, prefetch_factor: int = 2) -> ReaderLoader:
    """The batches of ``reader``'s next pass: read in this process when
    ``reader.num_workers == 0``, otherwise by a ``DataLoader`` with that many worker processes
    (non-persistent, so each pass sees the reader's epoch and resume position). Pins memory
    when CUDA is available unless ``pin_memory`` says otherwise. Bad-value counters of every
    batch reach ``reader.data_stats()``; a :class:`DataError` in a worker is re-raised here
    with its own message."""
    return ReaderLoader(reader, pin_memory=pin_memory, prefetch_factor=prefetch_factor)


def read_batches(
    paths: str | list[str],
    schema: Schema,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
) -> Iterator[Batch]:
    """Iterate the batches of ``paths`` (a spec for :func:`resolve_paths`, or a list of files)."""
    files = resolve_paths(paths) if isinstance(paths, str) else paths
    return iter(ParquetReader(files, schema, batch_size, rank, world_size, drop_last))
