"""AdaTT against the paper's equations (Li et al., KDD 2023), written out with explicit loops."""

import math

import pytest
import torch

from models.adatt import AdaTT
from models.config import AdaTTConfig


def _relu(v):
    return [max(0.0, a) for a in v]


def _matvec(x, w, b):
    """x [in] (list), w [in, out] tensor, b [out] tensor → list [out]."""
    return [sum(x[i] * float(w[i, o]) for i in range(len(x))) + float(b[o]) for o in range(w.shape[1])]


def _softmax(z):
    m = max(z)
    e = [math.exp(a - m) for a in z]
    s = sum(e)
    return [a / s for a in e]


def _random_params(T, m, m_s, dims, seed=0):
    """Per-expert parameters, in the paper's terms, for every level."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.7  # noqa: E731
    levels = []
    for l, (din, d) in enumerate(zip(dims[:-1], dims[1:])):
        N = sum(m) + m_s
        levels.append(
            {
                "task_w": [[rnd(din, d) for _ in range(m[t])] for t in range(T)],
                "task_b": [[rnd(d) for _ in range(m[t])] for t in range(T)],
                "shared_w": [rnd(din, d) for _ in range(m_s)],
                "shared_b": [rnd(d) for _ in range(m_s)],
                "gate_w": [rnd(din, N) for _ in range(T)],
                "gate_b": [rnd(N) for _ in range(T)],
                "sgate_w": rnd(din, N),
                "sgate_b": rnd(N),
                "v": [rnd(m[t]) + 1.0 for t in range(T)],
            }
        )
    return levels


def _load(model: AdaTT, params, m, m_s):
    """Write the per-expert parameters into the module (experts ordered task 0…, task 1…, shared)."""
    with torch.no_grad():
        for level, p in zip(model.levels, params):
            d = level.out_dim
            if level.uniform:
                for t in range(len(m)):
                    for j in range(m[t]):
                        level.task_experts.weight[t, :, j * d : (j + 1) * d] = p["task_w"][t][j]
                        level.task_experts.bias[t, j * d : (j + 1) * d] = p["task_b"][t][j]
            else:
                for t, layer in enumerate(level.task_experts):
                    for j in range(m[t]):
                        layer.weight[j * d : (j + 1) * d] = p["task_w"][t][j].T
                        layer.bias[j * d : (j + 1) * d] = p["task_b"][t][j]
            for j in range(m_s):
                level.shared_expert_layer.weight[j * d : (j + 1) * d] = p["shared_w"][j].T
                level.shared_expert_layer.bias[j * d : (j + 1) * d] = p["shared_b"][j]
            for t in range(len(m)):
                level.task_gates.weight[t] = p["gate_w"][t]
                level.task_gates.bias[t] = p["gate_b"][t]
            if level.shared_gate is not None:
                level.shared_gate.weight.copy_(p["sgate_w"].T)
                level.shared_gate.bias.copy_(p["sgate_b"])
            if level.native is not None:
                level.native.copy_(torch.cat([p["v"][t] for t in range(len(m)) if m[t] > 1]))


def _reference(x, params, m, m_s):
    """Eqs. 4, 9–11 for one sample: x is a list of T input lists. Returns T output lists."""
    T = len(m)
    xs = [sum(x[t][i] for t in range(T)) / T for i in range(len(x[0]))] if m_s else None
    for l, p in enumerate(params):
        last = l == len(params) - 1
        # eq. 4: task t's experts read task t's previous output only; shared experts read the shared unit.
        E_task = [[_relu(_matvec(x[t], p["task_w"][t][j], p["task_b"][t][j])) for j in range(m[t])] for t in range(T)]
        E_shared = [_relu(_matvec(xs, p["shared_w"][j], p["shared_b"][j])) for j in range(m_s)]
        E_all = [e for t in range(T) for e in E_task[t]] + E_shared
        d = len(E_all[0])
        new_x = []
        for t in range(T):
            g = _softmax(_matvec(x[t], p["gate_w"][t], p["gate_b"][t]))  # AllExpertGF gate over all experts
            v = [1.0] if m[t] == 1 else [float(a) for a in p["v"][t]]  # NativeExpertLF; fixed 1 when m_t = 1
            f = [sum(v[j] * E_task[t][j][k] for j in range(m[t])) for k in range(d)]
            f = [f[k] + sum(g[i] * E_all[i][k] for i in range(len(E_all))) for k in range(d)]
            new_x.append(f)
        if m_s and not last:
            gs = _softmax(_matvec(xs, p["sgate_w"], p["sgate_b"]))
            xs = [sum(gs[i] * E_all[i][k] for i in range(len(E_all))) for k in range(d)]
        x = new_x
    return x


@pytest.mark.parametrize(
    "m, m_s, kind",
    [([2, 2], 1, "adatt"), ([2, 2], 0, "adatt_sp"), ([1, 3], 2, "adatt"), ([1, 1], 1, "adatt")],
)
def test_matches_paper_equations(m, m_s, kind):
    T, dims = 2, [3, 2, 2]
    per_task = m if len(set(m)) > 1 else m[0]
    cfg = AdaTTConfig(type=kind, expert_dims=dims[1:], experts_per_task=per_task, shared_experts=max(m_s, 1))
    model = AdaTT(T, dims[0], cfg)
    params = _random_params(T, m, m_s, dims)
    _load(model, params, m, m_s)
    x = torch.randn(4, T, dims[0], generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert out.shape == (4, T, dims[-1])
    for b in range(4):
        ref = _reference(x[b].tolist(), params, m, m_s)
        torch.testing.assert_close(out[b], torch.tensor(ref), rtol=1e-5, atol=1e-5)


def test_single_expert_native_weight_is_fixed_one():
    model = AdaTT(2, 3, AdaTTConfig(type="adatt", expert_dims=[4], experts_per_task=1, shared_experts=1))
    level = model.levels[0]
    assert level.native is None
    assert not any("native" in name for name, _ in model.named_parameters())
    # ṽ_t is 1 at task t's single expert (columns: task 0, task 1, shared), 0 elsewhere.
    torch.testing.assert_close(level.native_weights(), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))

    mixed = AdaTT(2, 3, AdaTTConfig(type="adatt_sp", expert_dims=[4], experts_per_task=[1, 3]))
    assert mixed.levels[0].native.shape == (3,)  # only task 1's three weights are learned
    v = mixed.levels[0].native_weights()
    assert v[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert v[1, 0] == 0.0 and torch.all(v[1, 1:] > 0)


def test_gates_sum_to_one_and_fusion_matrix():
    model = AdaTT(3, 5, AdaTTConfig(type="adatt", expert_dims=[6, 4, 2], experts_per_task=2, shared_experts=2))
    x = torch.randn(7, 3, 5)
    gates = model.gate_weights(x)
    assert [g.shape for g in gates] == [(7, 4, 8), (7, 4, 8), (7, 3, 8)]  # no shared row at the last level
    for g in gates:
        torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:2]))
    fusion = model.fusion_matrix(x)
    assert [f.shape for f in fusion] == [(4, 4), (4, 4), (3, 4)]
    for f in fusion:
        torch.testing.assert_close(f.sum(-1), torch.ones(f.shape[0]))


def test_shared_unit_does_not_fuse_at_last_level():
    torch.manual_seed(0)
    model = AdaTT(2, 3, AdaTTConfig(type="adatt", expert_dims=[4, 4], experts_per_task=2, shared_experts=1))
    first, last = model.levels
    assert first.shared_gate is not None and last.shared_gate is None
    assert last.shared_expert_layer is not None  # shared experts still feed the task gates
    x = torch.randn(32, 2, 3, generator=torch.Generator().manual_seed(0))
    out = model(x)
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_adatt_sp_has_no_shared_unit():
    model = AdaTT(2, 3, AdaTTConfig(type="adatt_sp", expert_dims=[4, 4], experts_per_task=2, shared_experts=5))
    assert all(level.shared_expert_layer is None and level.shared_gate is None for level in model.levels)
    assert model.levels[0].num_experts == 4


def test_rejects_bad_expert_counts():
    with pytest.raises(ValueError, match="3 counts for 2 tasks"):
        AdaTT(2, 3, AdaTTConfig(expert_dims=[4], experts_per_task=[1, 2, 3]))
    with pytest.raises(ValueError, match="shared_experts"):
        AdaTT(2, 3, AdaTTConfig(type="adatt", expert_dims=[4], shared_experts=0))
