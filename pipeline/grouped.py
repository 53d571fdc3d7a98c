"""Group AUC (GAUC): the mean of per-user AUCs, weighted by each user's impressions.

    GAUC = Σ_g n_g · AUC_g / Σ_g n_g   over groups g with both a positive and a negative row

(Zhou et al., "Deep Interest Network", KDD 2018). Unlike the other metrics it cannot be
kept as fixed-size sums: every scored row is kept compactly (group id, prediction, label:
17 bytes per row and task) and, under torchrun, gathered on every rank at the end. Rows with
weight 0 (outside a task's space, padding) are not kept. Ties inside a group count 1/2.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from fusionrec.pipeline.distributed import is_multi_rank


def group_auc(groups: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(GAUC, number of groups that count) for [N] group ids, predictions and 0/1 labels."""
    if len(groups) == 0:
        return float("nan"), 0
    order = np.lexsort((predictions, groups))
    g, p, y = groups[order], predictions[order], labels[order].astype(np.float64)
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_of = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    rank = np.arange(len(g)) - starts[group_of] + 1.0  # 1-based rank inside the group
    new_tie = new_group | np.r_[True, p[1:] != p[:-1]]
    tie_of = np.cumsum(new_tie) - 1
    tie_size = np.bincount(tie_of)
    average_rank = rank[new_tie][tie_of] + (tie_size[tie_of] - 1) / 2.0
    size = np.bincount(group_of).astype(np.float64)
    positives = np.bincount(group_of, weights=y)
    negatives = size - positives
    positive_rank_sum = np.bincount(group_of, weights=average_rank * y)
    counted = (positives > 0) & (negatives > 0)
    if not counted.any():
        return float("nan"), 0
    auc = (positive_rank_sum[counted] - positives[counted] * (positives[counted] + 1) / 2) / (
        positives[counted] * negatives[counted]
    )
    return float((size[counted] * auc).sum() / size[counted].sum()), int(counted.sum())


class GroupAUC:
    """Collects (group, prediction, label) of one binary task for :func:`group_auc`."""

    def __init__(self) -> None:
        self.parts: list[tuple[torch.Tensor, ...]] = []

    def update(self, groups: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
        """[N] tensors on any device; kept there (no host sync per batch) until :meth:`compute`."""
        self.parts.append((groups.long(), predictions.detach().float(), labels > 0.5, weights > 0))

    def _host_columns(self) -> list[np.ndarray]:
        """(group ids int64, predictions float32, labels uint8) of the kept rows, on the host."""
        if not self.parts:
            return [np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.uint8)]
        groups, predictions, labels, keep = (torch.cat(c).cpu() for c in zip(*self.parts))
        return [groups[keep].numpy(), predictions[keep].numpy(), labels[keep].numpy().astype(np.uint8)]

    def compute(self) -> tuple[float, int]:
        columns = self._host_columns()
        if is_multi_rank():
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, columns)
            columns = [np.concatenate([part[i] for part in gathered]) for i in range(3)]
        return group_auc(*columns)
