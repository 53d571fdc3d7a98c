"""Synthetic logs: layout, types, determinism, label rules and learnability."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fusionrec.datasets.config import SyntheticConfig
from fusionrec.datasets.schema import FeatureSchema, Schema, SparseFeature, TableConfig, TaskConfig
from fusionrec.datasets.synthetic import SyntheticWorld, ZipfIds, generate, load_config, main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (ties broken by order; fine for continuous scores)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels > 0.5
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def demo() -> tuple[Schema, SyntheticConfig]:
    return load_config(DEMO, ["synthetic.row_group_size=1000"])


@pytest.fixture(scope="module")
def demo_data(demo, tmp_path_factory) -> tuple[Path, dict]:
    schema, cfg = demo
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate(schema, cfg, 24_000, out)


def read_all(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])


def test_layout_and_column_types(demo, demo_data):
    schema, cfg = demo
    out, summary = demo_data
    train, evals = sorted((out / "train").glob("*.parquet")), sorted((out / "eval").glob("*.parquet"))
    assert [p.name for p in train] == [f"part-{i:05d}.parquet" for i in range(cfg.train_files)]
    assert len(evals) == cfg.eval_files
    assert summary["eval_rows"] == round(24_000 * cfg.eval_fraction)
    assert summary["train_rows"] == 24_000 - summary["eval_rows"]
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in train) == summary["train_rows"]
    meta = pq.ParquetFile(train[0]).metadata
    assert meta.num_row_groups >= 4 and meta.row_group(0).num_rows == 1000

    arrow = pq.read_schema(train[0])
    assert arrow.names == schema.columns
    f = schema.features
    for name in f.dense + schema.task_names:
        assert arrow.field(name).type == pa.float32()
    for s in f.sparse:
        assert arrow.field(s.name).type == (pa.list_(pa.int64()) if s.multi_valued else pa.int64())
    for s in f.sequences:
        assert arrow.field(s.name).type == pa.list_(pa.int64())


def test_ids_lengths_and_label_rules(demo, demo_data):
    schema, _ = demo
    out, summary = demo_data
    table = read_all(out / "train")
    f = schema.features
    for s in [*f.sparse, *f.sequences]:
        col = table.column(s.name).combine_chunks()
        values = col.flatten().to_numpy() if pa.types.is_list(col.type) else col.to_numpy()
        assert values.min() >= 0 and values.max() < f.table(s.table).num_embeddings
    for s in [*f.sequences, *[x for x in f.sparse if x.multi_valued]]:
        lengths = np.array([len(v) for v in table.column(s.name).to_pylist()])
        assert (lengths == 0).any() and (lengths > s.max_len).any() and (lengths <= s.max_len).any()

    click, like, convert = (table.column(t).to_numpy() for t in ("click", "like", "convert"))
    for y in (click, like, convert):
        assert set(np.unique(y)) <= {0.0, 1.0}
    assert not ((convert == 1) & (click == 0)).any(), "convert must stay inside click"
    assert 0.2 <= click.mean() <= 0.4
    assert 0.1 <= like.mean() <= 0.3
    assert 0.2 <= convert[click == 1].mean() <= 0.5
    assert summary["positive_rate"]["click"] == pytest.approx(
        (click.sum() + read_all(out / "eval").column("click").to_numpy().sum()) / summary["rows"]
    )

    # Zipf: the most frequent user and item take a large share, most ids are rare.
    users = table.column("user_id").to_numpy()
    counts = np.sort(np.bincount(users))[::-1]
    assert counts[0] > 0.05 * len(users) and counts[0] > 20 * np.median(counts[counts > 0])


def test_deterministic_by_seed(demo, tmp_path):
    schema, cfg = demo
    generate(schema, cfg, 3000, tmp_path / "a")
    generate(schema, cfg, 3000, tmp_path / "b")
    other = SyntheticConfig(**{**cfg.__dict__, "seed": cfg.seed + 1})
    generate(schema, other, 3000, tmp_path / "c")
    for split in ("train", "eval"):
        a, b, c = (read_all(tmp_path / x / split) for x in "abc")
        assert a.equals(b)
        assert not a.equals(c)


def test_rewrite_removes_stale_files(demo, tmp_path):
    schema, cfg = demo
    generate(schema, SyntheticConfig(**{**cfg.__dict__, "train_files": 5}), 2000, tmp_path)
    generate(schema, cfg, 2000, tmp_path)
    assert len(list((tmp_path / "train").glob("*.parquet"))) == cfg.train_files


def _recent_hits(seqs: list[list[int]], targets: np.ndarray, max_len: int) -> np.ndarray:
    return np.array([sum(v == t for v in seq[-max_len:]) for seq, t in zip(seqs, targets)], dtype=np.float64)


def test_labels_are_learnable_from_the_columns(demo, demo_data):
    """A logistic regression on a few observable features beats chance clearly on every
    task; the same fit on shuffled labels does not."""
    schema, _ = demo
    out, _ = demo_data
    table = read_all(out / "train")
    f = schema.features
    dense = np.stack([table.column(c).to_numpy() for c in f.dense], axis=1).astype(np.float64)
    item = table.column("item_id").to_numpy()
    hits = [np.log1p(_recent_hits(table.column(s.name).to_pylist(), item, s.max_len)) for s in f.sequences]
    x = np.concatenate([dense, dense**2 - 1, np.stack(hits, axis=1)], axis=1)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float64)

    def fit_auc(y: np.ndarray, rows: np.ndarray) -> float:
        """Fit on the first half of ``rows``, AUC on the second."""
        half = len(rows) // 2
        xt, yt = x[rows], torch.tensor(y[rows], dtype=torch.float64)
        w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=50)

        def closure():
            opt.zero_grad()
            z = xt[:half] @ w[:-1] + w[-1]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt[:half])
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return auc(y[rows][half:], (xt[half:] @ w[:-1]).numpy())

    rng = np.random.default_rng(0)
    click = table.column("click").to_numpy()
    for task in schema.task_names:
        y = table.column(task).to_numpy()
        rows = np.arange(len(y)) if task != "convert" else np.flatnonzero(click == 1)
        assert fit_auc(y, rows) > 0.62, task
        assert abs(fit_auc(rng.permutation(y), rows) - 0.5) < 0.05, task


def test_task_correlation_controls_shared_signal(demo):
    schema, cfg = demo

    def logit_corr(rho: float) -> float:
        world = SyntheticWorld(schema, SyntheticConfig(**{**cfg.__dict__, "task_correlation": rho}))
        logits = world.sample(4000, np.random.default_rng(1)).logits
        return float(np.corrcoef(logits[:, 0], logits[:, 1])[0, 1])

    low, high = logit_corr(0.0), logit_corr(1.0)
    assert high > low + 0.3


def test_ground_truth_logits_rank_labels(demo):
    schema, cfg = demo
    rows = SyntheticWorld(schema, cfg).sample(20_000, np.random.default_rng(2))
    click = rows.columns["click"].to_numpy()
    assert auc(click, rows.logits[:, 0]) > 0.72
    assert auc(rows.columns["like"].to_numpy(), rows.logits[:, 1]) > 0.72
    inside = click == 1
    assert auc(rows.columns["convert"].to_numpy()[inside], rows.logits[inside, 2]) > 0.72


def test_zipf_ids():
    z = ZipfIds(1000, 1.1, seed=3)
    ranks = z.ranks(np.random.default_rng(0).random(200_000))
    counts = np.bincount(ranks, minlength=1000)
    assert counts[0] / counts[1] == pytest.approx(2**1.1, rel=0.1)
    assert counts[0] / counts[9] == pytest.approx(10**1.1, rel=0.15)
    perm = ((z._a * np.arange(1000, dtype=np.uint64) + z._b) % np.uint64(1000)).astype(np.int64)
    assert len(set(perm.tolist())) == 1000  # ranks → ids is a bijection

    huge = ZipfIds(10**12, 1.05, seed=4)  # O(1) memory for any table size
    ids = huge.ids(np.random.default_rng(1).random(100_000))
    assert ids.min() >= 0 and ids.max() < 10**12
    assert (huge.ranks(np.random.default_rng(1).random(100_000)) >= ZipfIds.HEAD).mean() > 0.3


def test_generic_schema(tmp_path):
    """No candidate, no dense, a regression task, a weight column and a gate chain."""
    schema = Schema(
        features=FeatureSchema(
            tables=[TableConfig("a", 100, 4), TableConfig("b", 10**10, 4)],
            sparse=[SparseFeature("a_id", "a"), SparseFeature("b_list", "b", multi_valued=True, max_len=3)],
            weight_column="w",
        ),
        tasks=[
            TaskConfig("t0"),
            TaskConfig("t1", space="t0"),
            TaskConfig("t2", space="t1"),
            TaskConfig("score", type="regression"),
        ],
    )
    cfg = SyntheticConfig(train_files=2, eval_files=1, row_group_size=500)
    summary = generate(schema, cfg, 5000, tmp_path)
    table = read_all(tmp_path / "train")
    assert table.column_names == schema.columns
    t0, t1, t2 = (table.column(t).to_numpy() for t in ("t0", "t1", "t2"))
    assert not ((t1 > t0) | (t2 > t1)).any()
    assert (table.column("w").to_numpy() == 1).all()
    assert len(np.unique(table.column("score").to_numpy())) > 100
    assert math.isclose(summary["positive_rate"]["t0"], 0.3, abs_tol=0.05)


def test_cli(tmp_path, capsys):
    rc = main(["--config", str(DEMO), "--out", str(tmp_path), "--rows", "1500", "--set", "synthetic.train_files=3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "1500 rows" in printed and "click: positive rate" in printed and "of click" in printed
    assert len(list((tmp_path / "train").glob("*.parquet"))) == 3

    assert main(["--config", str(DEMO), "--out", str(tmp_path), "--rows", "10", "--set", "synthetic.bogus=1"]) == 2
    assert "synthetic.bogus" in capsys.readouterr().err


def test_weight_and_group_columns_read_back(tmp_path):
    """Per-id weight columns are as long as their id lists and feed a weighted KJT; the
    group column is the user id."""
    from fusionrec.datasets.reader import ParquetReader

    schema = Schema(
        features=FeatureSchema(
            tables=[TableConfig("user", 500, 4), TableConfig("tag", 50, 4)],
            sparse=[
                SparseFeature("user_id", "user"),
                SparseFeature("user_tags", "tag", multi_valued=True, max_len=3, weight_column="user_tags_w"),
            ],
            group_column="uid",
        ),
        tasks=[TaskConfig("click")],
    )
    generate(schema, SyntheticConfig(train_files=1, eval_files=1, row_group_size=400), 1000, tmp_path)
    table = read_all(tmp_path / "train")
    assert table.schema.field("user_tags_w").type == pa.list_(pa.float32())
    ids, weights = table.column("user_tags").to_pylist(), table.column("user_tags_w").to_pylist()
    assert [len(i) for i in ids] == [len(w) for w in weights]
    assert table.column("uid").to_pylist() == table.column("user_id").to_pylist()
    reader = ParquetReader(str(tmp_path / "train"), schema, 100)
    batch = next(iter(reader))
    w = batch.sparse["user_tags"].weights()
    assert len(w) == len(batch.sparse["user_tags"].values()) and ((w >= 0.25) & (w < 1.75)).all()
    assert (batch.sparse["user_id"].weights() == 1).all()
    assert batch.group_ids.tolist() == batch.sparse["user_id"].values().tolist()
    stats = reader.data_stats()
    assert stats["empty_lists"] > 0 and stats["id_weights_mismatch_filled"] == stats["null_id_weights_filled"] == 0
