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


def test_dense_adam_is_fused_and_follows_the_adam_equations():
    """Two steps of the dense optimizer against Adam by hand (Kingma & Ba, Algorithm 1, with
    L2 weight decay added to the gradient): m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g²,
    p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)."""
    from fusionrec.pipeline.optimizers import dense_optimizer_factory

    lr, wd, eps, b1, b2 = 0.1, 0.01, 1e-8, 0.9, 0.999
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = dense_optimizer_factory(OptimizerConfig(type="adam", lr=lr, weight_decay=wd, eps=eps))([p])
    assert opt.param_groups[0]["fused"] is True
    want, m, v = [1.0, -2.0, 0.5], [0.0] * 3, [0.0] * 3
    for t, grad in enumerate(([0.3, -0.1, 2.0], [-0.5, 0.4, 1.0]), start=1):
        p.grad = torch.tensor(grad)
        opt.step()
        for i in range(3):
            g = grad[i] + wd * want[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            want[i] -= lr * (m[i] / (1 - b1**t)) / (math.sqrt(v[i] / (1 - b2**t)) + eps)
        assert p.detach().tolist() == pytest.approx(want, rel=1e-6)


def test_dense_adagrad_is_fused_and_follows_the_adagrad_equations():
    """Adagrad by hand: s += g², p -= lr g / (sqrt(s) + eps)."""
    from fusionrec.pipeline.optimizers import dense_optimizer_factory

    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = dense_optimizer_factory(OptimizerConfig(type="adagrad", lr=0.5, eps=1e-10))([p])
    assert opt.param_groups[0]["fused"] is True
    want, s = [1.0, -1.0], [0.0, 0.0]
    for grad in ([2.0, -1.0], [1.0, 3.0]):
        p.grad = torch.tensor(grad)
        opt.step()
        for i in range(2):
            s[i] += grad[i] ** 2
            want[i] -= 0.5 * grad[i] / (math.sqrt(s[i]) + 1e-10)
        assert p.detach().tolist() == pytest.approx(want, rel=1e-6)
