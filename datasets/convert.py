"""Arrow columns → tensor-ready numpy blocks → :class:`~datasets.batch.Batch`, and the
policies for bad values.

Everything here is vectorised: a block of n rows costs a fixed number of numpy / Arrow calls
per column, never a Python loop over rows. A :class:`Block` also carries, per row, how many
times each bad-value policy fired on it (``counts``), so that every batch can report exactly
the events of its own rows (``Batch.stats``) however the rows were shuffled or split.

Bad-value policies (counter names in brackets; per column in ``Batch.stats`` as
``counter/column``):

=========================================  =================================================
dense value null, NaN or ±inf              filled with the column's mean: 0.0 after
                                           normalisation, 0.0 raw [null_dense_filled]
label null or NaN                          0.0 [null_label_filled]; for a task with a
                                           ``space``, nulls outside the space (gate label 0)
                                           are the normal encoding and are not counted
binary label outside [0, 1]                clipped into [0, 1] [label_out_of_range_clipped]
sample weight null                         1.0 [null_weight_filled]
sample weight negative, NaN or ±inf        0.0, the row is ignored by the loss
                                           [bad_weight_zeroed]
scalar id null, id list null               absent: length 0 [null_ids_as_empty]
null inside an id list                     dropped [null_list_ids_dropped]
empty id list                              kept: length 0, pooled to a zero vector
                                           [empty_lists] (informational)
integer id < 0                             ``id mod num_embeddings`` (floor modulo): signed
                                           64-bit hashes are legitimate ids [ids_negative_wrapped]
integer id >= num_embeddings               ``id mod num_embeddings`` [ids_out_of_range_wrapped]
string id                                  hashed (:mod:`datasets.hashing`), then mod; never
                                           counted
any id of a collision-managed table        raw: ``mc_ids`` spreads it over [0, 2**63 - 1)
                                           (strings hashed first), no modulo, never counted
list longer than ``max_len``               pooled features keep the first ``max_len`` ids,
                                           sequences the most recent [ids_truncated]
per-id weight list null or of another      that row's weights are 1.0
length than its id list                    [id_weights_mismatch_filled]
per-id weight null, NaN or ±inf            1.0 [null_id_weights_filled]
group id null                              -1 [null_group_ids]
=========================================  =================================================

Stops (raise :class:`DataError`, naming the file): a column missing or of the wrong type, a
file whose schema differs from the first, a file that cannot be opened or decoded. Counted
by the reader: rows left out by ``drop_last`` [rows_dropped_partial_batch] and files without
rows [empty_files_skipped].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from fusionrec.datasets.batch import Batch
from fusionrec.errors import DataError
from fusionrec.datasets.hashing import hash_strings, mc_ids
from fusionrec.datasets.schema import (
    DenseNormalization,
    Schema,
    SequenceFeature,
    SparseFeature,
    space_gates,
    task_space_mask,
)

__all__ = ["Block", "BlockConverter", "COUNTERS", "DataError", "INFORMATIONAL_COUNTERS"]

COUNTERS = (
    "null_dense_filled",
    "null_label_filled",
    "label_out_of_range_clipped",
    "null_weight_filled",
    "bad_weight_zeroed",
    "null_ids_as_empty",
    "null_list_ids_dropped",
    "empty_lists",
    "ids_negative_wrapped",
    "ids_out_of_range_wrapped",
    "ids_truncated",
    "id_weights_mismatch_filled",
    "null_id_weights_filled",
    "null_group_ids",
    "rows_dropped_partial_batch",
    "empty_files_skipped",
)
#: counters that record a documented policy at work rather than a bad value; the console shows
#: them only in the end-of-run summary and ``data.max_bad_fraction`` ignores them
INFORMATIONAL_COUNTERS = ("empty_lists", "ids_truncated", "rows_dropped_partial_batch", "empty_files_skipped")




# ----------------------------------------------------------------------------- column types


def is_list_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def is_string_type(t: pa.DataType) -> bool:
    t = _plain(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def is_id_type(t: pa.DataType) -> bool:
    """An integer or string id (plain or dictionary-encoded)."""
    return pa.types.is_integer(_plain(t)) or is_string_type(t)


def is_number_type(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)


# ----------------------------------------------------------------------------- ragged ids


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row index, position within its row) of every element of ragged rows of ``lengths``."""
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    return rows, np.arange(len(rows), dtype=np.int64) - np.repeat(starts, lengths)


def ranges_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of the ranges ``[starts[i], starts[i] + lengths[i])``, int64.

    Built with one scatter and one cumulative sum (steps of 1 inside a range, a jump at each
    range start), which is several times faster than ``np.repeat`` over many short rows."""
    nonempty = lengths > 0
    s, n = starts[nonempty].astype(np.int64), lengths[nonempty].astype(np.int64)
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    steps = np.ones(total, dtype=np.int64)
    steps[0] = s[0]
    firsts = np.cumsum(n[:-1])
    steps[firsts] = s[1:] - (s[:-1] + n[:-1] - 1)
    return np.cumsum(steps, out=steps)


def _keep_mask(total: int, drop_starts: np.ndarray, drop_stops: np.ndarray) -> np.ndarray:
    """Boolean mask of ``total`` elements, False inside the disjoint ranges
    ``[drop_starts[i], drop_stops[i])`` (work in proportion to the dropped elements)."""
    keep = np.ones(total, dtype=bool)
    keep[ranges_index(drop_starts, drop_stops - drop_starts)] = False
    return keep


def _array(col: pa.ChunkedArray) -> pa.Array:
    """One Arrow array for a column: the chunk itself when there is one (no copy)."""
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _per_row(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-row count of True elements of ``mask``, rows given by ``offsets`` (from 0)."""
    cs = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask, out=cs[1:])
    return (cs[offsets[1:]] - cs[offsets[:-1]]).astype(np.int32)


@dataclass
class Jagged:
    """Ragged ids of n rows: row i is ``values[offsets[i]:offsets[i+1]]`` (offsets int64
    [n+1]); ``weights`` (float32, aligned with ``values``) when the feature is weighted.

    A truncated feature keeps its untruncated ``values`` (and weights) with ``keep``, the
    mask of the ids that survive, and ``raw_offsets``, the row offsets into them; ``offsets``
    then describe the kept ids. Batches apply the mask while they copy their rows anyway, so
    truncation costs no extra pass over the window."""

    offsets: np.ndarray
    values: np.ndarray
    weights: Optional[np.ndarray] = None
    raw_offsets: Optional[np.ndarray] = None
    keep: Optional[np.ndarray] = None

    def materialized(self) -> "Jagged":
        """The same rows with the truncation applied to ``values`` (no mask)."""
        if self.keep is None:
            return self
        weights = None if self.weights is None else np.compress(self.keep, self.weights)
        return Jagged(self.offsets, np.compress(self.keep, self.values), weights)

    def take(self, rows: np.ndarray) -> "Jagged":
        """Rows in the order ``rows`` (a permutation or any index array)."""
        j = self.materialized()
        lengths = np.diff(j.offsets)[rows]
        index = ranges_index(j.offsets[:-1][rows], lengths)
        weights = j.weights[index] if j.weights is not None else None
        return Jagged(_offsets(lengths), j.values[index], weights)


# ----------------------------------------------------------------------------- blocks


@dataclass
class Block:
    """n consecutive rows in tensor-ready numpy form.

    Attributes:
        dense: [n, Dd] float32. labels: [n, T] float32. weights: [n] float32.
        sparse / sequence: ragged ids per KJT key, in key order.
        group_ids: [n] int64 or None.
        counts: per-row event counts ([n] int32) by ``counter/column``; only events that
            happened in the block appear.
    """

    dense: np.ndarray
    sparse: list[Jagged]
    sequence: list[Jagged]
    labels: np.ndarray
    weights: np.ndarray
    group_ids: Optional[np.ndarray] = None
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    mc_sparse: list[Jagged] = field(default_factory=list)  # keys of collision-managed bag tables
    mc_sequence: list[Jagged] = field(default_factory=list)  # ... and of collision-managed sequence tables

    @property
    def n(self) -> int:
        return self.labels.shape[0]

    def take(self, rows: np.ndarray) -> "Block":
        return Block(
            self.dense[rows],
            [j.take(rows) for j in self.sparse],
            [j.take(rows) for j in self.sequence],
            self.labels[rows],
            self.weights[rows],
            None if self.group_ids is None else self.group_ids[rows],
            {k: v[rows] for k, v in self.counts.items()},
            [j.take(rows) for j in self.mc_sparse],
            [j.take(rows) for j in self.mc_sequence],
        )

    def stats(self, a: int, b: int) -> dict[str, int]:
        """Events of rows [a, b), non-zero ones only (O(1) per counter: prefix sums are
        built once per block)."""
        sums = self.__dict__.get("_sums")
        if sums is None:
            sums = {}
            for key, per_row in self.counts.items():
                cs = np.zeros(len(per_row) + 1, dtype=np.int64)
                np.cumsum(per_row, out=cs[1:])
                sums[key] = cs
            self._sums = sums
        out = {}
        for key, cs in sums.items():
            total = int(cs[b] - cs[a])
            if total:
                out[key] = total
        return out


class _KJTSource:
    """The ragged ids of one KJT over a whole block, laid out so that cutting a batch costs
    one copy per key into the batch's values: lengths as one int32 [keys, n] array."""

    def __init__(self, jagged: list[Jagged], weighted: bool) -> None:
        n = len(jagged[0].offsets) - 1 if jagged else 0
        self.lengths = np.empty((len(jagged), n), dtype=np.int32)
        for k, j in enumerate(jagged):
            self.lengths[k] = np.diff(j.offsets)
        self.jagged = jagged
        self.weighted = weighted

    def kjt(self, keys: list[str], a: int, b: int) -> KeyedJaggedTensor:
        """KJT of rows [a, b): lengths [len(keys) * (b - a)] int32, values concatenated
        key-major, weights (float32, 1.0 where a feature has none) when weighted."""
        stride = b - a
        if not keys:
            return KeyedJaggedTensor(
                keys=[],
                values=torch.empty(0, dtype=torch.int64),
                lengths=torch.empty(0, dtype=torch.int32),
                weights=torch.empty(0, dtype=torch.float32) if self.weighted else None,
                stride=stride,
            )
        spans = [(int(j.offsets[a]), int(j.offsets[b])) for j in self.jagged]
        total = sum(hi - lo for lo, hi in spans)
        values = np.empty(total, dtype=np.int64)
        weights = np.empty(total, dtype=np.float32) if self.weighted else None
        pos = 0
        for j, (lo, hi) in zip(self.jagged, spans):
            out = slice(pos, pos + hi - lo)
            if j.keep is None:
                values[out] = j.values[lo:hi]
                if weights is not None:
                    weights[out] = j.weights[lo:hi] if j.weights is not None else 1.0
            else:  # truncated: compress the untruncated rows straight into the batch
                ra, rb = int(j.raw_offsets[a]), int(j.raw_offsets[b])
                keep = j.keep[ra:rb]
                np.compress(keep, j.values[ra:rb], out=values[out])
                if weights is not None:
                    if j.weights is not None:
                        np.compress(keep, j.weights[ra:rb], out=weights[out])
                    else:
                        weights[out] = 1.0
            pos += hi - lo
        return KeyedJaggedTensor(
            keys=keys,
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(self.lengths[:, a:b].reshape(-1)),  # key-major copy
            weights=None if weights is None else torch.from_numpy(weights),
            stride=stride,
        )


# ----------------------------------------------------------------------------- the converter


class BlockConverter:
    """Turns an Arrow table of the schema's columns into a :class:`Block`, and slices of a
    block into :class:`Batch` es. With ``labels=False`` the table holds no label columns and
    the block's labels are NaN."""

    def __init__(self, schema: Schema, labels: bool = True) -> None:
        self.schema, self.labels = schema, labels
        f = schema.features
        groups = f.batch_features()
        self.sparse_features, self.sequence_features = groups["sparse"], groups["sequence"]
        self.mc_sparse_features, self.mc_sequence_features = groups["mc_sparse"], groups["mc_sequence"]
        self.sparse_keys = [s.name for s in self.sparse_features]
        self.sequence_keys = [s.name for s in self.sequence_features]
        self.mc_sparse_keys = [s.name for s in self.mc_sparse_features]
        self.mc_sequence_keys = [s.name for s in self.mc_sequence_features]
        self.mc_tables = set(f.collision_tables)
        self.weighted = f.weighted_pooling
        self.num_embeddings = {t.name: t.num_embeddings for t in f.tables}
        gate, gated = space_gates(schema.tasks)
        self.space_gate, self.space_gated = np.asarray(gate), np.asarray(gated)
        self.binary = [t.type == "binary" for t in schema.tasks]

    # -- whole block ------------------------------------------------------------------

    def convert(self, table: pa.Table) -> Block:
        """Convert ``table`` (at least the schema's columns) into a block."""
        n = table.num_rows
        f = self.schema.features
        counts: dict[str, np.ndarray] = {}

        def count(key: str, per_row: np.ndarray) -> None:
            if key in counts:
                counts[key] = counts[key] + per_row
            else:
                counts[key] = per_row.astype(np.int32, copy=False)

        dense = np.empty((n, len(f.dense)), dtype=np.float32)
        for d, name in enumerate(f.dense):
            dense[:, d] = self._dense(table.column(name), f.normalization.get(name), name, count)
        labels = np.empty((n, len(self.schema.tasks)), dtype=np.float32)
        if not self.labels:
            labels.fill(np.nan)
        nulls = []
        for t, task in enumerate(self.schema.tasks if self.labels else []):
            labels[:, t], bad = self._floats(table.column(task.name), 0.0)
            nulls.append(bad)
            if self.binary[t]:
                out = (labels[:, t] < 0.0) | (labels[:, t] > 1.0)
                if out.any():
                    np.clip(labels[:, t], 0.0, 1.0, out=labels[:, t])
                    count(f"label_out_of_range_clipped/{task.name}", out)
        in_space = task_space_mask(labels, self.space_gate, self.space_gated)  # a null outside its space is no loss
        for t, task in enumerate(self.schema.tasks if self.labels else []):
            if nulls[t] is not None:
                bad = nulls[t] & in_space[:, t]
                if bad.any():
                    count(f"null_label_filled/{task.name}", bad)
        weights = self._sample_weights(table, n, count)
        sparse = [self._ids(table, s, count, self.weighted) for s in self.sparse_features]
        sequence = [self._ids(table, s, count, False) for s in self.sequence_features]
        group_ids = self._group_ids(table.column(f.group_column), f.group_column, count) if f.group_column else None
        mc_sparse = [self._ids(table, s, count, self.weighted) for s in self.mc_sparse_features]
        mc_sequence = [self._ids(table, s, count, False) for s in self.mc_sequence_features]
        return Block(dense, sparse, sequence, labels, weights, group_ids, counts, mc_sparse, mc_sequence)

    def batch(self, block: Block, a: int, b: int) -> Batch:
        """Rows [a, b) of ``block`` as a Batch whose ``stats`` are those rows' events."""
        # Copies, not views: a batch must not keep its window alive, nor drag the whole
        # window into shared memory when a DataLoader worker sends it.
        sources = block.__dict__.get("_kjt_sources")
        if sources is None:
            sources = block._kjt_sources = (
                _KJTSource(block.sparse, self.weighted),
                _KJTSource(block.sequence, False),
                _KJTSource(block.mc_sparse, self.weighted),
                _KJTSource(block.mc_sequence, False),
            )
        batch = Batch(
            dense=torch.from_numpy(block.dense[a:b].copy()),
            sparse=sources[0].kjt(self.sparse_keys, a, b),
            sequence=sources[1].kjt(self.sequence_keys, a, b),
            labels=torch.from_numpy(block.labels[a:b].copy()),
            weights=torch.from_numpy(block.weights[a:b].copy()),
            mc_sparse=sources[2].kjt(self.mc_sparse_keys, a, b) if self.mc_sparse_keys else None,
            mc_sequence=sources[3].kjt(self.mc_sequence_keys, a, b) if self.mc_sequence_keys else None,
        )
        if block.group_ids is not None:
            batch.group_ids = torch.from_numpy(block.group_ids[a:b].copy())
        batch.stats = block.stats(a, b)
        return batch

    # -- floats -----------------------------------------------------------------------

    @staticmethod
    def _floats(col: pa.ChunkedArray, fill: float) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """float32 values with nulls, NaN and ±inf replaced by ``fill``; the mask of those
        (None when there are none)."""
        x = np.array(col.cast(pa.float32(), safe=False).to_numpy(), dtype=np.float32)  # nulls → NaN
        finite = np.isfinite(x)
        if finite.all():
            return x, None
        bad = ~finite
        x[bad] = fill
        return x, bad

    def _dense(self, col: pa.ChunkedArray, norm: Optional[DenseNormalization], name: str, count) -> np.ndarray:
        x, bad = self._floats(col, 0.0)
        if norm is not None:
            if norm.log:
                x = np.sign(x) * np.log1p(np.abs(x))
            x = (x - np.float32(norm.mean)) * np.float32(1.0 / norm.std)
            if norm.clip is not None:
                np.clip(x, -norm.clip, norm.clip, out=x)
            if bad is not None:
                x[bad] = 0.0  # the mean
        if bad is not None:
            count(f"null_dense_filled/{name}", bad)
        return x

    def _sample_weights(self, table: pa.Table, n: int, count) -> np.ndarray:
        name = self.schema.features.weight_column
        if not name:
            return np.ones(n, dtype=np.float32)
        col = table.column(name)
        w, bad = self._floats(col, 0.0)
        negative = w < 0
        if negative.any():
            w[negative] = 0.0
            bad = negative if bad is None else bad | negative
        if bad is not None:
            null = pc.is_null(col).to_numpy(zero_copy_only=False) if col.null_count else np.zeros(n, dtype=bool)
            if null.any():
                w[null] = 1.0
                count(f"null_weight_filled/{name}", null)
            if (bad & ~null).any():
                count(f"bad_weight_zeroed/{name}", bad & ~null)
        return w

    # -- ids --------------------------------------------------------------------------

    @staticmethod
    def _map(
        values: pa.Array, n_emb: int, mc: bool = False
    ) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """Ids without nulls → (int64 rows in [0, n_emb), negative mask, too-large mask);
        the masks are None when nothing was wrapped. For a collision-managed table (``mc``)
        the raw ids instead, spread over [0, MC_ID_SPACE) by :func:`datasets.hashing.mc_ids`
        (strings hashed first), never taken modulo the table size."""
        if mc:
            if is_string_type(values.type):
                return mc_ids(hash_strings(values), hashed=True), None, None
            if pa.types.is_dictionary(values.type):
                values = values.dictionary_decode()
            raw = values.to_numpy(zero_copy_only=False)
            return mc_ids(raw if raw.dtype in (np.int64, np.uint64) else raw.astype(np.int64)), None, None
        if is_string_type(values.type):
            return (hash_strings(values) % np.uint64(n_emb)).astype(np.int64), None, None
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        if pa.types.is_uint64(values.type):
            raw = values.to_numpy(zero_copy_only=False)
            over = raw >= np.uint64(n_emb)
            if not over.any():
                return raw.astype(np.int64), None, None
            return (raw % np.uint64(n_emb)).astype(np.int64), None, over
        raw = values.to_numpy(zero_copy_only=False)
        if raw.dtype != np.int64:
            raw = raw.astype(np.int64)
        if len(raw) == 0 or (raw.min() >= 0 and raw.max() < n_emb):
            return raw, None, None
        negative, over = raw < 0, raw >= n_emb
        return np.mod(raw, n_emb), (negative if negative.any() else None), (over if over.any() else None)

    def _ids(self, table: pa.Table, feature: SparseFeature | SequenceFeature, count, weighted: bool) -> Jagged:
        """One id column → mapped, null-free, truncated ragged ids (with per-id weights,
        1.0 by default, when ``weighted``)."""
        name = feature.name
        n_emb = self.num_embeddings[feature.table]
        arr = _array(table.column(name))
        n = len(arr)
        weight_column = getattr(feature, "weight_column", None)

        if not is_list_type(arr.type):  # one id per row: length 1, or 0 when null
            lengths = np.ones(n, dtype=np.int64)
            if arr.null_count:
                valid = arr.is_valid().to_numpy(zero_copy_only=False)
                count(f"null_ids_as_empty/{name}", ~valid)
                lengths = valid.astype(np.int64)
                arr = arr.filter(pa.array(valid))
            offsets = _offsets(lengths) if arr.null_count or len(arr) != n else np.arange(n + 1, dtype=np.int64)
            values, negative, over = self._map(arr, n_emb, feature.table in self.mc_tables)
            self._count_wrapped(name, negative, over, offsets, count)
            weights = None
            if weighted:
                weights = np.ones(len(values), dtype=np.float32)
                if weight_column:
                    w, bad = self._floats(table.column(weight_column), 1.0)
                    weights = w[lengths.astype(bool)]
                    if bad is not None:
                        count(f"null_id_weights_filled/{weight_column}", bad & lengths.astype(bool))
            return Jagged(offsets, values, weights)

        if arr.null_count:
            null_lists = arr.is_null().to_numpy(zero_copy_only=False)
            count(f"null_ids_as_empty/{name}", null_lists)
        if arr.null_count == 0 and not pa.types.is_fixed_size_list(arr.type):
            lengths = np.diff(arr.offsets.to_numpy()).astype(np.int64, copy=False)  # honours slicing
        else:
            lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        if arr.null_count == 0:
            empty = lengths == 0
        else:
            empty = (lengths == 0) & ~null_lists
        if empty.any():
            count(f"empty_lists/{name}", empty)
        flat = arr.flatten()  # honours slicing, skips what null lists point at
        offsets = _offsets(lengths)
        weights = None
        if weighted:
            weights = self._id_weights(table, feature, arr, lengths, offsets, count) if weight_column else None
            if weights is None:
                weights = np.ones(len(flat), dtype=np.float32)
        if flat.null_count:  # null ids inside lists are dropped
            valid = flat.is_valid().to_numpy(zero_copy_only=False)
            count(f"null_list_ids_dropped/{name}", _per_row(~valid, offsets))
            lengths = _per_row(valid, offsets).astype(np.int64)
            offsets = _offsets(lengths)
            flat = flat.filter(pa.array(valid))
            if weights is not None:
                weights = weights[valid]
        values, negative, over = self._map(flat, n_emb, feature.table in self.mc_tables)
        self._count_wrapped(name, negative, over, offsets, count)
        if isinstance(feature, SequenceFeature) and feature.order == "newest_first" and len(values):
            rows, pos = _positions(lengths)  # each row reversed: oldest → newest, as the model reads it
            values = values[offsets[:-1][rows] + lengths[rows] - 1 - pos]
        max_len = feature.max_len
        if max_len is not None and n and lengths.max() > max_len:
            kept = np.minimum(lengths, max_len)
            over = lengths > max_len
            if isinstance(feature, SequenceFeature):  # keep the most recent ids
                keep = _keep_mask(len(values), offsets[:-1][over], offsets[1:][over] - max_len)
            else:  # keep the first ids
                keep = _keep_mask(len(values), offsets[:-1][over] + max_len, offsets[1:][over])
            count(f"ids_truncated/{name}", lengths - kept)
            return Jagged(_offsets(kept), values, weights, raw_offsets=offsets, keep=keep)
        return Jagged(offsets, values, weights)

    @staticmethod
    def _count_wrapped(name: str, negative, over, offsets: np.ndarray, count) -> None:
        if negative is not None:
            count(f"ids_negative_wrapped/{name}", _per_row(negative, offsets))
        if over is not None:
            count(f"ids_out_of_range_wrapped/{name}", _per_row(over, offsets))

    def _id_weights(self, table, feature: SparseFeature, ids: pa.Array, lengths, offsets, count) -> np.ndarray:
        """Per-id weights aligned with ``ids.flatten()``: 1.0 for rows whose weight list is
        null or of another length, and for null / non-finite weights."""
        col = table.column(feature.weight_column).combine_chunks()
        wlengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat_w, bad = self._floats(pa.chunked_array([col.flatten()], type=col.type.value_type), 1.0)
        match = wlengths == lengths
        if col.null_count:
            match &= col.is_valid().to_numpy(zero_copy_only=False)
        mismatch = ~match & (lengths > 0)  # a row without ids needs no weights
        if mismatch.any():
            count(f"id_weights_mismatch_filled/{feature.weight_column}", mismatch)
        woffsets = _offsets(wlengths)  # flatten() skips what null weight lists point at
        rows, pos = _positions(lengths)
        good = match[rows]
        out = np.ones(len(rows), dtype=np.float32)
        out[good] = flat_w[woffsets[:-1][rows[good]] + pos[good]]
        if bad is not None:
            bad_aligned = np.zeros(len(rows), dtype=bool)
            bad_aligned[good] = bad[woffsets[:-1][rows[good]] + pos[good]]
            if bad_aligned.any():
                count(f"null_id_weights_filled/{feature.weight_column}", _per_row(bad_aligned, offsets))
        return out

    @staticmethod
    def _group_ids(col: pa.ChunkedArray, name: str, count) -> np.ndarray:
        """int64 group ids (strings hashed, then read as signed); null → -1."""
        arr = col.combine_chunks()
        out = np.full(len(arr), -1, dtype=np.int64)
        valid = None
        if arr.null_count:
            valid = arr.is_valid().to_numpy(zero_copy_only=False)
            count(f"null_group_ids/{name}", ~valid)
            arr = arr.filter(pa.array(valid))
        if is_string_type(arr.type):
            ids = hash_strings(arr).view(np.int64)
        else:
            if pa.types.is_dictionary(arr.type):
                arr = arr.cast(arr.type.value_type)
            ids = arr.to_numpy(zero_copy_only=False).astype(np.int64)
        if valid is None:
            return ids
        out[valid] = ids
        return out


def _decoded(t: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(t):
        return t.value_type
    if pa.types.is_list(t):
        return pa.list_(_decoded(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(_decoded(t.value_type))
    return t


def concat_tables(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate row-group tables (zero-copy). Tables from files that differ only in
    dictionary encoding or list field names are cast to one plain schema first."""
    if len(tables) == 1:
        return tables[0]
    first = tables[0].schema
    if all(t.schema.equals(first) for t in tables[1:]):
        return pa.concat_tables(tables)
    target = pa.schema([pa.field(f.name, _decoded(f.type)) for f in first])
    return pa.concat_tables([t if t.schema.equals(target) else t.cast(target) for t in tables])
