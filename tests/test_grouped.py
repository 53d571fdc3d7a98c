"""GAUC against per-group AUCs computed by hand."""

import numpy as np
import pytest
import torch

from fusionrec.pipeline.grouped import GroupAUC, group_auc


def pairwise_auc(p, y):
    pos = [a for a, b in zip(p, y) if b == 1]
    neg = [a for a, b in zip(p, y) if b == 0]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))


def test_group_auc_by_hand():
    groups = np.array([7, 7, 7, 7, 3, 3, 3, 9, 9])
    preds = np.array([0.9, 0.2, 0.6, 0.6, 0.1, 0.8, 0.8, 0.5, 0.4])
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 1, 1])  # group 9 has no negative: left out
    auc7 = pairwise_auc([0.9, 0.2, 0.6, 0.6], [1, 0, 1, 0])  # = (1 + 1 + 1 + 0.5) / 4
    auc3 = pairwise_auc([0.1, 0.8, 0.8], [0, 1, 0])  # = (1 + 0.5) / 2
    value, counted = group_auc(groups, preds, labels)
    assert counted == 2
    assert value == pytest.approx((4 * auc7 + 3 * auc3) / 7)
    assert auc7 == 0.875 and auc3 == 0.75


def test_collector_drops_zero_weight_rows():
    c = GroupAUC()
    c.update(torch.tensor([1, 1, 1]), torch.tensor([0.9, 0.1, 0.95]), torch.tensor([1.0, 0.0, 0.0]),
             torch.tensor([1.0, 1.0, 0.0]))
    assert c.compute() == (1.0, 1)
