"""Streaming evaluation metrics against direct computations from their definitions."""

import math

import pytest
import torch

from pipeline.metrics import TaskMetrics, binned_auc


def exact_auc(p, y, w):
    """Weighted Mann-Whitney AUC over all positive/negative pairs, ties counting 1/2."""
    pos = [(pi, wi) for pi, yi, wi in zip(p, y, w) if yi == 1]
    neg = [(pi, wi) for pi, yi, wi in zip(p, y, w) if yi == 0]
    num = sum(wp * wn * (1.0 if sp > sn else 0.5 if sp == sn else 0.0) for sp, wp in pos for sn, wn in neg)
    return num / (sum(w for _, w in pos) * sum(w for _, w in neg))


def test_auc_and_losses_match_definitions():
    g = torch.Generator().manual_seed(0)
    n = 400
    y = (torch.rand(n, generator=g) < 0.3).float()
    p = torch.sigmoid(1.5 * y - 0.7 + torch.randn(n, generator=g))
    w = torch.rand(n, generator=g) + 0.5
    m = TaskMetrics("binary")
    for chunk in range(4):  # streaming: four updates
        s = slice(chunk * 100, (chunk + 1) * 100)
        m.update(p[s], y[s], w[s])
    r = m.compute()

    pl, yl, wl = p.tolist(), y.tolist(), w.tolist()
    assert r["auc"] == pytest.approx(exact_auc(pl, yl, wl), abs=2e-4)
    W = sum(wl)
    logloss = -sum(wi * (yi * math.log(pi) + (1 - yi) * math.log(1 - pi)) for pi, yi, wi in zip(pl, yl, wl)) / W
    base = sum(wi * yi for yi, wi in zip(yl, wl)) / W
    entropy = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert r["logloss"] == pytest.approx(logloss, rel=1e-9)
    assert r["ne"] == pytest.approx(logloss / entropy, rel=1e-9)
    assert r["calibration"] == pytest.approx(sum(pi * wi for pi, wi in zip(pl, wl)) / sum(yi * wi for yi, wi in zip(yl, wl)))
    assert r["positive_rate"] == pytest.approx(base)
    assert r["count"] == n


def test_zero_weight_rows_do_not_count():
    m = TaskMetrics("binary")
    m.update(torch.tensor([0.9, 0.1, 0.99]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]))
    r = m.compute()
    assert r["count"] == 2 and r["auc"] == 1.0


def test_perfect_inverted_and_tied_auc():
    pos, neg = torch.zeros(8), torch.zeros(8)
    pos[7], neg[0] = 1, 1
    assert binned_auc(pos, neg) == 1.0
    assert binned_auc(neg, pos) == 0.0
    assert binned_auc(pos, pos) == 0.5


def test_regression_metrics():
    m = TaskMetrics("regression")
    m.update(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.5, 2.0, 2.0]), torch.ones(3))
    r = m.compute()
    assert r["mse"] == pytest.approx((0.25 + 0 + 4) / 3)
    assert r["mae"] == pytest.approx((0.5 + 0 + 2) / 3)
    assert "auc" not in r
