"""The MTL baselines against their papers' equations, written out with explicit loops:
Shared-Bottom, MMoE, ML-MMoE, PLE (CGC), cross-stitch; and the parameter budget of the
AdaTT paper's Table 5 setting for every fusion."""

import pytest
import torch

from fusionrec.models.baselines import PLE, CrossStitch, MMoE, SharedBottomFusion
from fusionrec.models.config import (
    AdaTTConfig,
    CrossStitchConfig,
    MMoEConfig,
    PLEConfig,
    SharedBottomFusionConfig,
)
from fusionrec.models.fusion import build_fusion
from fusionrec.models.towers import TaskTowers
from tests.test_models_adatt import expert, matvec, mix, random_expert, set_expert, set_gate, softmax

B, IN = 4, 3


def _x(T, seed=1):
    return torch.randn(B, T, IN, generator=torch.Generator().manual_seed(seed))


def _mean_rows(x):
    return [sum(row[i] for row in x) / len(x) for i in range(len(x[0]))]


def _check(model, reference, T, seed=1):
    x = _x(T, seed)
    out = model(x)
    assert out.shape[:2] == (B, T)
    for b in range(B):
        torch.testing.assert_close(out[b], torch.tensor(reference(x[b].tolist())), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- shared bottom


def test_shared_bottom_fusion_is_one_shared_mlp():
    T, dims = 3, [4, 2]
    model = SharedBottomFusion(T, IN, SharedBottomFusionConfig(hidden_dims=dims))
    g = torch.Generator().manual_seed(0)
    layers = random_expert(g, [IN, *dims])
    with torch.no_grad():
        for linear, (w, b) in zip(model.mlp.layers, layers):
            linear.weight.copy_(w.T)
            linear.bias.copy_(b)
    _check(model, lambda x: [expert(x[t], layers) for t in range(T)], T)  # h_t = MLP(x_t), one MLP
    assert SharedBottomFusion(T, IN, SharedBottomFusionConfig(hidden_dims=[])).out_dim == IN  # identity


# ----------------------------------------------------------------------------- MMoE / ML-MMoE


def _random_mmoe(T, counts, levels, seed=0):
    g = torch.Generator().manual_seed(seed)
    params, d_in = [], IN
    for l, (n, dims) in enumerate(zip(counts, levels)):
        rows = counts[l + 1] if l < len(levels) - 1 else T
        params.append(
            {
                "experts": [random_expert(g, [d_in, *dims]) for _ in range(n)],
                "gates": [(torch.randn(IN, n, generator=g), torch.randn(n, generator=g)) for _ in range(rows)],
            }
        )
        d_in = dims[-1]
    return params


def _load_mmoe(model: MMoE, params):
    for bank, gates, p in zip(model.experts, model.gates, params):
        for n, layers in enumerate(p["experts"]):
            set_expert(bank, n, layers)
        for r, (w, b) in enumerate(p["gates"]):
            set_gate(gates, r, w, b)


def _mmoe_reference(params, T):
    def run(x):
        s = _mean_rows(x)  # experts of level 1 read the task-neutral summary
        inputs = None
        for l, p in enumerate(params):
            if l == 0:
                E = [expert(s, layers) for layers in p["experts"]]
            else:
                E = [expert(inputs[j], layers) for j, layers in enumerate(p["experts"])]  # expert j reads h_j
            last = l == len(params) - 1
            conds = [x[t] for t in range(T)] if last else [s] * len(p["gates"])
            inputs = [mix(softmax(matvec(c, w, b)), E) for c, (w, b) in zip(conds, p["gates"])]
        return inputs

    return run


@pytest.mark.parametrize(
    "kind, counts, levels",
    [("mmoe", [4], [[3, 2]]), ("ml_mmoe", [3, 4], [[3], [2]]), ("ml_mmoe", [2, 3, 2], [[3], [2, 2], [2]])],
)
def test_mmoe_matches_equations(kind, counts, levels):
    T = 3
    cfg = MMoEConfig(type=kind, expert_dims=levels, num_experts=counts if len(set(counts)) > 1 else counts[0])
    model = MMoE(T, IN, cfg)
    params = _random_mmoe(T, counts, levels)
    _load_mmoe(model, params)
    _check(model, _mmoe_reference(params, T), T)
    gates = model.gate_weights(_x(T))
    assert [tuple(g.shape) for g in gates] == [
        (B, counts[l + 1] if l < len(counts) - 1 else T, counts[l]) for l in range(len(counts))
    ]
    for g in gates:
        torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:2]))
    assert model.fusion_matrices(_x(T)) is None  # experts belong to no task


def test_mmoe_is_one_level():
    with pytest.raises(ValueError, match="mmoe has one fusion level"):
        MMoEConfig(type="mmoe", expert_dims=[4, 2])
    with pytest.raises(ValueError, match="num_experts lists 3 counts for 2 levels"):
        MMoEConfig(type="ml_mmoe", expert_dims=[4, 2], num_experts=[1, 2, 3])


# ----------------------------------------------------------------------------- PLE


def _random_ple(T, m, m_s, levels, seed=0):
    g = torch.Generator().manual_seed(seed)
    params, d_in = [], IN
    counts = [*m, m_s]
    N = sum(counts)
    for l, dims in enumerate(levels):
        last = l == len(levels) - 1
        params.append(
            {
                "experts": [[random_expert(g, [d_in, *dims]) for _ in range(c)] for c in counts],
                # task gate t spans its own m_t experts then the m_s shared ones
                "task_gates": [(torch.randn(d_in, m[t] + m_s, generator=g), torch.randn(m[t] + m_s, generator=g))
                               for t in range(T)],
                "shared_gate": None if last else (torch.randn(d_in, N, generator=g), torch.randn(N, generator=g)),
            }
        )
        d_in = dims[-1]
    return params


def _load_ple(model: PLE, params):
    for level, p in zip(model.levels, params):
        n = 0
        for unit in p["experts"]:
            for layers in unit:
                set_expert(level.experts, n, layers)
                n += 1
        for t, (w, b) in enumerate(p["task_gates"]):
            set_gate(level.task_gates, t, w, b)
        assert (level.shared_gate is None) == (p["shared_gate"] is None)
        if p["shared_gate"] is not None:
            set_gate(level.shared_gate, 0, *p["shared_gate"])


def _ple_reference(params, T):
    def run(x):
        units = [list(x[t]) for t in range(T)] + [_mean_rows(x)]  # f_s^0 = task-neutral summary
        for p in params:
            E = [[expert(units[u], layers) for layers in p["experts"][u]] for u in range(T + 1)]
            fused = []
            for t, (w, b) in enumerate(p["task_gates"]):  # own experts + shared experts only
                fused.append(mix(softmax(matvec(units[t], w, b)), E[t] + E[T]))
            if p["shared_gate"] is not None:  # the shared gate spans every expert
                w, b = p["shared_gate"]
                fused.append(mix(softmax(matvec(units[T], w, b)), [e for unit in E for e in unit]))
            units = fused
        return units

    return run


@pytest.mark.parametrize(
    "m, m_s, levels",
    [([1, 1, 1], 1, [[2]]), ([2, 2, 2], 1, [[3], [2]]), ([1, 3, 2], 2, [[3, 2], [2]]), ([2, 1], 3, [[2], [2], [2]])],
)
def test_ple_matches_equations(m, m_s, levels):
    T = len(m)
    cfg = PLEConfig(expert_dims=levels, experts_per_task=m if len(set(m)) > 1 else m[0], shared_experts=m_s)
    model = PLE(T, IN, cfg)
    params = _random_ple(T, m, m_s, levels)
    _load_ple(model, params)
    _check(model, _ple_reference(params, T), T)


def test_ple_gates_and_fusion_matrices():
    T, m, m_s = 3, [2, 1, 2], 2
    model = PLE(T, IN, PLEConfig(expert_dims=[4, 3, 2], experts_per_task=m, shared_experts=m_s))
    gates = model.gate_weights(_x(T))
    assert [tuple(g.shape) for g in gates] == [(B, 4, 7), (B, 4, 7), (B, 3, 7)]  # shared gate dropped at the end
    owners = [0, 0, 1, 2, 2, 3, 3]
    for g in gates:
        torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:2]))
        for t in range(T):
            allowed = torch.tensor([o in (t, T) for o in owners])
            assert torch.all(g[:, t, ~allowed] == 0) and torch.all(g[:, t, allowed] > 0)
    fusion = model.fusion_matrices(_x(T))
    assert [tuple(f.shape) for f in fusion] == [(4, 4), (4, 4), (3, 4)]
    for f in fusion:
        torch.testing.assert_close(f.sum(-1), torch.ones(f.shape[0]))
        assert f[0, 1] == 0 and f[0, 2] == 0 and f[1, 0] == 0
    assert model.fusion_labels(["a", "b", "c"])[0] == (["a", "b", "c", "shared"], ["a", "b", "c", "shared"])
    assert model.fusion_labels(["a", "b", "c"])[2][0] == ["a", "b", "c"]


def test_ple_needs_shared_experts():
    with pytest.raises(ValueError, match="shared_experts >= 1"):
        PLEConfig(shared_experts=0)


# ----------------------------------------------------------------------------- cross-stitch


def test_cross_stitch_matches_equations_and_init():
    T, levels = 3, [[3], [2, 2]]
    model = CrossStitch(T, IN, CrossStitchConfig(expert_dims=levels, self_weight=0.8))
    torch.testing.assert_close(model.stitches[0], torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))
    g = torch.Generator().manual_seed(0)
    params, d_in = [], IN
    for dims in levels:
        params.append(
            {"columns": [random_expert(g, [d_in, *dims]) for _ in range(T)], "alpha": torch.randn(T, T, generator=g)}
        )
        d_in = dims[-1]
    with torch.no_grad():
        for bank, alpha, p in zip(model.columns, model.stitches, params):
            for t, layers in enumerate(p["columns"]):
                set_expert(bank, t, layers)
            alpha.copy_(p["alpha"])

    def reference(x):
        f = [list(x[t]) for t in range(T)]
        for p in params:
            h = [expert(f[t], p["columns"][t]) for t in range(T)]  # task t's column reads f_t only
            f = [mix(p["alpha"][t].tolist(), h) for t in range(T)]  # f_t = Σ_s α_{t,s} h_s
        return f

    _check(model, reference, T)
    mats = model.fusion_matrices(_x(T))
    torch.testing.assert_close(mats[1], params[1]["alpha"])


# ----------------------------------------------------------------------------- all fusions


ALL = [
    SharedBottomFusionConfig(hidden_dims=[4]),
    MMoEConfig(expert_dims=[[4, 3]], num_experts=3),
    MMoEConfig(type="ml_mmoe", expert_dims=[4, 3], num_experts=3),
    PLEConfig(expert_dims=[4, 3], experts_per_task=[1, 2, 1], shared_experts=2),
    CrossStitchConfig(expert_dims=[4, 3]),
    AdaTTConfig(expert_dims=[4, 3], experts_per_task=2, shared_experts=1),
    AdaTTConfig(type="adatt_sp", expert_dims=[4, 3], experts_per_task=[1, 2, 1]),
]


@pytest.mark.parametrize("cfg", ALL, ids=lambda c: c.type)
def test_identical_rows_shortcut_matches_averaging(cfg):
    """With a shared bottom (every row equal) the fast path equals the general one."""
    torch.manual_seed(0)
    general = build_fusion(3, IN, cfg, identical_rows=False)
    fast = build_fusion(3, IN, cfg, identical_rows=True)
    fast.load_state_dict(general.state_dict())
    x = torch.randn(B, 1, IN).expand(-1, 3, -1)
    torch.testing.assert_close(fast(x), general(x))


@pytest.mark.parametrize("cfg", ALL, ids=lambda c: c.type)
def test_gradients_reach_every_expert_and_gate(cfg):
    torch.manual_seed(0)
    fusion = build_fusion(3, IN, cfg)
    towers = TaskTowers(3, fusion.out_dim, [2])
    towers(fusion(torch.randn(16, 3, IN))).pow(2).sum().backward()
    for name, p in [*fusion.named_parameters(), *towers.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- parameter budget

# The AdaTT paper's Table 5 setting: 3 tasks, 2 fusion levels, 6 experts per level of dims
# [128, 64], towers [32]; here on a 128-wide bottom. "6 experts" is the total per level.
TABLE5 = {
    "adatt (1/task + 3 shared)": AdaTTConfig(expert_dims=[128, 64], experts_per_task=1, shared_experts=3),
    "adatt (2/task + 0 shared) = adatt_sp": AdaTTConfig(type="adatt_sp", expert_dims=[128, 64], experts_per_task=2),
    "ple (1/task + 3 shared)": PLEConfig(expert_dims=[128, 64], experts_per_task=1, shared_experts=3),
    "mmoe (6 experts [128, 64])": MMoEConfig(expert_dims=[[128, 64]], num_experts=6),
    "ml_mmoe (6 per level)": MMoEConfig(type="ml_mmoe", expert_dims=[128, 64], num_experts=6),
    "cross_stitch (1 column/task)": CrossStitchConfig(expert_dims=[128, 64]),
    "shared_bottom ([128, 64])": SharedBottomFusionConfig(hidden_dims=[128, 64]),
}


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_budget_table5():
    T, D = 3, 128
    rows = []
    for name, cfg in TABLE5.items():
        fusion = build_fusion(T, D, cfg)
        towers = TaskTowers(T, fusion.out_dim, [32])
        mixing = sum(
            p.numel() for n, p in fusion.named_parameters() if any(k in n for k in ("gate", "native", "stitch"))
        )
        rows.append((name, _count(fusion) - mixing, mixing, _count(towers), _count(fusion) + _count(towers)))
    header = f"{'fusion (T=3, D_in=128, towers [32])':<40}{'experts':>10}{'gates/mix':>11}{'towers':>9}{'total':>10}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, e, rest, tw, total in rows:
        print(f"{name:<40}{e:>10,}{rest:>11,}{tw:>9,}{total:>10,}")
    totals = {name.split()[0]: total for name, *_, total in rows}
    matched = [totals["adatt"], totals["ple"], totals["mmoe"]]
    assert max(matched) <= 1.10 * min(matched), totals
    assert max(total for *_, total in rows[:5]) <= 1.10 * min(total for *_, total in rows[:5])
