"""AdaTT against the paper's equations (Li et al., KDD 2023), written out with explicit loops."""

import math

import pytest
import torch

from fusionrec.models.adatt import AdaTT
from fusionrec.models.config import AdaTTConfig
from fusionrec.models.experts import ExpertBank, GateBank

# ----------------------------------------------------------------- plain-Python equations


def relu(v):
    return [max(0.0, a) for a in v]


def matvec(x, w, b):
    """x [in] (list), w [in, out] tensor, b [out] tensor → list [out]."""
    return [sum(x[i] * float(w[i, o]) for i in range(len(x))) + float(b[o]) for o in range(w.shape[1])]


def softmax(z):
    m = max(z)
    e = [math.exp(a - m) for a in z]
    s = sum(e)
    return [a / s for a in e]


def expert(x, layers):
    """An expert: Linear → ReLU for every (w, b) in ``layers``."""
    for w, b in layers:
        x = relu(matvec(x, w, b))
    return x


def mix(weights, vectors):
    """Σ_i weights[i] · vectors[i]."""
    return [sum(w * v[k] for w, v in zip(weights, vectors)) for k in range(len(vectors[0]))]


def random_expert(g, widths):
    """Random (w, b) layers for widths [in, h1, …, out]."""
    return [
        (torch.randn(a, b, generator=g) * 0.7, torch.randn(b, generator=g) * 0.7) for a, b in zip(widths, widths[1:])
    ]


def set_expert(bank: ExpertBank, n: int, layers) -> None:
    with torch.no_grad():
        for layer, (w, b) in zip(bank.mlp.layers, layers):
            layer.weight[n] = w
            layer.bias[n] = b


def set_gate(bank: GateBank, r: int, w, b) -> None:
    """Gate r's logits over its span: w [in, |span|], b [|span|]."""
    with torch.no_grad():
        if bank.ragged:
            bank.rows[r].weight.copy_(w.T)
            bank.rows[r].bias.copy_(b)
        else:
            bank.linear.weight[r] = w
            bank.linear.bias[r] = b


# ----------------------------------------------------------------- AdaTT in the paper's terms


def random_adatt(T, m, m_s, in_dim, levels, seed=0):
    """Per level: experts[u][j] (u = task, or T for shared), gate (w, b) per fusing unit, v[u]."""
    g = torch.Generator().manual_seed(seed)
    params, d_in = [], in_dim
    counts = m + ([m_s] if m_s else [])
    for l, dims in enumerate(levels):
        N = sum(counts)
        fusing = T + (1 if m_s and l < len(levels) - 1 else 0)
        params.append(
            {
                "experts": [[random_expert(g, [d_in, *dims]) for _ in range(c)] for c in counts],
                "gates": [(torch.randn(d_in, N, generator=g), torch.randn(N, generator=g)) for _ in range(fusing)],
                "v": [(torch.randn(c, generator=g) * 0.5 + 1.0).tolist() for c in counts],
            }
        )
        d_in = dims[-1]
    return params


def all_units_single(m, m_s):
    """Eq. 8's condition for v ≡ 1: every unit (each task, and the shared one) has one expert."""
    return all(c == 1 for c in m + ([m_s] if m_s else []))


def load_adatt(model: AdaTT, params, m, m_s, shared_residual=True, native_residual=True) -> None:
    """Write paper-term parameters into the module (experts ordered task 0…, task 1…, shared;
    learned native weights v_u for every fusing unit with a residual, unless every unit has one
    expert)."""
    T = len(m)
    with torch.no_grad():
        for level, p in zip(model.levels, params):
            n = 0
            for unit in p["experts"]:
                for layers in unit:
                    set_expert(level.experts, n, layers)
                    n += 1
            for r, (w, b) in enumerate(p["gates"]):
                set_gate(level.gates, r, w, b)
            learned = [
                v
                for r in range(len(p["gates"]))
                if not all_units_single(m, m_s) and (native_residual if r < T else shared_residual)
                for v in p["v"][r]
            ]
            assert (level.native is None) == (not learned)
            if learned:
                level.native.copy_(torch.tensor(learned))


def adatt_reference(x, params, m, m_s, shared_residual=True, native_residual=True):
    """Eqs. 4–10 for one sample: x is T input lists → T output lists."""
    T = len(m)
    units = [list(x[t]) for t in range(T)]
    if m_s:
        units.append([sum(x[t][i] for t in range(T)) / T for i in range(len(x[0]))])  # f_s^0: mean of tasks
    for l, p in enumerate(params):
        # eq. 4: unit u's experts read unit u's previous output only.
        E = [[expert(units[u], layers) for layers in p["experts"][u]] for u in range(len(units))]
        E_all = [e for unit in E for e in unit]
        fused = []
        for r, (w, b) in enumerate(p["gates"]):
            gate = softmax(matvec(units[r], w, b))  # eq. 10: AllExpertGF gate over ALL experts
            out = mix(gate, E_all)  # eq. 9
            if native_residual if r < T else shared_residual:
                # eq. 8: v_r learned, fixed to 1 only when every unit has a single expert
                v = [1.0] if all_units_single(m, m_s) else p["v"][r]
                out = [a + c for a, c in zip(out, mix(v, E[r]))]  # eq. 7
            fused.append(out)
        units = fused
    return units


@pytest.mark.parametrize(
    "m, m_s, kind, levels, shared_residual, native_residual",
    [
        ([2, 2], 1, "adatt", [[2], [2]], True, True),
        ([2, 2], 0, "adatt_sp", [[2], [2]], True, True),
        ([1, 3], 2, "adatt", [[2], [2]], True, True),
        ([1, 3], 2, "adatt", [[2], [2]], False, True),
        ([1, 1], 1, "adatt", [[2], [2]], True, True),
        ([2, 1, 3], 2, "adatt", [[3, 2], [2], [2]], True, True),  # 3 tasks, 3 levels, 2-layer experts
        ([1, 1, 1], 3, "adatt", [[2], [2]], True, True),  # Census: one expert per task + 3 shared
        ([1, 1], 0, "adatt_sp", [[2], [2]], True, True),  # every unit one expert: v ≡ 1
        ([1, 3], 2, "adatt", [[2], [2]], True, False),  # Table 6 ablation: no task residual
        ([1, 3], 2, "adatt", [[2], [2]], False, False),  # gates only
        ([2, 2], 0, "adatt_sp", [[2], [2]], True, False),
        ([1, 1], 1, "adatt", [[2], [2]], True, False),
    ],
)
def test_matches_paper_equations(m, m_s, kind, levels, shared_residual, native_residual):
    T, in_dim = len(m), 3
    per_task = m if len(set(m)) > 1 else m[0]
    cfg = AdaTTConfig(
        type=kind,
        expert_dims=[d if len(d) > 1 else d[0] for d in levels],
        experts_per_task=per_task,
        shared_experts=m_s or None,
        shared_residual=shared_residual,
        native_residual=native_residual,
    )
    model = AdaTT(T, in_dim, cfg)
    params = random_adatt(T, m, m_s, in_dim, levels)
    load_adatt(model, params, m, m_s, shared_residual, native_residual)
    x = torch.randn(4, T, in_dim, generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert out.shape == (4, T, levels[-1][-1])
    for b in range(4):
        ref = adatt_reference(x[b].tolist(), params, m, m_s, shared_residual, native_residual)
        torch.testing.assert_close(out[b], torch.tensor(ref), rtol=1e-5, atol=1e-5)


def test_single_expert_native_weight_is_fixed_one():
    model = AdaTT(2, 3, AdaTTConfig(type="adatt", expert_dims=[4], experts_per_task=1, shared_experts=1))
    level = model.levels[0]
    assert level.native is None
    assert not any("native" in name for name, _ in model.named_parameters())
    # ṽ_t is 1 at task t's single expert (columns: task 0, task 1, shared), 0 elsewhere.
    torch.testing.assert_close(level.native_weights(), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))

    # Eq. 8: with mixed counts every unit learns v, the single-expert task 0 included.
    mixed = AdaTT(2, 3, AdaTTConfig(type="adatt_sp", expert_dims=[4], experts_per_task=[1, 3]))
    assert mixed.levels[0].native.shape == (4,)  # task 0's one weight and task 1's three
    v = mixed.levels[0].native_weights()
    assert v[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # initialised at 1/m_0 = 1
    assert v[1, 0] == 0.0 and torch.all(v[1, 1:] > 0)


def test_unit_residual_when_one_expert_per_task():
    """m_t = 1: f_t = E_t + Σ_i g_{t,i} E_i exactly (no learned native weight)."""
    torch.manual_seed(0)
    model = AdaTT(3, 4, AdaTTConfig(type="adatt_sp", expert_dims=[5], experts_per_task=1))
    level = model.levels[0]
    x = torch.randn(6, 3, 4)
    experts = level.experts(x)  # [B, 3, 5], expert t is task t's
    gates = level.gates(x)
    expected = experts + torch.einsum("btn,bnd->btd", gates, experts)
    torch.testing.assert_close(model(x), expected)


def test_native_weights_learn_when_several_experts():
    torch.manual_seed(0)
    model = AdaTT(2, 4, AdaTTConfig(type="adatt", expert_dims=[6, 3], experts_per_task=[1, 3], shared_experts=2))
    before = [level.native.detach().clone() for level in model.levels]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(32, 2, 4), torch.randn(32, 2, 3)
    for _ in range(3):
        loss = (model(x)[:, 1] - target[:, 1]).pow(2).mean()  # train on task 1 only
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Level 1 learns task 0's 1 weight, task 1's 3 and the shared unit's 2; the last level
    # task 0's 1 and task 1's 3 (eq. 8: learned for every unit when the counts are mixed).
    assert [b.numel() for b in before] == [6, 4]
    for old, level in zip(before, model.levels):
        assert not torch.allclose(old, level.native.detach())


def test_gates_sum_to_one_over_all_experts_and_fusion_matrix():
    model = AdaTT(3, 5, AdaTTConfig(type="adatt", expert_dims=[6, 4, 2], experts_per_task=2, shared_experts=2))
    x = torch.randn(7, 3, 5)
    gates = model.gate_weights(x)
    assert [g.shape for g in gates] == [(7, 4, 8), (7, 4, 8), (7, 3, 8)]  # no shared row at the last level
    for g in gates:
        torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:2]))
        assert torch.all(g > 0)  # every gate spans every expert of every task
    fusion = model.fusion_matrices(x)
    assert [f.shape for f in fusion] == [(4, 4), (4, 4), (3, 4)]
    for f, g in zip(fusion, gates):
        torch.testing.assert_close(f.sum(-1), torch.ones(f.shape[0]))
        # column u = mass on unit u's two experts, batch-averaged
        torch.testing.assert_close(f[:, 0], g.mean(0)[:, 0:2].sum(-1))
        torch.testing.assert_close(f[:, 3], g.mean(0)[:, 6:8].sum(-1))
    rows, cols = model.fusion_labels(["a", "b", "c"])[0]
    assert rows == cols == ["a", "b", "c", "shared"]
    assert model.fusion_labels(["a", "b", "c"])[-1][0] == ["a", "b", "c"]
    experts = ["a/0", "a/1", "b/0", "b/1", "c/0", "c/1", "shared/0", "shared/1"]
    assert model.gate_labels(["a", "b", "c"])[0][1] == experts


def test_shared_unit_does_not_fuse_at_last_level():
    torch.manual_seed(0)
    model = AdaTT(2, 3, AdaTTConfig(type="adatt", expert_dims=[4, 4], experts_per_task=2, shared_experts=2))
    first, last = model.levels
    assert first.num_gates == 3 and last.num_gates == 2
    assert last.experts.num_experts == 6  # shared experts still feed the task gates
    assert first.native.numel() == 6 and last.native.numel() == 4  # no shared residual at the last level
    x = torch.randn(32, 2, 3, generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (32, 2, 4)
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_adatt_sp_has_no_shared_unit():
    model = AdaTT(2, 3, AdaTTConfig(type="adatt_sp", expert_dims=[4, 4], experts_per_task=2))
    assert all(level.experts.num_units == 2 and level.num_gates == 2 for level in model.levels)
    assert model.levels[0].experts.num_experts == 4


def test_rejects_bad_expert_counts():
    with pytest.raises(ValueError, match="3 counts for 2 tasks"):
        AdaTT(2, 3, AdaTTConfig(expert_dims=[4], experts_per_task=[1, 2, 3]))
    with pytest.raises(ValueError, match="shared_experts"):
        AdaTTConfig(type="adatt", expert_dims=[4], shared_experts=0)
    with pytest.raises(ValueError, match="adatt_sp has no shared experts"):
        AdaTTConfig(type="adatt_sp", shared_experts=2)
    with pytest.raises(ValueError, match="experts_per_task"):
        AdaTTConfig(experts_per_task=[1, 0])


# ------------------------------------------- eq. 8 by hand: learned v, its init, the residual switch


def _constant_experts(level, values):
    """Expert n outputs relu(values[n]) whatever its input (zero weights, bias = value); every
    gate logit 0, so AllExpertGF is the plain mean of the N experts."""
    with torch.no_grad():
        for layer in level.experts.mlp.layers:
            layer.weight.zero_()
            layer.bias.zero_()
        level.experts.mlp.layers[-1].bias.copy_(torch.tensor(values).view(-1, 1))
        level.gates.linear.weight.zero_()
        level.gates.linear.bias.zero_()


def test_learned_native_weights_at_init_by_hand():
    """m = [1, 2] (mixed counts): v_0 ∈ R^1 and v_1 ∈ R^2 are learned, initialised at 1/m_t.
    Experts E = [3 | 2, 6]: AllExpertGF = (3 + 2 + 6) / 3 = 11/3 for both tasks, so
    f_0 = 11/3 + 1·3 = 20/3 and f_1 = 11/3 + (2 + 6)/2 = 23/3."""
    model = AdaTT(2, 4, AdaTTConfig(type="adatt_sp", expert_dims=[1], experts_per_task=[1, 2]))
    level = model.levels[0]
    assert isinstance(level.native, torch.nn.Parameter) and level.native.tolist() == [1.0, 0.5, 0.5]
    torch.testing.assert_close(level.native_weights(), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]))
    _constant_experts(level, [3.0, 2.0, 6.0])
    out = model(torch.randn(5, 2, 4))
    torch.testing.assert_close(out[:, 0, 0], torch.full((5,), 20 / 3))
    torch.testing.assert_close(out[:, 1, 0], torch.full((5,), 23 / 3))
    # A learned v moves the output: v_0 = -0.5 gives f_0 = 11/3 - 1.5.
    with torch.no_grad():
        level.native[0] = -0.5
    torch.testing.assert_close(model(torch.randn(5, 2, 4))[:, 0, 0], torch.full((5,), 11 / 3 - 1.5))


def test_census_setting_learns_v_for_single_expert_task_units():
    """1 expert per task + 3 shared (the Census configuration): the counts are mixed, so every
    task unit learns its scalar v_t (init 1) and the fusing shared unit its 3 weights (init 1/3)."""
    model = AdaTT(3, 4, AdaTTConfig(type="adatt", expert_dims=[2, 2], experts_per_task=1, shared_experts=3))
    first, last = model.levels
    torch.testing.assert_close(first.native.detach(), torch.tensor([1.0, 1.0, 1.0, 1 / 3, 1 / 3, 1 / 3]))
    assert last.native.tolist() == [1.0, 1.0, 1.0]  # the shared unit does not fuse at the last level
    expected = torch.zeros(4, 6)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1.0
    expected[3, 3:] = 1 / 3
    torch.testing.assert_close(first.native_weights(), expected)


def test_native_residual_off_by_hand():
    """``native_residual: false`` (Table 6): f_t = AllExpertGF_t only. Same experts as above:
    f_0 = f_1 = 11/3, and the task units have no native parameter."""
    cfg = AdaTTConfig(type="adatt_sp", expert_dims=[1], experts_per_task=[1, 2], native_residual=False)
    model = AdaTT(2, 4, cfg)
    level = model.levels[0]
    assert level.native is None and not any("native" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(level.native_weights(), torch.zeros(2, 3))
    _constant_experts(level, [3.0, 2.0, 6.0])
    torch.testing.assert_close(model(torch.randn(5, 2, 4)), torch.full((5, 2, 1), 11 / 3))
    # All units single and the switch off: no fixed 1 either.
    single = AdaTT(2, 4, AdaTTConfig(type="adatt_sp", expert_dims=[1], experts_per_task=1, native_residual=False))
    _constant_experts(single.levels[0], [3.0, 2.0])
    torch.testing.assert_close(single(torch.randn(5, 2, 4)), torch.full((5, 2, 1), 2.5))
    # The shared unit keeps its own switch: only its row of ṽ is non-zero.
    shared = AdaTT(2, 4, AdaTTConfig(type="adatt", expert_dims=[2, 2], experts_per_task=1, shared_experts=2,
                                     native_residual=False))
    v = shared.levels[0].native_weights()
    assert torch.all(v[:2] == 0) and v[2].tolist() == [0.0, 0.0, 0.5, 0.5]
    assert shared.levels[1].native is None and torch.all(shared.levels[1].native_weights() == 0)
