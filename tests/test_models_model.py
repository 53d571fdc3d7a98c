"""The whole model on the demo schema: every bottom × fusion composes, trains (gradients
everywhere) and fx-traces; meta build; weighted pooling; introspection; the documented YAML."""

import re
from pathlib import Path

import pytest
import torch
import torchrec.fx
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from fusionrec.datasets.batch import Batch
from fusionrec.datasets.schema import FeatureSchema, Schema, SequenceFeature, SparseFeature, TableConfig, TaskConfig
from fusionrec.typedconfig import from_dict, load_yaml
from fusionrec.models import MultiTaskModel, build_model
from fusionrec.models.config import (
    AdaTTConfig,
    CrossStitchConfig,
    DTRNConfig,
    MMoEConfig,
    ModelConfig,
    PLEConfig,
    SharedBottomConfig,
    SharedBottomFusionConfig,
)
from fusionrec.models.embeddings import bag_table_configs, pad_sequence, pool_jagged, sequence_mask, sequence_table_configs

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
DOCS = REPO / "docs" / "models.md"


def demo(weighted: bool = False) -> tuple[Schema, ModelConfig]:
    """The demo schema and model; ``weighted`` gives ``user_tags`` (a mean-pooled id list) per-id weights."""
    data = load_yaml(DEMO)
    if weighted:
        tags = next(f for f in data["features"]["sparse"] if f["name"] == "user_tags")
        tags["weight_column"] = "user_tags_weight"
    schema = Schema(
        features=from_dict(FeatureSchema, data["features"], key="features"),
        tasks=[from_dict(TaskConfig, t, key="tasks") for t in data["tasks"]],
    )
    return schema, from_dict(ModelConfig, data["model"], key="model")


def make_batch(schema: Schema, batch_size: int = 6, seed: int = 0) -> Batch:
    """A hand-built batch: scalars have one id, lists 0..max_len ids, row 0's sequences are empty;
    with weighted pooling the ``sparse`` KJT carries weights (random in [0.5, 1.5) for features
    with a weight column, 1 for the others)."""
    g = torch.Generator().manual_seed(seed)
    features = schema.features

    def kjt(feats, weighted=False) -> KeyedJaggedTensor:
        lengths, values, weights = [], [], []
        for f in feats:
            rows = features.table(f.table).num_embeddings
            for b in range(batch_size):
                if isinstance(f, SequenceFeature):
                    n = min(b * 3, f.max_len)
                elif f.multi_valued:
                    n = b % ((f.max_len or 3) + 1)
                else:
                    n = 1
                lengths.append(n)
                values.append(torch.randint(0, rows, (n,), generator=g))
                has_weights = getattr(f, "weight_column", None) is not None
                weights.append(torch.rand(n, generator=g) + 0.5 if has_weights else torch.ones(n))
        return KeyedJaggedTensor.from_lengths_sync(
            keys=[f.name for f in feats],
            values=torch.cat(values) if values else torch.zeros(0, dtype=torch.long),
            lengths=torch.tensor(lengths, dtype=torch.int32),
            weights=torch.cat(weights) if weighted else None,
        )

    labels = torch.randint(0, 2, (batch_size, len(schema.tasks)), generator=g).float()
    for i, task in enumerate(schema.tasks):
        if task.type == "regression":
            labels[:, i] = torch.randn(batch_size, generator=g)
    return Batch(
        dense=torch.randn(batch_size, len(features.dense), generator=g),
        sparse=kjt(features.pooled_features, weighted=features.weighted_pooling),
        sequence=kjt(features.sequence_table_features),
        labels=labels,
        weights=torch.rand(batch_size, generator=g) + 0.5,
    )


def test_demo_forward_backward_reaches_every_parameter():
    schema, cfg = demo()
    torch.manual_seed(0)
    model = build_model(schema, cfg)
    assert isinstance(model, MultiTaskModel)
    batch = make_batch(schema)
    loss, out = model(batch)
    logits, preds, labels, weights = out.logits, out.predictions, out.labels, out.weights
    assert loss.shape == () and torch.isfinite(loss) and not out.loss.requires_grad
    assert logits.shape == preds.shape == labels.shape == (6, 3) and weights.shape == (6,)
    assert torch.all((preds > 0) & (preds < 1))
    torch.testing.assert_close(preds, torch.sigmoid(logits))
    assert labels is batch.labels and weights is batch.weights
    # The per-task losses the loop logs are the model's own: BCE per task, recomputed by hand
    # (demo tasks: click, like, convert; convert is trained where click = 1).
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    mask = torch.ones_like(labels)
    mask[:, 2] = (labels[:, 0] > 0.5).float()
    w = mask * weights.unsqueeze(1)
    expected = (w * bce).sum(0) / w.sum(0).clamp(min=1e-8)
    torch.testing.assert_close(out.task_losses, expected)
    assert not out.task_losses.requires_grad
    torch.testing.assert_close(out.loss, (torch.tensor([t.weight for t in schema.tasks]) * expected).sum())
    loss.backward()
    names = [n for n, _ in model.named_parameters()]
    for part in ("ebc.", "ec.", "tim.hyper", "tim.layers", "trm.", "fusion.levels.0.gates", "fusion.levels.1.gates",
                 "native", "fusion.levels.0.experts", "towers."):
        assert any(part in n for n in names), part
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("weighted", [False, True])
def test_fx_trace_matches_eager(weighted):
    schema, cfg = demo(weighted)
    torch.manual_seed(0)
    model = build_model(schema, cfg)
    batch = make_batch(schema, seed=3)
    gm = torchrec.fx.symbolic_trace(model)
    loss, out = model(batch)
    traced_loss, traced_out = gm(batch)
    torch.testing.assert_close(traced_loss, loss)
    torch.testing.assert_close(traced_out.logits, out.logits)

    # What TrainPipelineSparseDist does: embedding modules as leaves, fed straight from the batch.
    graph = torchrec.fx.Tracer(leaf_modules=["EmbeddingBagCollection", "EmbeddingCollection"]).trace(model)
    calls = {n.target: n for n in graph.nodes if n.op == "call_module"}
    assert calls["ebc"].args[0].op == "call_function" and calls["ebc"].args[0].args[1] == "sparse"
    assert calls["ec"].args[0].args[1] == "sequence"


FUSIONS = [
    SharedBottomFusionConfig(hidden_dims=[24, 12]),
    MMoEConfig(expert_dims=[[24, 12]], num_experts=4),
    MMoEConfig(type="ml_mmoe", expert_dims=[24, 12], num_experts=[4, 3]),
    PLEConfig(expert_dims=[24, 12], experts_per_task=[1, 2, 1], shared_experts=2),
    CrossStitchConfig(expert_dims=[24, 12]),
    AdaTTConfig(expert_dims=[24, 12], experts_per_task=1, shared_experts=3),
    AdaTTConfig(type="adatt_sp", expert_dims=[24, [16, 12]], experts_per_task=2),
]
GATED = {"mmoe", "ml_mmoe", "ple", "adatt", "adatt_sp"}
TASK_TO_TASK = {"ple", "cross_stitch", "adatt", "adatt_sp"}


@pytest.mark.parametrize("bottom", ["dtrn", "shared"])
@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f.type)
def test_every_fusion_composes_with_both_bottoms(bottom, fusion):
    schema, cfg = demo()
    model_cfg = ModelConfig(bottom=cfg.bottom if bottom == "dtrn" else SharedBottomConfig(), fusion=fusion)
    torch.manual_seed(0)
    model = build_model(schema, model_cfg)
    assert model.bottom.task_specific == (bottom == "dtrn")
    batch = make_batch(schema, batch_size=8, seed=1)
    loss, out = model(batch)
    assert out.logits.shape == (8, 3)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name

    gm = torchrec.fx.symbolic_trace(model)
    traced_loss, traced_out = gm(batch)
    torch.testing.assert_close(traced_loss, loss.detach())
    torch.testing.assert_close(traced_out.logits, out.logits)

    model.eval()
    mats, labels = model.fusion_matrices(batch), model.fusion_matrix_labels()
    gates, gate_labels = model.gate_matrices(batch), model.gate_matrix_labels()
    assert (mats is not None) == (fusion.type in TASK_TO_TASK) == (labels is not None)
    assert (gates is not None) == (fusion.type in GATED) == (gate_labels is not None)
    for matrices, names in [(mats, labels), (gates, gate_labels)]:
        for m, (rows, cols) in zip(matrices or [], names or []):
            assert m.shape == (len(rows), len(cols)) and not m.requires_grad
            if fusion.type != "cross_stitch":
                torch.testing.assert_close(m.sum(-1), torch.ones(len(rows)))
    if fusion.type in TASK_TO_TASK:
        assert labels[0][0][:3] == ["click", "like", "convert"]


def test_fusion_matrices_average_exactly_over_batches():
    """Batch means weighted by batch size give the mean over the union of the batches."""
    schema, cfg = demo()
    torch.manual_seed(0)
    model = build_model(schema, cfg).eval()
    a, b = make_batch(schema, 4, seed=1), make_batch(schema, 8, seed=2)
    whole = model.fusion.fusion_matrices(torch.cat([model.task_inputs(a), model.task_inputs(b)]).detach())
    parts = [(4 * x + 8 * y) / 12 for x, y in zip(model.fusion_matrices(a), model.fusion_matrices(b))]
    assert [tuple(m.shape) for m in parts] == [(4, 4), (3, 4)]  # level 1: tasks + shared unit; last: tasks
    for w, p in zip(whole, parts):
        torch.testing.assert_close(w, p)


def test_weighted_pooling_by_hand():
    tables = [
        TableConfig("user", 30, 4), TableConfig("tag", 10, 4), TableConfig("topic", 12, 4), TableConfig("item", 20, 4)
    ]
    sparse = [
        SparseFeature("user_id", "user"),
        SparseFeature("tags", "tag", multi_valued=True, pooling="mean", max_len=3, weight_column="tags_w"),
        SparseFeature("topics", "topic", multi_valued=True, max_len=3, weight_column="topics_w"),
        SparseFeature("item_id", "item"),
    ]
    schema = Schema(
        FeatureSchema(tables, dense=["x"], sparse=sparse, sequences=[SequenceFeature("views", "item", "view", 3)]),
        [TaskConfig("click")],
    )
    assert schema.features.weighted_pooling
    torch.manual_seed(0)
    model = build_model(schema, ModelConfig(fusion=AdaTTConfig(expert_dims=[4])))
    assert model.ebc.is_weighted()
    batch = make_batch(schema, batch_size=2)
    # keys in pooled_features order; unweighted user_id carries weight 1
    batch.sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "tags", "topics"],
        values=torch.tensor([3, 7, 1, 4, 2, 5, 6]),
        lengths=torch.tensor([1, 1, 2, 0, 1, 2], dtype=torch.int32),
        weights=torch.tensor([1.0, 1.0, 0.5, 2.0, 3.0, 1.0, -0.5]),
    )
    fields, _, _ = model.embed(batch)
    user, tag, topic = (model.ebc.embedding_bags[t].weight.detach() for t in ("user", "tag", "topic"))
    torch.testing.assert_close(fields[0], torch.stack([user[3], user[7]]))
    # mean pooling with weights: the weighted mean Σ w·e / Σ w (an empty row gives 0)
    torch.testing.assert_close(fields[1], torch.stack([(0.5 * tag[1] + 2.0 * tag[4]) / 2.5, torch.zeros(4)]))
    torch.testing.assert_close(fields[2], torch.stack([3.0 * topic[2], topic[5] - 0.5 * topic[6]]))
    loss, _ = model(batch)
    loss.backward()
    assert model.ebc.embedding_bags["tag"].weight.grad.abs().sum() > 0


DOC_FUSIONS = {"shared_bottom", "mmoe", "ml_mmoe", "ple", "cross_stitch", "adatt", "adatt_sp"}


def test_documented_model_configs_load_and_build():
    """Every ``model:`` YAML block in docs/models.md loads with the typed loader and builds."""
    import yaml

    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    models = [yaml.safe_load(b)["model"] for b in blocks if b.lstrip().startswith("model:")]
    assert {m["fusion"]["type"] for m in models} == DOC_FUSIONS
    schema, _ = demo()
    for data in models:
        cfg = from_dict(ModelConfig, data, key="model", source=str(DOCS))
        torch.manual_seed(0)
        model = build_model(schema, cfg)
        loss, _ = model(make_batch(schema, batch_size=2))
        assert torch.isfinite(loss), data


def test_meta_device_keeps_dense_modules_on_cpu():
    schema, cfg = demo()
    model = build_model(schema, cfg, device=torch.device("meta"))
    for name, p in model.named_parameters():
        expected = "meta" if name.startswith(("ebc.", "ec.")) else "cpu"
        assert p.device.type == expected, name
    assert all(b.device.type == "cpu" for _, b in model.named_buffers())


def _small_schema(with_bag=True, with_sequences=True, regression=False) -> Schema:
    sparse = [SparseFeature("item_id", "item"), SparseFeature("genres", "item", multi_valued=True, max_len=2)]
    if with_bag:
        sparse.append(SparseFeature("user_id", "user"))
    sequences = [SequenceFeature("views", "item", "view", 3)] if with_sequences else []
    tables = [TableConfig("item", 50, 4), TableConfig("user", 30, 4)]
    tasks = [TaskConfig("click"), TaskConfig("watch", type="regression" if regression else "binary", space="click")]
    return Schema(FeatureSchema(tables=tables, dense=["x", "y"], sparse=sparse, sequences=sequences), tasks)


@pytest.mark.parametrize(
    "schema_kwargs, bottom, fusion",
    [
        ({}, SharedBottomConfig(), AdaTTConfig(type="adatt_sp", expert_dims=[8], experts_per_task=[1, 2])),
        (
            {"with_bag": False, "regression": True},
            DTRNConfig(pooling="mean", num_heads=1),
            AdaTTConfig(expert_dims=[6, 4]),
        ),
        (
            {"with_sequences": False},
            DTRNConfig(target_feature="item_id"),
            AdaTTConfig(expert_dims=[6], experts_per_task=1),
        ),
    ],
)
def test_variants(schema_kwargs, bottom, fusion):
    torch.manual_seed(0)
    schema = _small_schema(**schema_kwargs)
    model = build_model(schema, ModelConfig(bottom=bottom, fusion=fusion, tower_dims=[5, 3], activation="silu"))
    assert (model.ebc is None) == (not schema.features.pooled_features)
    assert (model.ec is None) == (not schema.features.sequence_tables)
    batch = make_batch(schema, batch_size=4)
    loss, out = model(batch)
    assert torch.isfinite(loss) and out.logits.shape == (4, 2)
    if schema_kwargs.get("regression"):
        torch.testing.assert_close(out.predictions[:, 1], out.logits[:, 1])
    loss.backward()
    torchrec.fx.symbolic_trace(model)


def test_embedding_configs():
    schema, _ = demo()
    bags = bag_table_configs(schema.features)
    assert [(c.name, c.feature_names) for c in bags] == [
        ("user", ["user_id"]), ("category", ["item_category"]), ("tag", ["user_tags"])
    ]
    assert bags[2].pooling.name == "MEAN"
    (item,) = sequence_table_configs(schema.features)
    assert item.name == "item" and item.feature_names == ["click_seq", "like_seq", "buy_seq", "item_id"]

    conflicting = FeatureSchema(
        tables=[TableConfig("t", 10, 4)],
        sparse=[SparseFeature("a", "t"), SparseFeature("b", "t", multi_valued=True, pooling="mean", max_len=2)],
    )
    with pytest.raises(ValueError, match="bag table 't'.*a: sum, b: mean"):
        bag_table_configs(conflicting)
    mixed_dims = FeatureSchema(
        tables=[TableConfig("p", 10, 4), TableConfig("q", 10, 8)],
        sequences=[SequenceFeature("s1", "p", "click", 2), SequenceFeature("s2", "q", "buy", 2)],
    )
    with pytest.raises(ValueError, match="'p': 4, 'q': 8"):
        sequence_table_configs(mixed_dims)


def test_padding_and_pooling_helpers():
    values = torch.arange(10, dtype=torch.float32).view(5, 2)
    jt = JaggedTensor(values=values, lengths=torch.tensor([2, 0, 3]))
    padded, lengths = pad_sequence(jt, 4)
    assert padded.shape == (3, 4, 2) and lengths.tolist() == [2, 0, 3]
    torch.testing.assert_close(padded[0, :2], values[:2])
    assert torch.all(padded[0, 2:] == 0) and torch.all(padded[1] == 0)
    assert sequence_mask(lengths, 4).tolist() == [[True, True, False, False], [False] * 4, [True, True, True, False]]
    torch.testing.assert_close(pool_jagged(jt, "sum", 3), torch.tensor([[2.0, 4.0], [0.0, 0.0], [18.0, 21.0]]))
    torch.testing.assert_close(pool_jagged(jt, "mean", 3), torch.tensor([[1.0, 2.0], [0.0, 0.0], [6.0, 7.0]]))
