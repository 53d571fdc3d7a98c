"""Streaming evaluation metrics against direct computations from their definitions."""

import math

import pytest
import torch

from fusionrec.pipeline.metrics import TaskMetrics, binned_auc


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


def test_roc_curve_area_equals_auc():
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(2000, generator=g) < 0.4).float()
    p = torch.sigmoid(2 * y - 1 + torch.randn(2000, generator=g))
    m = TaskMetrics("binary")
    m.update(p, y, torch.ones(2000))
    curve = m.roc_curve(points=65537)
    fpr, tpr = curve["fpr"], curve["tpr"]
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == pytest.approx(1) and tpr[-1] == pytest.approx(1)
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
    assert area == pytest.approx(m.compute()["auc"], abs=1e-9)


def test_calibration_curve_by_hand():
    # 10 rows predicted 0.12 with 1 positive, 10 rows predicted 0.87 with 9 positives.
    p = torch.tensor([0.12] * 10 + [0.87] * 10)
    y = torch.tensor([1.0] + [0.0] * 9 + [1.0] * 9 + [0.0])
    m = TaskMetrics("binary")
    m.update(p, y, torch.ones(20))
    c = m.calibration_curve(bins=10)
    assert c["weight"] == [10.0, 10.0]
    assert c["positive_rate"] == pytest.approx([0.1, 0.9])
    assert c["mean_prediction"] == pytest.approx([0.12, 0.87], abs=1e-4)  # bin centres of 1/65536 wide bins


def test_bootstrap_interval_covers_estimate_and_narrows_with_data():
    from fusionrec.pipeline.metrics import BootstrapMetrics

    def interval(n, seed=0):
        g = torch.Generator().manual_seed(7)
        y = (torch.rand(n, generator=g) < 0.3).float()
        p = torch.sigmoid(y + torch.randn(n, generator=g))
        point, boot = TaskMetrics("binary"), BootstrapMetrics("binary", replicates=60, seed=seed)
        for s in range(0, n, 250):
            point.update(p[s:s + 250], y[s:s + 250], torch.ones(min(250, n - s)))
            boot.update(p[s:s + 250], y[s:s + 250], torch.ones(min(250, n - s)))
        return point.compute(), boot.compute()

    small, ci_small = interval(500)
    large, ci_large = interval(5000)
    for est, ci in ((small, ci_small), (large, ci_large)):
        for key in ("auc", "logloss", "calibration"):
            lo, hi = ci[key]
            assert lo <= est[key] <= hi, key
    assert ci_large["auc"][1] - ci_large["auc"][0] < 0.6 * (ci_small["auc"][1] - ci_small["auc"][0])
    assert interval(500, seed=0)[1] == ci_small  # reproducible for a seed
