"""Learning-rate schedule and optimizer assembly."""

import math

import pytest
import torch

from fusionrec.pipeline.config import OptimizerConfig, ScheduleConfig, TrainConfig
from fusionrec.pipeline.optimizers import lr_factor


def test_warmup_then_constant():
    s = ScheduleConfig(warmup_steps=4)
    assert [lr_factor(i, s, 100) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_decay_to_min_ratio():
    s = ScheduleConfig(warmup_steps=10, decay="linear", min_lr_ratio=0.1)
    assert lr_factor(10, s, 110) == pytest.approx(1.0)
    assert lr_factor(60, s, 110) == pytest.approx(1.0 - 0.9 * 0.5)
    assert lr_factor(110, s, 110) == pytest.approx(0.1)
    assert lr_factor(500, s, 110) == pytest.approx(0.1)  # clamped past the end


def test_cosine_decay():
    s = ScheduleConfig(decay="cosine", min_lr_ratio=0.0)
    assert lr_factor(0, s, 100) == pytest.approx(1.0)
    assert lr_factor(25, s, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(50, s, 100) == pytest.approx(0.5)
    assert lr_factor(100, s, 100) == pytest.approx(0.0)


def test_scheduler_moves_dense_lr_and_clipping_bounds_the_update():
    """build_optimizer on a plain module: the dense lr follows the schedule and a huge gradient
    is clipped to grad_clip_norm before the SGD step."""
    from torchrec.optim.keyed import KeyedOptimizerWrapper

    from fusionrec.pipeline.optimizers import build_optimizer

    model = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    cfg = TrainConfig(
        sparse_optimizer=OptimizerConfig(type="sgd", lr=0.1),
        dense_optimizer=OptimizerConfig(type="sgd", lr=1.0),
        lr_schedule=ScheduleConfig(warmup_steps=2),
        grad_clip_norm=0.5,
    )
    table = torch.nn.Parameter(torch.zeros(3, 2))  # stands in for the fused embedding optimizer's tables
    fused = KeyedOptimizerWrapper({"table": table}, lambda params: torch.optim.SGD(params, lr=0.1))
    combined, dense, scheduler = build_optimizer(model, fused, cfg, total_steps=10)
    assert scheduler.get_last_lr() == [0.5]  # warm-up step 0 of 2
    model.weight.grad = torch.full_like(model.weight, 100.0)  # norm 200
    combined.step()
    scheduler.step()
    # SGD with lr 0.5 on a gradient clipped to norm 0.5: the update has norm 0.25.
    assert model.weight.norm().item() == pytest.approx(0.25, rel=1e-5)
    assert scheduler.get_last_lr() == [1.0]
