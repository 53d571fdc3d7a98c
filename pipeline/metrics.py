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
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

EPS = 1e-7


class TaskMetrics:
    """Accumulates one task's statistics. ``update`` takes [N] tensors, no host sync."""

    def __init__(self, task_type: str, num_bins: int = 1 << 16) -> None:
        self.task_type = task_type
        self.num_bins = num_bins
        self.hist = torch.zeros(2, num_bins, dtype=torch.float64)  # [negative, positive] weight per bin
        # weight, weighted sum of label, of prediction, of log loss, of squared error, of abs error
        self.sums = torch.zeros(6, dtype=torch.float64)
        self.count = torch.zeros(1, dtype=torch.float64)

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

    def all_reduce(self) -> None:
        """Sum the statistics of every rank (no-op without a process group)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for t in (self.hist, self.sums, self.count):
                dist.all_reduce(t)

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
