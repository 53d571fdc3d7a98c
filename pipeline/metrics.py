"""Streaming per-task evaluation metrics that merge across ranks with one all-reduce.

Every metric is kept as sums, so memory is fixed whatever the size of the eval set:

* AUC from a histogram of predictions (``num_bins`` equal-width bins on [0, 1], per
  label): pairs in different bins are ordered exactly, pairs in one bin count 1/2, so the
  error is bounded by the share of positive-negative pairs that fall into one bin
  (at most ~1/num_bins for predictions spread over [0, 1]; tests check it against an
  exact pairwise AUC).
* log loss, NE (log loss / entropy of the mean label), calibration (sum of predictions /
  sum of labels), positive rate and count: exact.
* MSE and MAE for regression tasks: exact.

Sample weights multiply every contribution; rows with weight 0 (padding, or outside a
task's space) do not count.

The sums live on the device the predictions come from (``device``), so scoring on a GPU makes
no host copy per batch; :meth:`TaskMetrics.finish` all-reduces them once and moves them to the
host, after which ``compute`` and the curves read them.

The same histograms give the ROC curve and the calibration (reliability) curve.
:class:`BootstrapMetrics` adds confidence intervals by the Poisson bootstrap, also streaming.
"""

from __future__ import annotations

import math

import torch

from fusionrec.pipeline.distributed import all_reduce

EPS = 1e-7


class TaskMetrics:
    """Accumulates one task's statistics. ``update`` takes [N] tensors, no host sync."""

    def __init__(self, task_type: str, num_bins: int = 1 << 16, device: torch.device | str = "cpu") -> None:
        self.task_type = task_type
        self.num_bins = num_bins
        self.hist = torch.zeros(2, num_bins, dtype=torch.float64, device=device)  # [negative, positive] weight per bin
        # weight, weighted sum of label, of prediction, of log loss, of squared error, of abs error
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)
        self.count = torch.zeros(1, dtype=torch.float64, device=device)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
        """predictions, labels, weights: [N]; predictions are probabilities for binary tasks."""
        p = predictions.detach().to(torch.float64)
        y = labels.detach().to(torch.float64)
        w = weights.detach().to(torch.float64)
        if self.task_type == "binary":
            bins = (p.clamp(0.0, 1.0) * self.num_bins).long().clamp_(max=self.num_bins - 1)
            positive = (y > 0.5).long()
            self.hist.view(-1).index_add_(0, positive * self.num_bins + bins, w)
            pc = p.clamp(EPS, 1.0 - EPS)
            logloss = -(y * pc.log() + (1.0 - y) * (1.0 - pc).log())
        else:
            logloss = torch.zeros_like(p)
        err = p - y
        stats = torch.stack([w, w * y, w * p, w * logloss, w * err * err, w * err.abs()])
        self.sums += stats.sum(dim=1)
        self.count += (w > 0).sum()

    def finish(self) -> None:
        """Sum the statistics of every rank (collective; no-op without a process group) and move
        them to the host: the one sync of a scoring pass."""
        self.hist, self.sums, self.count = (all_reduce(t).cpu() for t in (self.hist, self.sums, self.count))

    def compute(self) -> dict[str, float | int]:
        weight, sum_y, sum_p, sum_logloss, sum_sq, sum_abs = self.sums.tolist()
        result: dict[str, float | int] = {"count": int(self.count.item())}
        if weight <= 0:
            return result
        if self.task_type != "binary":
            result.update(mse=sum_sq / weight, mae=sum_abs / weight, mean_label=sum_y / weight)
            return result
        base = min(max(sum_y / weight, EPS), 1 - EPS)
        entropy = -(base * math.log(base) + (1 - base) * math.log(1 - base))
        result.update(
            auc=binned_auc(self.hist[1], self.hist[0]),
            logloss=sum_logloss / weight,
            ne=(sum_logloss / weight) / entropy,
            calibration=sum_p / sum_y if sum_y > 0 else float("nan"),
            positive_rate=sum_y / weight,
            mean_prediction=sum_p / weight,
        )
        return result


    def roc_curve(self, points: int = 256) -> dict[str, list[float]]:
        """False- and true-positive rates at up to ``points`` thresholds, from 1 down to 0."""
        pos, neg = self.hist[1].flip(0), self.hist[0].flip(0)  # highest predictions first
        tpr = torch.cat([torch.zeros(1, dtype=pos.dtype), torch.cumsum(pos, 0) / pos.sum().clamp(min=1e-12)])
        fpr = torch.cat([torch.zeros(1, dtype=neg.dtype), torch.cumsum(neg, 0) / neg.sum().clamp(min=1e-12)])
        keep = torch.linspace(0, self.num_bins, min(points, self.num_bins + 1)).round().long()
        return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}

    def calibration_curve(self, bins: int = 20) -> dict[str, list[float]]:
        """Per equal-width prediction bin with rows in it: mean prediction (from the fine bins'
        centres), observed positive rate and weight."""
        coarse = torch.arange(self.num_bins) * bins // self.num_bins  # coarse bin of each fine bin
        centres = (torch.arange(self.num_bins, dtype=torch.float64) + 0.5) / self.num_bins
        total = self.hist.sum(0)
        weight = torch.zeros(bins, dtype=torch.float64).index_add_(0, coarse, total)
        positive = torch.zeros(bins, dtype=torch.float64).index_add_(0, coarse, self.hist[1])
        prediction_mass = torch.zeros(bins, dtype=torch.float64).index_add_(0, coarse, total * centres)
        mean_prediction = prediction_mass / weight.clamp(min=1e-12)
        rate = positive / weight.clamp(min=1e-12)
        used = weight > 0
        return {
            "mean_prediction": mean_prediction[used].tolist(),
            "positive_rate": rate[used].tolist(),
            "weight": weight[used].tolist(),
        }


class BootstrapMetrics:
    """Poisson-bootstrap confidence intervals for one task, streaming.

    Each of ``replicates`` resamples weights every row by an independent Poisson(1) draw
    (the streaming equivalent of resampling rows with replacement) and keeps the same sums
    as :class:`TaskMetrics`, all replicates in one tensor ([R, 2, bins] histograms with
    coarser bins, [R, 6] sums). ``compute`` returns the 2.5th and 97.5th percentiles of each
    metric over the replicates. Draws come from a generator seeded by ``seed``, so a run is
    reproducible for a fixed row order.
    """

    def __init__(
        self, task_type: str, replicates: int, seed: int, num_bins: int = 4096, device: torch.device | str = "cpu"
    ) -> None:
        self.replicates = [TaskMetrics(task_type, num_bins) for _ in range(replicates)]
        self.hist = torch.zeros(replicates, 2, num_bins, dtype=torch.float64, device=device)  # [R, 2, bins]
        self.sums = torch.zeros(replicates, 6, dtype=torch.float64, device=device)
        self.count = torch.zeros(replicates, dtype=torch.float64, device=device)
        self.task_type, self.num_bins = task_type, num_bins
        # Draws on the host, so a run's intervals do not depend on the device it scored on.
        self.generator = torch.Generator().manual_seed(seed)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
        R, n = len(self.replicates), weights.shape[0]
        draws = torch.poisson(torch.ones(R, n), generator=self.generator).to(weights.device, torch.float64)
        w = weights.detach().to(torch.float64) * draws
        p, y = predictions.detach().to(torch.float64), labels.detach().to(torch.float64)
        if self.task_type == "binary":
            bins = (p.clamp(0.0, 1.0) * self.num_bins).long().clamp_(max=self.num_bins - 1)
            index = ((y > 0.5).long() * self.num_bins + bins).expand(R, n)
            self.hist.view(R, -1).scatter_add_(1, index, w)
            pc = p.clamp(EPS, 1.0 - EPS)
            logloss = -(y * pc.log() + (1.0 - y) * (1.0 - pc).log())
        else:
            logloss = torch.zeros_like(p)
        err = p - y
        per_row = torch.stack([torch.ones_like(p), y, p, logloss, err * err, err.abs()])  # [6, n]
        self.sums += w @ per_row.T
        self.count += (w > 0).sum(dim=1)

    def finish(self) -> None:
        """Sum every rank's replicates (collective) and move them to the host."""
        self.hist, self.sums, self.count = (all_reduce(t).cpu() for t in (self.hist, self.sums, self.count))

    def compute(self, level: float = 0.95) -> dict[str, list[float]]:
        values: dict[str, list[float]] = {}
        for i, replicate in enumerate(self.replicates):
            replicate.hist, replicate.sums, replicate.count = self.hist[i], self.sums[i], self.count[i : i + 1]
            for key, value in replicate.compute().items():
                if key != "count" and isinstance(value, float) and math.isfinite(value):
                    values.setdefault(key, []).append(value)
        tail = (1 - level) / 2
        return {
            key: [float(torch.quantile(torch.tensor(v, dtype=torch.float64), q)) for q in (tail, 1 - tail)]
            for key, v in values.items()
        }


def binned_auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """AUC from per-bin positive and negative weights (bins ordered by prediction).

    AUC = P(score_pos > score_neg) + 1/2 P(tie); pairs inside one bin count as ties.
    """
    total = positive.sum() * negative.sum()
    if total <= 0:
        return float("nan")
    negatives_below = torch.cumsum(negative, 0) - negative
    wins = (positive * negatives_below).sum() + 0.5 * (positive * negative).sum()
    return float(wins / total)
