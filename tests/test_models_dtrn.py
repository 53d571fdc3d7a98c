"""DTRN (Liu et al., CIKM 2023): TIM and TRM against per-(task, behaviour) reference loops."""

import math

import pytest
import torch

from fusionrec.datasets.schema import FeatureSchema, Schema, SequenceFeature, SparseFeature, TableConfig, TaskConfig
from fusionrec.models.bottoms import SharedBottom, build_bottom
from fusionrec.models.config import DTRNConfig, ModelConfig
from fusionrec.models.dtrn import DTRN, TaskRefinementModule
from fusionrec.models.embeddings import sequence_mask
from fusionrec.models.transformer import conditional_layer_norm

B, K, D, DD, P = 3, 2, 8, 3, 2
BEHAVIORS = ["click", "buy", "click"]  # two sequences share the "click" type embedding
MAX_LENS = [5, 3, 4]


def _make(pooling="target", num_layers=2, seed=0, trm_form="senet"):
    torch.manual_seed(seed)
    cfg = DTRNConfig(
        condition_dim=4, hyper_hidden=6, num_layers=num_layers, num_heads=2, ffn_dim=10,
        pooling=pooling, target_feature="item" if pooling == "target" else None, trm_hidden=7,
        trm_form=trm_form,
    )
    return DTRN(K, DD, D, P, BEHAVIORS, MAX_LENS, target_index=1 if pooling == "target" else None, cfg=cfg)


def _inputs(lengths, seed=1, garbage=False):
    """Inputs with the given [M][B] lengths; padding is zero, or random when ``garbage``."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(B, DD, generator=g)
    fields = [torch.randn(B, D, generator=g) for _ in range(P)]
    sequences = []
    for m, n_max in enumerate(MAX_LENS):
        s = torch.randn(B, n_max, D, generator=g)
        junk = torch.randn(B, n_max, D, generator=torch.Generator().manual_seed(99 + m)) * 5
        for b in range(B):
            s[b, lengths[m][b] :] = junk[b, lengths[m][b] :] if garbage else 0.0
        sequences.append(s)
    return dense, fields, sequences, [torch.tensor(n) for n in lengths]


LENGTHS = [[5, 2, 0], [1, 3, 2], [4, 0, 3]]


def _layer_norm(z, eps=1e-5):
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    return (z - mu) / torch.sqrt(var + eps)


def _softmax_rows(s):
    e = torch.exp(s - s.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _reference_interest(model: DTRN, seq, n, target, k, m):
    """One (sample, task k, sequence m): encode the n valid items only, then pool."""
    tim = model.tim
    if n == 0:
        return torch.zeros(D)
    hyper = tim.hyper
    kind = list(dict.fromkeys(BEHAVIORS)).index(BEHAVIORS[m])
    cond = torch.cat([hyper.task_embedding[k], hyper.type_embedding[kind]])
    raw = hyper.out(torch.relu(hyper.hidden(cond))).view(len(tim.layers), 4, D)
    x = seq[:n] + tim.position.weight[torch.arange(n - 1, -1, -1)]  # newest item gets position 0
    for layer, p in zip(tim.layers, raw):
        g1, b1, g2, b2 = 1 + p[0], p[1], 1 + p[2], p[3]
        att = layer.attention
        qkv = att.qkv(x)
        q, kk, v = qkv[:, :D], qkv[:, D : 2 * D], qkv[:, 2 * D :]
        heads = []
        for h in range(att.num_heads):
            sl = slice(h * att.head_dim, (h + 1) * att.head_dim)
            w = _softmax_rows(q[:, sl] @ kk[:, sl].T / math.sqrt(att.head_dim))
            heads.append(w @ v[:, sl])
        a = att.out(torch.cat(heads, dim=1))
        hid = _layer_norm(x + a) * g1 + b1
        f = layer.ffn_out(torch.relu(layer.ffn_in(hid)))
        x = _layer_norm(hid + f) * g2 + b2
    if tim.target_proj is not None:
        qv = tim.target_proj(target)
        alpha = _softmax_rows((x @ qv / math.sqrt(D)).unsqueeze(0))[0]
        return alpha @ x
    return x.mean(0)


def _reference(model: DTRN, dense, fields, sequences, lengths):
    out = torch.zeros(B, K, model.out_dim)
    for b in range(B):
        shared = [model.dense_proj(dense[b])] + [f[b] for f in fields]
        target = fields[1][b]
        for k in range(K):
            interests = [
                _reference_interest(model, sequences[m][b], int(lengths[m][b]), target, k, m)
                for m in range(len(BEHAVIORS))
            ]
            task_fields = torch.stack(shared + interests)  # [F, D]
            l1, l2 = model.trm.mlp.layers
            if model.trm.form == "senet":
                # SENet: squeeze each field to its mean, excite over the F scalars, sigmoid weights
                z = torch.stack([sum(row) / D for row in task_fields])  # [F]
                hid = torch.relu(z @ l1.weight[k] + l1.bias[k])
                a = torch.sigmoid(hid @ l2.weight[k] + l2.bias[k])
            else:
                hid = torch.relu(task_fields.flatten() @ l1.weight[k] + l1.bias[k])
                a = 2 * torch.sigmoid(hid @ l2.weight[k] + l2.bias[k])
            out[b, k] = (a.unsqueeze(1) * task_fields).flatten()
    return out


@pytest.mark.parametrize("trm_form", ["senet", "context"])
@pytest.mark.parametrize("pooling", ["target", "mean"])
def test_matches_reference_loops(pooling, trm_form):
    model = _make(pooling, trm_form=trm_form)
    inputs = _inputs(LENGTHS)
    out = model(*inputs)
    assert out.shape == (B, K, (1 + P + len(BEHAVIORS)) * D) == (B, K, model.out_dim)
    with torch.no_grad():
        torch.testing.assert_close(out, _reference(model, *inputs), rtol=1e-4, atol=1e-5)


def test_padding_does_not_change_output():
    model = _make("target")
    clean = model(*_inputs(LENGTHS))
    dirty = model(*_inputs(LENGTHS, garbage=True))
    assert torch.isfinite(dirty).all()
    torch.testing.assert_close(clean, dirty, rtol=0, atol=1e-6)


def test_empty_sequences_give_zero_interest_and_finite_gradients():
    model = _make("target")
    inputs = _inputs([[0, 0, 0], [0, 0, 0], [0, 0, 0]])
    fields = model.task_fields(*inputs)  # [B, K, F, D], interests last
    assert torch.isfinite(fields).all()
    assert torch.all(fields[:, :, -len(BEHAVIORS) :] == 0)
    model(*inputs).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tasks_get_different_bottoms():
    model = _make("target")
    out = model(*_inputs(LENGTHS))
    assert not torch.allclose(out[:, 0], out[:, 1], atol=1e-3)
    interests = model.task_fields(*_inputs(LENGTHS))[:, :, -len(BEHAVIORS) :]
    assert not torch.allclose(interests[:, 0], interests[:, 1], atol=1e-4)


def test_conditional_layer_norm_by_hand():
    x = torch.tensor([[1.0, 2.0, 4.0, 7.0]])
    gamma = torch.tensor([2.0, 1.0, 0.5, -1.0])
    beta = torch.tensor([0.0, 1.0, -1.0, 3.0])
    mean = 3.5
    std = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2 + (7 - mean) ** 2) / 4 + 1e-5)
    expected = [(v - mean) / std * g + b for v, g, b in zip([1, 2, 4, 7], gamma.tolist(), beta.tolist())]
    torch.testing.assert_close(conditional_layer_norm(x, gamma, beta), torch.tensor([expected]))


def test_hypernetwork_conditions_on_task_and_behaviour_type():
    model = _make("target")
    hyper = model.tim.hyper
    assert hyper.type_embedding.shape[0] == 2  # click, buy
    params = hyper()  # [layers, 4, K, M, D]
    assert params.shape == (2, 4, K, len(BEHAVIORS), D)
    # Sequences 0 and 2 are both "click": same γ/β; "buy" and other tasks differ.
    torch.testing.assert_close(params[:, :, :, 0], params[:, :, :, 2])
    assert not torch.allclose(params[:, :, :, 0], params[:, :, :, 1])
    assert not torch.allclose(params[:, :, 0], params[:, :, 1])
    # Identity-centred at init: γ ≈ 1, β ≈ 0.
    assert (params[:, 0] - 1).abs().max() < 0.5 and params[:, 1].abs().max() < 0.5


def test_every_parameter_gets_a_gradient():
    model = _make("target")
    model(*_inputs(LENGTHS)).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _schema(dims=(8, 8, 8), target_table="item"):
    tables = [TableConfig("user", 100, dims[0]), TableConfig("item", 100, dims[1]), TableConfig("tag", 10, dims[2])]
    features = FeatureSchema(
        tables=tables,
        dense=["a"],
        sparse=[
            SparseFeature("user_id", "user"),
            SparseFeature("item_id", target_table),
            SparseFeature("tags", "tag", multi_valued=True, pooling="mean", max_len=3),
        ],
        sequences=[SequenceFeature("clicks", "item", "click", 4)],
    )
    return Schema(features=features, tasks=[TaskConfig("ctr"), TaskConfig("cvr", space="ctr")])


def test_build_bottom_checks_dims_and_target():
    dtrn = ModelConfig(bottom=DTRNConfig(target_feature="item_id"))
    bottom = build_bottom(_schema(), dtrn)
    assert isinstance(bottom, DTRN) and bottom.out_dim == (1 + 3 + 1) * 8
    with pytest.raises(ValueError, match=r"'item': 8.*'tag': 4|'tag': 4"):
        build_bottom(_schema(dims=(8, 8, 4)), dtrn)
    with pytest.raises(ValueError, match="no sequence"):
        build_bottom(_schema(target_table="user"), dtrn)
    with pytest.raises(ValueError, match="not a sparse feature"):
        build_bottom(_schema(), ModelConfig(bottom=DTRNConfig(target_feature="nope")))
    shared = build_bottom(_schema(dims=(8, 8, 4)), ModelConfig())
    assert isinstance(shared, SharedBottom) and shared.out_dim == 1 + 8 + 8 + 4 + 8


def test_shared_bottom_masked_mean():
    bottom = SharedBottom(2, 1, [2], [2])
    dense, field = torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0, 4.0], [5.0, 6.0]])
    seq = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    out = bottom(dense, [field], [seq], [torch.tensor([2, 0])])
    expected = torch.tensor([[1.0, 3.0, 4.0, 2.0, 3.0], [2.0, 5.0, 6.0, 0.0, 0.0]])
    assert out.shape == (2, 2, 5)
    torch.testing.assert_close(out[:, 0], expected)
    torch.testing.assert_close(out[:, 1], expected)


def _same_sequence_everywhere(seed=5):
    """Inputs whose M sequences hold the same items (lengths [3, 1, 0] over the batch)."""
    g = torch.Generator().manual_seed(seed)
    dense, fields, _, _ = _inputs(LENGTHS)
    items = torch.randn(B, 3, D, generator=g)
    n = [3, 1, 0]
    for b in range(B):
        items[b, n[b] :] = 0.0
    sequences = [torch.cat([items, torch.zeros(B, L - 3, D)], dim=1) for L in MAX_LENS]
    lengths = [torch.tensor(n) for _ in MAX_LENS]
    return dense, fields, sequences, lengths


def _interests(model, inputs):
    return model.task_fields(*inputs)[:, :, -len(BEHAVIORS) :]  # [B, K, M, D]


@pytest.mark.parametrize("pooling", ["target", "mean"])
def test_hypernetwork_is_the_only_task_and_type_conditioning(pooling):
    """Same sequence in every slot: the K·M encodings differ only through the hypernetwork."""
    model = _make(pooling)
    inputs = _same_sequence_everywhere()
    with torch.no_grad():
        differ = _interests(model, inputs)
        assert not torch.allclose(differ[:2, 0, 0], differ[:2, 1, 0], atol=1e-4)  # tasks differ
        assert not torch.allclose(differ[:2, 0, 0], differ[:2, 0, 1], atol=1e-4)  # types differ

        # (a) equal conditions: every (task, type) pair gets the same γ/β.
        hyper = model.tim.hyper
        hyper.task_embedding.copy_(hyper.task_embedding[:1].expand_as(hyper.task_embedding))
        hyper.type_embedding.copy_(hyper.type_embedding[:1].expand_as(hyper.type_embedding))
        equal = _interests(model, inputs)
        # (b) hypernetwork output zeroed: γ = 1, β = 0 everywhere.
        model = _make(pooling)
        model.tim.hyper.out.weight.zero_()
        model.tim.hyper.out.bias.zero_()
        zeroed = _interests(model, inputs)
    for interests in (equal, zeroed):
        reference = interests[:, :1, :1].expand_as(interests)
        torch.testing.assert_close(interests, reference, rtol=0, atol=1e-6)
        assert torch.all(interests[2] == 0)  # the empty row
        assert interests[:2].abs().sum() > 0


def test_trm_gate_scale():
    model = _make("mean", trm_form="context")
    fields = model.task_fields(*_inputs(LENGTHS))
    weights = model.trm.field_weights(fields)
    assert weights.shape == (B, K, model.num_fields) and torch.all((weights > 0) & (weights < 2))
    model.trm.gate_scale = 1.0
    torch.testing.assert_close(model.trm.field_weights(fields), weights / 2)
    with pytest.raises(ValueError, match="trm_gate_scale"):
        DTRNConfig(pooling="mean", trm_gate_scale=0.0)


def test_trm_senet_by_hand():
    """SENet TRM, one task, F = 2 fields of D = 2: e_1 = [1, 3], e_2 = [-2, 0].
    Squeeze: z = [2, -1]. Excitation with W_1 = [1, 1]ᵀ, b_1 = 0: h = relu(2 - 1) = 1; W_2 =
    [1, -1], b_2 = [0, 0.5]: a = [σ(1), σ(-0.5)]. Output [σ(1)·1, σ(1)·3, σ(-0.5)·(-2), 0]."""
    trm = TaskRefinementModule(1, 2, 2, hidden=1)
    assert trm.form == "senet" and trm.gate_scale == 1.0
    l1, l2 = trm.mlp.layers
    assert l1.weight.shape == (1, 2, 1) and l2.weight.shape == (1, 1, 2)  # reads F scalars, not F·D values
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[[1.0], [1.0]]]))
        l1.bias.zero_()
        l2.weight.copy_(torch.tensor([[[1.0, -1.0]]]))
        l2.bias.copy_(torch.tensor([[0.0, 0.5]]))
    fields = torch.tensor([[[[1.0, 3.0], [-2.0, 0.0]]]])  # [B=1, K=1, F=2, D=2]
    s1, s2 = 1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(0.5))
    torch.testing.assert_close(trm.field_weights(fields), torch.tensor([[[s1, s2]]]))
    torch.testing.assert_close(trm(fields), torch.tensor([[[s1 * 1, s1 * 3, s2 * -2, 0.0]]]))
    # Context aware: changing field 2 alone changes field 1's weight (h = relu(2 + z_2)).
    other = fields.clone()
    other[..., 1, :] = torch.tensor([1.0, 1.0])  # z_2 = 1 → h = 3, a_1 = σ(3)
    torch.testing.assert_close(trm.field_weights(other)[0, 0, 0], torch.tensor(1 / (1 + math.exp(-3.0))))
    # Only a field's mean reaches the excitation: [1, 3] and [2, 2] get the same weights.
    same_mean = fields.clone()
    same_mean[..., 0, :] = torch.tensor([2.0, 2.0])
    torch.testing.assert_close(trm.field_weights(same_mean), trm.field_weights(fields))


def test_trm_form_defaults():
    senet, context = DTRNConfig(pooling="mean"), DTRNConfig(pooling="mean", trm_form="context")
    assert senet.trm_form == "senet" and senet.trm_scale == 1.0 and context.trm_scale == 2.0
    assert DTRNConfig(pooling="mean", trm_gate_scale=3.0).trm_scale == 3.0
    model = _make("mean")
    assert model.trm.form == "senet" and model.trm.gate_scale == 1.0
    fields = model.task_fields(*_inputs(LENGTHS))
    weights = model.trm.field_weights(fields)
    assert weights.shape == (B, K, model.num_fields) and torch.all((weights > 0) & (weights < 1))
    with pytest.raises(ValueError, match="senet or context"):
        TaskRefinementModule(1, 2, 2, hidden=1, form="squeeze")


# --------------------------------------------------------------- per-length TIM = padded TIM


def _random_inputs(batch, max_lens, seed, garbage=True):
    """Random DTRN inputs: lengths drawn in 0..max_len with empty and full rows forced in, and
    random (not zero) values past each length."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, DD, generator=g)
    fields = [torch.randn(batch, D, generator=g) for _ in range(P)]
    sequences, lengths = [], []
    for m, n_max in enumerate(max_lens):
        n = torch.randint(0, n_max + 1, (batch,), generator=g)
        n[m % batch] = 0
        n[(m + 1) % batch] = n_max
        s = torch.randn(batch, n_max, D, generator=g)
        if not garbage:
            s = s * sequence_mask(n, n_max).unsqueeze(-1)
        sequences.append(s)
        lengths.append(n)
    return dense, fields, sequences, lengths


def _forward_and_grads(model, inputs):
    dense, fields, sequences, lengths = inputs
    leaves = [t.clone().requires_grad_(True) for t in [dense, *fields, *sequences]]
    out = model(leaves[0], leaves[1 : 1 + P], leaves[1 + P :], lengths)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    model.zero_grad()
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads, [t.grad for t in leaves]


@pytest.mark.parametrize("pooling", ["target", "mean"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("overhead", [0, None, 10**9], ids=["exact-lengths", "default", "one-bucket"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_length_tim_equals_padded(pooling, num_layers, overhead, seed):
    """Forward outputs, every parameter gradient and the input gradients agree; 0 overhead
    gives one bucket per length (no mask), a huge one a single masked bucket.

    Each tensor agrees to ``tol`` times its largest entry (at least 1): float32 1e-6 (a
    parameter gradient sums over the whole batch, entries up to ~20 here); float64 1e-12, so
    the two differ only by summation order."""
    for dtype, tol in [(torch.float32, 1e-6), (torch.float64, 1e-12)]:
        model = _make(pooling, num_layers=num_layers, seed=seed).to(dtype)
        if overhead is not None:
            model.tim.bucket_overhead = overhead
        inputs = _random_inputs(16, MAX_LENS, seed=seed)
        inputs = (inputs[0].to(dtype), [f.to(dtype) for f in inputs[1]], [s.to(dtype) for s in inputs[2]], inputs[3])
        model.tim.per_length = False
        padded = _forward_and_grads(model, inputs)
        model.tim.per_length = True
        per_length = _forward_and_grads(model, inputs)
        def close(actual, expected, msg=None):
            scale = max(1.0, expected.abs().max().item())
            torch.testing.assert_close(actual, expected, rtol=0, atol=tol * scale, msg=msg)

        close(per_length[0], padded[0])
        assert padded[1].keys() == per_length[1].keys()
        for name, g in padded[1].items():
            close(per_length[1][name], g, msg=name)
        for a, b in zip(per_length[2], padded[2]):
            close(a, b)
        for m, n in enumerate(inputs[3]):  # no gradient reaches the padding
            assert torch.all(per_length[2][1 + P + m][~sequence_mask(n, MAX_LENS[m])] == 0)


def test_per_length_tim_is_the_cpu_default_and_all_empty_falls_back():
    model = _make("target")
    assert model.tim.per_length is None  # auto: per length on CPU, padded elsewhere
    inputs = _random_inputs(4, MAX_LENS, seed=3)
    empty = (inputs[0], inputs[1], inputs[2], [torch.zeros_like(n) for n in inputs[3]])
    out = model(*empty)
    assert torch.all(model.task_fields(*empty)[:, :, -len(BEHAVIORS) :] == 0)
    out.sum().backward()
    for name, p in model.named_parameters():  # every parameter stays in the graph
        assert p.grad is not None, name


def test_length_buckets_is_optimal_and_covers_every_length():
    import itertools

    from fusionrec.models.dtrn import length_buckets

    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        counts = torch.randint(0, 4, (9,), generator=g).tolist()
        overhead = [0, 3, 8, 50][trial % 4]
        buckets = length_buckets(counts, overhead)
        present = [length for length in range(1, 9) if counts[length]]
        covered = [length for lo, hi in buckets for length in range(lo + 1, hi + 1) if counts[length]]
        assert covered == present and all(counts[hi] for _, hi in buckets)

        def cost(bs):
            return sum(sum(counts[lo + 1 : hi + 1]) * hi + overhead for lo, hi in bs)

        best = math.inf  # brute force over every split of the present lengths
        for k in range(len(present)):
            for cuts in itertools.combinations(range(1, len(present)), k):
                ends = [present[c - 1] for c in cuts] + present[-1:]
                starts = [0] + ends[:-1]
                best = min(best, cost(list(zip(starts, ends))))
        assert cost(buckets) == (best if present else 0)
    assert length_buckets([5, 0, 0]) == []


def test_per_length_tim_fx_traces():
    """Traced as ``MultiTaskModel`` calls it (Python lists of tensors): one opaque TIM call,
    equal to eager."""
    import torchrec.fx

    class Caller(torch.nn.Module):
        def __init__(self, dtrn):
            super().__init__()
            self.dtrn = dtrn

        def forward(self, dense, f0, f1, s0, s1, s2, n0, n1, n2):
            return self.dtrn(dense, [f0, f1], [s0, s1, s2], [n0, n1, n2])

    caller = Caller(_make("target"))
    dense, fields, sequences, lengths = _random_inputs(8, MAX_LENS, seed=4)
    args = (dense, *fields, *sequences, *lengths)
    gm = torchrec.fx.symbolic_trace(caller)
    assert any(n.op == "call_function" and n.target.__name__ == "_interests" for n in gm.graph.nodes)
    torch.testing.assert_close(gm(*args), caller(*args), rtol=0, atol=0)
