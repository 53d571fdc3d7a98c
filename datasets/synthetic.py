"""Synthetic impression logs with learnable multi-task labels, for any feature schema.

``python -m fusionrec.datasets.synthetic --config configs/demo.yaml --out data/demo --rows 50000``
writes ``OUT/train/part-00000.parquet ...`` (``synthetic.train_files`` files) and
``OUT/eval/part-*.parquet`` (``synthetic.eval_files``), one row per impression, the
columns exactly as ``Schema.columns`` declares them:

* dense features: float32, roughly zero mean and unit scale (as a feature-processing
  stage upstream of training would deliver them);
* pooled sparse features: int64, or list<int64> when ``multi_valued`` (up to
  ``ceil(1.5 * max_len)`` ids, so the reader's keep-the-first truncation is exercised);
* behaviour sequences: list<int64> ordered oldest → newest, 0 .. ``ceil(1.5 * max_len)``
  ids (about a third of them longer than ``max_len``);
* one float32 label column per task (0/1 for binary tasks); a task with ``space: G`` is
  only ever 1 where task G is 1; the weight column, if the schema has one, is all ones;
* per-id weight columns (``weight_column`` of a sparse feature): list<float32> as long as
  the id list (float32 for a scalar feature), in [0.25, 1.75); the ground truth pools the
  ids' latent factors with these weights, so weighted pooling can learn them;
* the group column, if declared: the user id (int64), for group AUC.

The ground truth (the "world") is a fixed function of the seed:

* Every row is an impression of an *item* to a *user*. The candidate feature is the first
  scalar sparse feature on a sequence table (``item_id`` in the demo); it and every sparse
  feature whose name shares its prefix (``item_``) describe the item, all other sparse
  features describe the user. The first scalar user feature (``user_id``) *is* the user id,
  the candidate *is* the item id; every other feature is a fixed attribute of its entity
  (``item_category`` of the item, the ``user_tags`` list of the user), drawn once per entity.
* Users, items and attributes are Zipf-distributed (``zipf_exponent``) over their table's
  ``num_embeddings``, popular ids scattered by a fixed affine permutation of the ranks.
* Each table row has a latent factor (k = max(8, T+1) dims) and a main effect per task.
  The user vector is the normalised sum of the factors of the user's features, likewise the
  item vector. Task t scores the affinity ``(u ⊙ v) · d_t``, where the task directions
  ``d_t = sqrt(ρ) w_0 + sqrt(1-ρ) w_t`` (w orthonormal) have pairwise cosine
  ρ = ``task_correlation`` (the MMoE synthetic study). Main effects, dense coefficients and
  quadratic dense effects are mixed across tasks the same way.
* Each user has 16 favourite ids per sequence table; half of the sequence entries and 30 %
  of candidates are favourites, so a candidate often reappears in the user's history. The
  number of times the candidate occurs among the ``max_len`` *most recent* entries of a
  sequence raises the logit (strongly for the task of the same index: click_seq → click,
  like_seq → like, buy_seq → convert); older entries carry no signal.
* A per-task bias is calibrated on a fixed sample so that positive rates are about 30 % for
  the first binary task, 20 % for the other ungated ones, and 35 % of the gate's positives
  for a task with a ``space``. Regression tasks get the logit plus N(0, 0.5²) noise.

Rows are generated in chunks of whole row groups, each from its own seeded stream, with no
per-row Python loops: memory stays bounded and a million rows take seconds. The output is a
function of (schema, synthetic config, rows) only.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusionrec.datasets.config import SyntheticConfig
from fusionrec.datasets.schema import FeatureSchema, Schema, SequenceFeature, SparseFeature, TaskConfig

# ----------------------------------------------------------------------------- hashing

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MUL1
    x = x ^ (x >> np.uint64(27))
    x = x * _MUL2
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """A uint64 hash of ``seed`` and the (broadcast) integer ``keys``."""
    h = np.asarray(np.uint64(seed % (1 << 64)))
    for key in keys:
        h = _mix(h + _GOLDEN + np.asarray(key).astype(np.uint64))
    return h


def _uniform(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform floats in [0, 1), a fixed function of ``seed`` and ``keys``."""
    return (_hash(seed, *keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _normal(seed: int, ids: np.ndarray, width: int) -> np.ndarray:
    """[len(ids), width] standard normals, a fixed function of ``seed`` and each id."""
    cols = np.arange(2 * width, dtype=np.int64)[None, :]
    u = _uniform(seed, np.asarray(ids, dtype=np.int64)[:, None], cols)
    return np.sqrt(-2.0 * np.log1p(-u[:, :width])) * np.cos(2.0 * np.pi * u[:, width:])


# ----------------------------------------------------------------------------- Zipf ids


class ZipfIds:
    """Zipf(``exponent``) ids over ``[0, n)``: rank r (0 = most popular) has probability
    ∝ (r+1)^-exponent, exact for the first 1024 ranks and the midpoint integral of a continuous power law
    beyond (accurate to ~1e-6 there),
    (so tables of any size need O(1) memory). Rank r becomes id ``(a*r + b) mod n`` for a
    fixed ``a`` coprime with n, scattering the popular ids over the table."""

    HEAD = 1024

    def __init__(self, n: int, exponent: float, seed: int) -> None:
        self.n, self.s = int(n), float(exponent)
        head = min(self.n, self.HEAD)
        weights = np.arange(1, head + 1, dtype=np.float64) ** -self.s
        self._lo = head + 0.5
        self._tail = self._integral(self._lo, self.n + 0.5) if head < self.n else 0.0
        total = weights.sum() + self._tail
        self._cdf = np.cumsum(weights) / total
        self._head = head
        self._head_mass = float(self._cdf[-1])
        rng = np.random.default_rng([seed % (1 << 63), 0x21BF])
        a = 1
        if self.n > 2:
            while True:
                a = int(rng.integers(1, min(self.n, 1 << 31)))
                if math.gcd(a, self.n) == 1:
                    break
        self._a, self._b = np.uint64(a), np.uint64(int(rng.integers(0, self.n)))

    def _integral(self, lo: float, hi: float) -> float:
        if abs(self.s - 1.0) < 1e-9:
            return math.log(hi / lo)
        return (hi ** (1.0 - self.s) - lo ** (1.0 - self.s)) / (1.0 - self.s)

    def ranks(self, u: np.ndarray) -> np.ndarray:
        """Popularity ranks (int64, 0 = most popular) for uniforms ``u`` in [0, 1)."""
        ranks = np.searchsorted(self._cdf, u, side="right").astype(np.int64)
        tail = ranks >= self._head
        if self._tail > 0.0 and tail.any():
            v = (u[tail] - self._head_mass) / (1.0 - self._head_mass) * self._tail
            if abs(self.s - 1.0) < 1e-9:
                x = self._lo * np.exp(v)
            else:
                x = (self._lo ** (1.0 - self.s) + (1.0 - self.s) * v) ** (1.0 / (1.0 - self.s))
            ranks[tail] = np.rint(x).astype(np.int64) - 1
        return np.clip(ranks, 0, self.n - 1)

    def ids(self, u: np.ndarray) -> np.ndarray:
        """Ids (int64 in [0, n)) for uniforms ``u`` in [0, 1)."""
        ranks = self.ranks(u).astype(np.uint64)
        return ((self._a * ranks + self._b) % np.uint64(self.n)).astype(np.int64)


# ----------------------------------------------------------------------------- ragged helpers


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ragged rows of ``lengths``: (row index, position within row) of every element."""
    total = int(lengths.sum())
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    return rows, np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)


def _ragged_mean(values: np.ndarray, rows: np.ndarray, n: int, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-row (weighted) mean of ``values`` [m, k] grouped by ``rows`` [m]; 0 for empty rows. → [n, k]."""
    w = np.ones(len(rows)) if weights is None else weights.astype(np.float64)
    sums = np.stack(
        [np.bincount(rows, weights=values[:, j] * w, minlength=n) for j in range(values.shape[1])], axis=1
    )
    totals = np.bincount(rows, weights=w, minlength=n)[:, None]
    return sums / np.where(totals > 0, totals, 1.0)


# ----------------------------------------------------------------------------- the world

FAVOURITES = 16  # favourite ids per (user, sequence table)
P_FAVOURITE_CANDIDATE = 0.3
P_FAVOURITE_IN_SEQUENCE = 0.5
P_EMPTY_SEQUENCE = 0.1
HIDDEN_ENTITIES = 100_000  # user / item pool when no feature is the id itself
TABULATE_MAX_ROWS = 1 << 18  # tables up to this size get their latent values precomputed


def _cap(max_len: Optional[int]) -> int:
    """Longest generated list for a feature truncated at ``max_len``."""
    return math.ceil(1.5 * max_len) if max_len else 8


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Rows:
    """One generated chunk of n rows.

    Attributes:
        columns: Arrow arrays by column name, in ``Schema.columns`` order.
        logits: [n, T] float64 ground-truth logits (score for regression tasks), bias included.
        space: [n, T] float64 probability that the row lies in each task's space (1 if none).
    """

    columns: dict[str, pa.Array]
    logits: np.ndarray
    space: np.ndarray


class _TableLatents:
    """Latent factor [k] and per-task main effects [T+1] (shared + one per task) of every
    row of one table: hashed from the id, so the same whether computed on demand or from
    the table that is built on first use for tables of up to TABULATE_MAX_ROWS rows."""

    def __init__(self, seed: int, n: int, k: int, t: int) -> None:
        self.seed, self.n, self.width = seed, n, k + t + 1
        self._table: Optional[np.ndarray] = None

    def _compute(self, ids: np.ndarray) -> np.ndarray:
        return _normal(self.seed, ids, self.width).astype(np.float32)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """[len(ids), k + T + 1] float32: factor, then main effects."""
        if self.n > TABULATE_MAX_ROWS:
            return self._compute(ids)
        if self._table is None:
            self._table = self._compute(np.arange(self.n, dtype=np.int64))
        return self._table[ids]


class SyntheticWorld:
    """The ground truth for one (schema, synthetic config): which entity each feature
    describes, the latent values of every table row, task directions and coefficients."""

    def __init__(self, schema: Schema, cfg: SyntheticConfig) -> None:
        self.schema, self.cfg = schema, cfg
        f = schema.features
        tasks = schema.tasks
        self.T = len(tasks)
        self.k = max(8, self.T + 1)
        rho = cfg.task_correlation
        self._mix_shared, self._mix_task = math.sqrt(rho), math.sqrt(1.0 - rho)
        rng = np.random.default_rng([cfg.seed, 0x5EED])
        seed_rng = np.random.default_rng([cfg.seed, 0x5EED, 1])

        def next_seed() -> int:
            return int(seed_rng.integers(0, 1 << 62))

        # Roles: the candidate and its same-prefix features describe the item.
        seq_tables = set(f.sequence_tables)
        self.candidate = next((s for s in f.sparse if not s.multi_valued and s.table in seq_tables), None)
        prefix = None
        if self.candidate is not None and "_" in self.candidate.name:
            prefix = self.candidate.name.split("_", 1)[0] + "_"
        self.side = {
            s.name: "item" if s is self.candidate or (prefix and s.name.startswith(prefix)) else "user"
            for s in f.sparse
        }
        self.user_id = next((s for s in f.sparse if self.side[s.name] == "user" and not s.multi_valued), None)
        pool = {
            "user": f.table(self.user_id.table).num_embeddings if self.user_id else HIDDEN_ENTITIES,
            "item": f.table(self.candidate.table).num_embeddings if self.candidate else HIDDEN_ENTITIES,
        }
        s = cfg.zipf_exponent
        self.entities = {side: ZipfIds(pool[side], s, next_seed()) for side in ("user", "item")}
        self.hidden_seed = {side: next_seed() for side in ("user", "item")}
        self.table_ids = {t.name: ZipfIds(t.num_embeddings, s, next_seed()) for t in f.tables}
        self.latents = {t.name: _TableLatents(next_seed(), t.num_embeddings, self.k, self.T) for t in f.tables}
        self.attr_seed = {x.name: next_seed() for x in f.sparse}
        self.fav_seed = {t: next_seed() for t in f.sequence_tables}
        self.dense_seed = [next_seed() for _ in f.dense]

        # Task directions with pairwise cosine rho, and per-task coefficients.
        q, _ = np.linalg.qr(rng.standard_normal((self.k, self.T + 1)))
        self.directions = self._mix_shared * q[:, :1] + self._mix_task * q[:, 1:]  # [k, T]
        # Drift (partitioned logs): the directions turn towards a second set, orthogonal to the
        # first where k allows, with the same pairwise cosine; drawn from a stream of its own so
        # that the undrifted world is what it always was.
        drift_rng = np.random.default_rng([cfg.seed, 0x5EED, 2])
        other = drift_rng.standard_normal((self.k, self.T + 1))
        other -= q @ (q.T @ other) if self.k >= 2 * (self.T + 1) else 0.0
        q2, _ = np.linalg.qr(other)
        self._directions_0 = self.directions
        self._directions_1 = self._mix_shared * q2[:, :1] + self._mix_task * q2[:, 1:]
        nd = max(len(f.dense), 1)
        self.dense_linear = self._mixed(rng, (len(f.dense),)) * (1.0 / math.sqrt(nd))  # [Dd, T]
        self.dense_quad = self._mixed(rng, (len(f.dense),)) * (0.5 / math.sqrt(nd))
        self.dense_quad[0::2] = 0.0  # quadratic effects on every other dense feature
        self.main_scale = 0.9 / math.sqrt(max(len(f.sparse), 1))
        self.seq_coef = np.full((len(f.sequences), self.T), 0.5)
        for i in range(len(f.sequences)):
            self.seq_coef[i, i % self.T] = 1.5
        self.bias = np.zeros(self.T)
        self._calibrate()

    def drift_to(self, angle: float) -> None:
        """Turn the task directions by ``angle`` radians: d_t = cos(angle) d_t(0) + sin(angle) e_t."""
        self.directions = math.cos(angle) * self._directions_0 + math.sin(angle) * self._directions_1

    def _mixed(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """shape + [T] normals whose task columns have correlation task_correlation."""
        shared = rng.standard_normal(shape + (1,))
        return self._mix_shared * shared + self._mix_task * rng.standard_normal(shape + (self.T,))

    # -- entity attributes ------------------------------------------------------------

    def _favourites(self, table: str, users: np.ndarray, slots: np.ndarray) -> np.ndarray:
        return self.table_ids[table].ids(_uniform(self.fav_seed[table], users, slots))

    def _scalar_attribute(self, feat: SparseFeature, entity: np.ndarray) -> np.ndarray:
        return self.table_ids[feat.table].ids(_uniform(self.attr_seed[feat.name], entity))

    def _list_attribute(self, feat: SparseFeature, entity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lengths [n], values) of a multi-valued attribute, fixed per entity."""
        cap = _cap(feat.max_len)
        lengths = np.minimum((_uniform(self.attr_seed[feat.name], entity, -1) * (cap + 1)).astype(np.int64), cap)
        rows, pos = _positions(lengths)
        values = self.table_ids[feat.table].ids(_uniform(self.attr_seed[feat.name], entity[rows], pos))
        return lengths, values

    # -- one chunk --------------------------------------------------------------------

    def sample(self, n: int, rng: np.random.Generator) -> Rows:
        """Generate ``n`` rows from ``rng`` (labels drawn with the calibrated biases)."""
        f = self.schema.features
        entity = {"user": self.entities["user"].ids(rng.random(n))}
        fav_pick = rng.random(n) < P_FAVOURITE_CANDIDATE
        fav_slot = rng.integers(0, FAVOURITES, n)
        random_item = self.entities["item"].ids(rng.random(n))
        if self.candidate is not None:
            fav_item = self._favourites(self.candidate.table, entity["user"], fav_slot)
            entity["item"] = np.where(fav_pick, fav_item, random_item)
        else:
            entity["item"] = random_item

        columns: dict[str, pa.Array] = {}
        logits = np.zeros((n, self.T))
        side_vec = {side: np.zeros((n, self.k)) for side in ("user", "item")}
        side_weight = {side: 0.0 for side in ("user", "item")}
        first_on_table: dict[str, np.ndarray] = {}  # sequence matching target per table

        for feat in f.sparse:
            side = self.side[feat.name]
            identity = feat is self.candidate or feat is self.user_id
            if feat.multi_valued:
                lengths, values = self._list_attribute(feat, entity[side])
                columns[feat.name] = _list_array(lengths, values)
                rows, pos = _positions(lengths)
                keep = pos < feat.max_len if feat.max_len else np.ones(len(pos), dtype=bool)
                id_weights = None
                if feat.weight_column:  # per-id weights in [0.25, 1.75): the truth pools with them
                    id_weights = (0.25 + 1.5 * rng.random(len(values))).astype(np.float32)
                    columns[feat.weight_column] = _list_array(lengths, id_weights, pa.float32())
                    id_weights = id_weights[keep]
                lat = _ragged_mean(self.latents[feat.table](values[keep]), rows[keep], n, id_weights)
            else:
                values = entity[side] if identity else self._scalar_attribute(feat, entity[side])
                columns[feat.name] = pa.array(values, type=pa.int64())
                first_on_table.setdefault(feat.table, values)
                lat = self.latents[feat.table](values).astype(np.float64)
                if feat.weight_column:  # a scalar id's weight scales its latent factor
                    id_weight = (0.25 + 1.5 * rng.random(n)).astype(np.float32)
                    columns[feat.weight_column] = pa.array(id_weight)
                    lat = lat * id_weight[:, None]
            weight = 0.6 if identity else 1.0
            side_vec[side] += weight * lat[:, : self.k]
            side_weight[side] += weight**2
            main = lat[:, self.k :]
            logits += self.main_scale * (self._mix_shared * main[:, :1] + self._mix_task * main[:, 1:])

        for side in ("user", "item"):
            if side_weight[side] > 0:
                side_vec[side] /= math.sqrt(side_weight[side])
            else:
                side_vec[side] = _normal(self.hidden_seed[side], entity[side], self.k)
        logits += (side_vec["user"] * side_vec["item"]) @ self.directions

        for i, seq in enumerate(f.sequences):
            lengths, values, score = self._sequence(seq, entity["user"], first_on_table.get(seq.table), rng)
            columns[seq.name] = _list_array(lengths, values)
            logits += score[:, None] * self.seq_coef[i][None, :]

        dense = []
        for d, name in enumerate(f.dense):
            owner = entity["user"] if d % 2 == 0 else entity["item"]
            x = math.sqrt(0.5) * _normal(self.dense_seed[d], owner, 1)[:, 0] + math.sqrt(0.5) * rng.standard_normal(n)
            dense.append(x)
            logits += x[:, None] * self.dense_linear[d] + ((x * x - 1.0) / math.sqrt(2.0))[:, None] * self.dense_quad[d]
        for d, name in enumerate(f.dense):
            columns[name] = pa.array(dense[d].astype(np.float32))

        logits += self.bias[None, :]
        labels, space = self._labels(logits, rng)
        for t, task in enumerate(self.schema.tasks):
            columns[task.name] = pa.array(labels[:, t].astype(np.float32))
        if f.weight_column:
            columns[f.weight_column] = pa.array(np.ones(n, dtype=np.float32))
        if f.group_column:
            columns[f.group_column] = pa.array(entity["user"], type=pa.int64())
        ordered = {name: columns[name] for name in self.schema.columns}
        return Rows(columns=ordered, logits=logits, space=space)

    def _sequence(
        self, seq: SequenceFeature, users: np.ndarray, target: Optional[np.ndarray], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lengths [n], values, score [n]): score = log1p(#target ids among the most recent max_len)."""
        n = len(users)
        lengths = rng.integers(1, _cap(seq.max_len) + 1, n)
        lengths[rng.random(n) < P_EMPTY_SEQUENCE] = 0
        rows, pos = _positions(lengths)
        total = len(rows)
        fav = rng.random(total) < P_FAVOURITE_IN_SEQUENCE
        u = rng.random(total)
        slots = rng.integers(0, FAVOURITES, total)
        values = np.empty(total, dtype=np.int64)
        values[~fav] = self.table_ids[seq.table].ids(u[~fav])
        values[fav] = self._favourites(seq.table, users[rows[fav]], slots[fav])
        if target is None:
            return lengths, values, np.zeros(n)
        recent = pos >= (lengths[rows] - seq.max_len)
        hits = recent & (values == target[rows])
        return lengths, values, np.log1p(np.bincount(rows[hits], minlength=n))

    def _labels(self, logits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw labels [n, T] (gated tasks inside their gate) and the space probabilities."""
        n = logits.shape[0]
        labels = np.zeros((n, self.T))
        space = np.ones((n, self.T))
        draws = rng.random((n, self.T))
        noise = rng.standard_normal((n, self.T))
        for t in self._task_order():
            task = self.schema.tasks[t]
            if task.type == "regression":
                labels[:, t] = logits[:, t] + 0.5 * noise[:, t]
                continue
            y = draws[:, t] < _sigmoid(logits[:, t])
            if task.space is not None:
                g = self.schema.task_names.index(task.space)
                y &= labels[:, g] > 0.5
                space[:, t] = space[:, g] * _sigmoid(logits[:, g])
            labels[:, t] = y
        return labels, space

    def _task_order(self) -> list[int]:
        """Task indices with every gate before the tasks it gates."""
        names = self.schema.task_names
        order: list[int] = []

        def visit(t: int) -> None:
            if t in order:
                return
            gate = self.schema.tasks[t].space
            if gate is not None:
                visit(names.index(gate))
            order.append(t)

        for t in range(self.T):
            visit(t)
        return order

    def target_rate(self, task: TaskConfig) -> float:
        """Positive rate the bias is calibrated to (within the space for gated tasks)."""
        if task.space is not None:
            return 0.35
        first_binary = next(t for t in self.schema.tasks if t.type == "binary" and t.space is None)
        return 0.3 if task is first_binary else 0.2

    def _calibrate(self, n: int = 32_768) -> None:
        """Set per-task biases so positive rates hit ``target_rate`` on a fixed sample."""
        rows = self.sample(n, np.random.default_rng([self.cfg.seed, 0xCA1B]))
        z = rows.logits  # bias is still zero
        spaces = {}
        for t in self._task_order():
            task = self.schema.tasks[t]
            if task.type != "binary":
                continue
            space = spaces[task.space] if task.space is not None else np.ones(n)
            target = self.target_rate(task)
            lo, hi = -30.0, 30.0
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                rate = float((space * _sigmoid(z[:, t] + mid)).sum() / space.sum())
                lo, hi = (mid, hi) if rate < target else (lo, mid)
            self.bias[t] = 0.5 * (lo + hi)
            spaces[task.name] = space * _sigmoid(z[:, t] + self.bias[t])


def _list_array(lengths: np.ndarray, values: np.ndarray, value_type: Optional[pa.DataType] = None) -> pa.Array:
    value_type = pa.int64() if value_type is None else value_type
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


# ----------------------------------------------------------------------------- writing


def _split_sizes(total: int, parts: int) -> list[int]:
    """``total`` rows over ``parts`` files, sizes differing by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _write_file(
    world: SyntheticWorld, path: Path, rows: int, seed_key: list[int], row_group_size: int, stats: dict
) -> None:
    chunk = row_group_size * max(1, 65_536 // row_group_size)
    schema = pa.schema([(name, _arrow_type(world.schema, name)) for name in world.schema.columns])
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        done, index = 0, 0
        while done < rows:
            n = min(chunk, rows - done)
            sample = world.sample(n, np.random.default_rng([*seed_key, index]))
            writer.write_table(pa.table(sample.columns, schema=schema), row_group_size=row_group_size)
            for t, task in enumerate(world.schema.tasks):
                col = sample.columns[task.name].to_numpy()
                stats["sum"][t] += float(col.sum())
            done, index = done + n, index + 1
        if rows == 0:
            writer.write_table(schema.empty_table())
    os.replace(tmp, path)


def _arrow_type(schema: Schema, column: str) -> pa.DataType:
    f = schema.features
    lists = {s.name for s in f.sparse if s.multi_valued} | {s.name for s in f.sequences}
    ids = {s.name for s in f.sparse if not s.multi_valued} | ({f.group_column} if f.group_column else set())
    if column in lists:
        return pa.list_(pa.int64())
    if column in {s.weight_column for s in f.sparse if s.multi_valued and s.weight_column}:
        return pa.list_(pa.float32())
    return pa.int64() if column in ids else pa.float32()


def generate(schema: Schema, synthetic_cfg: SyntheticConfig, rows: int, out_dir: str | os.PathLike) -> dict:
    """Write ``rows`` synthetic rows under ``out_dir/train`` and ``out_dir/eval``.

    Stale ``part-*.parquet`` files in those two folders are removed first. Returns a summary:
    ``rows``, ``train_rows``, ``eval_rows``, ``files`` ({"train": [...], "eval": [...]}),
    ``positive_rate`` (label mean per task over all rows), ``seconds``.
    """
    cfg = synthetic_cfg
    if rows < 0:
        raise ValueError("rows must be >= 0")
    if cfg.train_files < 1 or cfg.eval_files < 1 or cfg.row_group_size < 1:
        raise ValueError("train_files, eval_files and row_group_size must be at least 1")
    start = time.perf_counter()
    world = SyntheticWorld(schema, cfg)
    eval_rows = int(round(rows * cfg.eval_fraction))
    splits = {"train": (rows - eval_rows, cfg.train_files), "eval": (eval_rows, cfg.eval_files)}
    stats = {"sum": np.zeros(world.T)}
    files: dict[str, list[str]] = {}
    for code, (split, (split_rows, parts)) in enumerate(splits.items()):
        folder = Path(out_dir) / split
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("part-*.parquet"):
            stale.unlink()
        files[split] = []
        for i, n in enumerate(_split_sizes(split_rows, parts)):
            path = folder / f"part-{i:05d}.parquet"
            _write_file(world, path, n, [cfg.seed, code, i], cfg.row_group_size, stats)
            files[split].append(str(path))
    rates = {t.name: float(stats["sum"][i] / max(rows, 1)) for i, t in enumerate(schema.tasks)}
    return {
        "rows": rows,
        "train_rows": splits["train"][0],
        "eval_rows": eval_rows,
        "files": files,
        "positive_rate": rates,
        "seconds": time.perf_counter() - start,
    }


PARTITION_START = datetime(2026, 12, 1, tzinfo=timezone.utc)
MARKER = "_SUCCESS"


def partition_name(index: int) -> str:
    """The Hive path of hourly partition ``index`` (0: 2026-12-01 00:00 UTC): ``dt=2026-12-01/hour=0``."""
    t = PARTITION_START + timedelta(hours=index)
    return f"dt={t:%Y-%m-%d}/hour={t.hour}"


def write_partition(world: SyntheticWorld, root: str | os.PathLike, index: int, rows: int, files: int = 1,
                    marker: Optional[str] = MARKER) -> Path:  # fmt: skip
    """Write hourly partition ``index`` of a drifting log under ``root``: ``rows`` rows in
    ``files`` files drawn with the task directions turned by ``index × synthetic.drift_per_partition``,
    then (unless ``marker`` is None) the marker that makes it complete. Returns its directory."""
    cfg = world.cfg
    folder = Path(root) / partition_name(index)
    folder.mkdir(parents=True, exist_ok=True)
    world.drift_to(index * cfg.drift_per_partition)
    stats = {"sum": np.zeros(world.T)}
    for j, n in enumerate(_split_sizes(rows, files)):
        _write_file(world, folder / f"part-{j:05d}.parquet", n, [cfg.seed, 2, index, j], cfg.row_group_size, stats)
    if marker:
        (folder / marker).touch()
    return folder


def generate_partitions(schema: Schema, synthetic_cfg: SyntheticConfig, rows: int, out_dir: str | os.PathLike,
                        partitions: int, first: int = 0, interval_s: float = 0.0) -> dict:  # fmt: skip
    """Write partitions ``first .. first + partitions - 1`` of an hourly log under ``out_dir``
    (``rows`` rows each, ``synthetic.train_files`` files per partition), sleeping ``interval_s``
    between them (a live producer). Returns ``{"partitions": [names], "rows", "seconds"}``."""
    if rows < 0 or partitions < 1 or first < 0:
        raise ValueError("rows must be >= 0, partitions >= 1 and the first partition >= 0")
    start = time.perf_counter()
    world = SyntheticWorld(schema, synthetic_cfg)
    names = []
    for index in range(first, first + partitions):
        if index > first and interval_s > 0:
            time.sleep(interval_s)
        write_partition(world, out_dir, index, rows, synthetic_cfg.train_files)
        names.append(partition_name(index))
    return {"partitions": names, "rows": rows * partitions, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- CLI


def load_config(path: str | os.PathLike, overrides: Optional[list[str]] = None) -> tuple[Schema, SyntheticConfig]:
    """The ``features``, ``tasks`` and ``synthetic`` sections of an experiment YAML
    (other sections are ignored); raises ``ConfigError`` naming the file and key."""
    from fusionrec.typedconfig import ConfigError, blame_override, from_dict, load_yaml_with_overrides

    source = str(path)
    data, applied = load_yaml_with_overrides(path, overrides)
    try:
        features = from_dict(FeatureSchema, data.get("features"), key="features", source=source)
        raw_tasks = data.get("tasks")
        if not isinstance(raw_tasks, list):
            raise ConfigError(f"{source}: tasks: expected a list of tasks, got {raw_tasks!r}")
        tasks = [from_dict(TaskConfig, t, key=f"tasks[{i}]", source=source) for i, t in enumerate(raw_tasks)]
        synthetic = from_dict(SyntheticConfig, data.get("synthetic"), key="synthetic", source=source)
    except ConfigError as err:
        raise blame_override(err, source, applied) from None
    try:
        schema = Schema(features=features, tasks=tasks)
    except ValueError as err:
        raise ConfigError(f"{source}: tasks: {err}") from None
    return schema, synthetic


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusionrec.datasets.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML (features, tasks, synthetic)")
    parser.add_argument("--out", required=True, help="output folder; train/ and eval/ are written inside")
    parser.add_argument("--rows", required=True, type=int,
                        help="total rows, train + eval (with --partitions: per partition)")  # fmt: skip
    parser.add_argument("--partitions", type=int, help="write an hourly Hive-partitioned log OUT/dt=.../hour=.../ of "
                        "this many partitions, each completed by a _SUCCESS marker, drifting by "
                        "synthetic.drift_per_partition")  # fmt: skip
    parser.add_argument("--first-partition", type=int, default=0,
                        help="with --partitions: the index of the first (0: 2026-12-01 hour 0)")  # fmt: skip
    parser.add_argument("--interval-s", type=float, default=0.0,
                        help="with --partitions: seconds between partitions (a live producer)")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args(argv)
    from fusionrec.typedconfig import ConfigError

    try:
        schema, cfg = load_config(args.config, args.overrides)
        if args.partitions is not None:
            summary = generate_partitions(schema, cfg, args.rows, args.out, args.partitions, args.first_partition,
                                          args.interval_s)  # fmt: skip
            print(f"wrote {summary['rows']} rows in {len(summary['partitions'])} partitions "
                  f"({summary['partitions'][0]} .. {summary['partitions'][-1]}) under {args.out} in {summary['seconds']:.1f}s")
            return 0
        summary = generate(schema, cfg, args.rows, args.out)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_files = len(summary["files"]["train"]) + len(summary["files"]["eval"])
    print(
        f"wrote {summary['rows']} rows ({summary['train_rows']} train, {summary['eval_rows']} eval) "
        f"in {n_files} files under {args.out} in {summary['seconds']:.1f}s"
    )
    for name, rate in summary["positive_rate"].items():
        task = next(t for t in schema.tasks if t.name == name)
        extra = ""
        if task.space is not None and summary["positive_rate"][task.space] > 0:
            extra = f" ({rate / summary['positive_rate'][task.space]:.3f} of {task.space})"
        kind = "positive rate" if task.type == "binary" else "mean"
        print(f"  {name}: {kind} {rate:.3f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
