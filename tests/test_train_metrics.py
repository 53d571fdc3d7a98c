"""The training metrics (pipeline.train_metrics) against NE, AUC, calibration and CTR computed by
hand from the rows, with the rec metrics fed in chunks of several steps."""

from __future__ import annotations

import math

import pytest
import torch

from fusionrec.datasets.schema import FeatureSchema, Schema, SparseFeature, TableConfig, TaskConfig
from fusionrec.pipeline.train_metrics import WINDOW_CHUNKS, TrainMetrics

BATCH, STEPS, WINDOW = 8, 41, 160  # a chunk is WINDOW / 16 = 10 rows: fed every 2 steps (16 rows)


def schema() -> Schema:
    features = FeatureSchema(tables=[TableConfig("t", 10, 4)], sparse=[SparseFeature("a", "t")])
    return Schema(features, [TaskConfig("click", "binary"), TaskConfig("convert", "binary", space="click")])


def steps(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        predictions = torch.rand(BATCH, 2, generator=g) * 0.98 + 0.01
        labels = (torch.rand(BATCH, 2, generator=g) < 0.4).float()
        weights = torch.rand(BATCH, generator=g) + 0.5
        out.append((predictions, labels, weights))
    return out


def ne(p: list[float], y: list[float], w: list[float]) -> float:
    """Normalised entropy: weighted log loss over the entropy of the weighted positive rate."""
    total = sum(w)
    loss = -sum(wi * (yi * math.log(pi) + (1 - yi) * math.log(1 - pi)) for pi, yi, wi in zip(p, y, w)) / total
    ctr = sum(wi * yi for yi, wi in zip(y, w)) / total
    return loss / -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))


def auc(p: list[float], y: list[float], w: list[float]) -> float:
    """Weighted probability that a positive scores above a negative (ties count half)."""
    pos = [(pi, wi) for pi, yi, wi in zip(p, y, w) if yi == 1 and wi > 0]
    neg = [(pi, wi) for pi, yi, wi in zip(p, y, w) if yi == 0 and wi > 0]
    won = sum(wp * wn * (1.0 if pp > pn else 0.5 if pp == pn else 0.0) for pp, wp in pos for pn, wn in neg)
    return won / (sum(wp for _, wp in pos) * sum(wn for _, wn in neg))


def task_rows(data, task: int) -> tuple[list[float], list[float], list[float]]:
    """The rows of ``task`` with their weights; convert's weight is 0 where click is 0 (its space)."""
    p, y, w = [], [], []
    for predictions, labels, weights in data:
        for r in range(BATCH):
            in_space = task == 0 or labels[r, 0] == 1
            p.append(float(predictions[r, task]))
            y.append(float(labels[r, task]))
            w.append(float(weights[r]) if in_space else 0.0)
    return p, y, w


def test_chunks_are_a_sixteenth_of_a_ranks_window():
    metrics = TrainMetrics(schema(), BATCH, 2, 0, 100_000, torch.device("cpu"))
    assert WINDOW_CHUNKS == 16 and metrics.chunk_rows == 50_000 // 16


def test_metrics_fed_in_chunks_equal_the_hand_computed_ones():
    data = steps()
    metrics = TrainMetrics(schema(), BATCH, 1, 0, WINDOW, torch.device("cpu"))
    assert metrics.chunk_rows == WINDOW // 16
    for i, (predictions, labels, weights) in enumerate(data):
        metrics.update(predictions, labels, weights)
        assert metrics._kept_rows == (0 if i % 2 else BATCH)  # fed after every second step
    out = metrics.compute()
    rows = STEPS * BATCH
    for t, name in enumerate(("click", "convert")):
        p, y, w = task_rows(data, t)
        assert out[f"ne/{name}/lifetime"] == pytest.approx(ne(p, y, w), rel=1e-4)
        assert out[f"calibration/{name}/lifetime"] == pytest.approx(
            sum(a * c for a, c in zip(p, w)) / sum(b * c for b, c in zip(y, w)), rel=1e-4)  # fmt: skip
        assert out[f"ctr/{name}/lifetime"] == pytest.approx(sum(b * c for b, c in zip(y, w)) / sum(w), rel=1e-4)
        # The window's sums drop whole chunks: 20 chunks of 16 rows, then the last step's 8 rows
        # at compute; the newest that fit in 160 rows are 9 chunks + 8 rows = the last 152 rows.
        last = slice(rows - 152, rows)
        assert out[f"ne/{name}/window"] == pytest.approx(ne(p[last], y[last], w[last]), rel=1e-4)
        # AUC (torchrec reports it for the window only) keeps its rows and trims them one by
        # one: exactly the last 160.
        last = slice(rows - WINDOW, rows)
        assert out[f"auc/{name}/window"] == pytest.approx(auc(p[last], y[last], w[last]), rel=1e-4)
    assert out["throughput/total_examples"] == rows  # counted per step, not per chunk


def test_compute_feeds_what_is_kept_and_keeps_nothing():
    data = steps(1)[:3]
    metrics = TrainMetrics(schema(), BATCH, 1, 0, 100_000, torch.device("cpu"))  # chunks of 6,250 rows
    for step in data:
        metrics.update(*step)
    assert metrics._kept_rows == 3 * BATCH
    first = metrics.compute()
    assert metrics._kept_rows == 0
    p, y, w = task_rows(data, 0)
    assert first["ne/click/lifetime"] == pytest.approx(ne(p, y, w), rel=1e-4)
    assert metrics.compute()["ne/click/lifetime"] == pytest.approx(first["ne/click/lifetime"], rel=1e-6)
