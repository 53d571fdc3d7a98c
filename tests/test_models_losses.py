"""Multi-task loss against hand computation: BCE / MSE, task-space masks, sample and task weights."""

import math

import torch

from fusionrec.datasets.schema import TaskConfig
from fusionrec.models.losses import MultiTaskLoss

TASKS = [
    TaskConfig("click"),
    TaskConfig("convert", space="click", weight=2.0),
    TaskConfig("price", type="regression", weight=0.5),
]
LOGITS = torch.tensor([[0.5, -1.0, 2.0], [-2.0, 3.0, 0.0], [1.0, 0.0, -1.0], [0.0, 2.0, 4.0]])
LABELS = torch.tensor([[1.0, 0.0, 1.5], [0.0, 1.0, 0.5], [1.0, 1.0, -2.0], [1.0, 0.0, 3.0]])
WEIGHTS = torch.tensor([1.0, 2.0, 0.5, 1.0])


def _bce(z, y):
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_hand_computed_losses():
    loss, per_task = MultiTaskLoss(TASKS)(LOGITS, LABELS, WEIGHTS)
    z, y, w = LOGITS.tolist(), LABELS.tolist(), WEIGHTS.tolist()
    click = sum(w[b] * _bce(z[b][0], y[b][0]) for b in range(4)) / sum(w)
    # convert is trained only where click == 1: rows 0, 2, 3.
    rows = [0, 2, 3]
    convert = sum(w[b] * _bce(z[b][1], y[b][1]) for b in rows) / sum(w[b] for b in rows)
    price = sum(w[b] * (z[b][2] - y[b][2]) ** 2 for b in range(4)) / sum(w)
    torch.testing.assert_close(per_task, torch.tensor([click, convert, price]))
    torch.testing.assert_close(loss, torch.tensor(click + 2.0 * convert + 0.5 * price))


def test_empty_task_space_contributes_zero():
    labels = LABELS.clone()
    labels[:, 0] = 0.0  # no click anywhere: convert has no row
    loss, per_task = MultiTaskLoss(TASKS)(LOGITS, labels, WEIGHTS)
    assert per_task[1] == 0.0 and torch.isfinite(loss)
    logits = LOGITS.clone().requires_grad_()
    MultiTaskLoss(TASKS)(logits, labels, WEIGHTS)[0].backward()
    assert torch.all(logits.grad[:, 1] == 0)


def test_predictions():
    preds = MultiTaskLoss(TASKS).predictions(LOGITS)
    torch.testing.assert_close(preds[:, :2], torch.sigmoid(LOGITS[:, :2]))
    torch.testing.assert_close(preds[:, 2], LOGITS[:, 2])
