"""The whole model on the demo schema: forward/backward, fx tracing, meta build, variants."""

from pathlib import Path

import pytest
import torch
import torchrec.fx
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from datasets.batch import Batch
from datasets.schema import FeatureSchema, Schema, SequenceFeature, SparseFeature, TableConfig, TaskConfig
from fusionrec.typedconfig import from_dict, load_yaml
from models import MultiTaskModel, build_model
from models.config import AdaTTConfig, DTRNConfig, ModelConfig, SharedBottomConfig
from models.embeddings import bag_table_configs, pad_sequence, pool_jagged, sequence_mask, sequence_table_configs

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def demo() -> tuple[Schema, ModelConfig]:
    data = load_yaml(DEMO)
    schema = Schema(
        features=from_dict(FeatureSchema, data["features"], key="features"),
        tasks=[from_dict(TaskConfig, t, key="tasks") for t in data["tasks"]],
    )
    return schema, from_dict(ModelConfig, data["model"], key="model")


def make_batch(schema: Schema, batch_size: int = 6, seed: int = 0) -> Batch:
    """A hand-built batch: scalars have one id, lists 0..max_len ids, row 0's sequences are empty."""
    g = torch.Generator().manual_seed(seed)
    features = schema.features

    def kjt(feats) -> KeyedJaggedTensor:
        lengths, values = [], []
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
        return KeyedJaggedTensor.from_lengths_sync(
            keys=[f.name for f in feats],
            values=torch.cat(values) if values else torch.zeros(0, dtype=torch.long),
            lengths=torch.tensor(lengths, dtype=torch.int32),
        )

    labels = torch.randint(0, 2, (batch_size, len(schema.tasks)), generator=g).float()
    for i, task in enumerate(schema.tasks):
        if task.type == "regression":
            labels[:, i] = torch.randn(batch_size, generator=g)
    return Batch(
        dense=torch.randn(batch_size, len(features.dense), generator=g),
        sparse=kjt(features.pooled_features),
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
    loss, (detached, logits, preds, labels, weights) = model(batch)
    assert loss.shape == () and torch.isfinite(loss) and not detached.requires_grad
    assert logits.shape == preds.shape == labels.shape == (6, 3) and weights.shape == (6,)
    assert torch.all((preds > 0) & (preds < 1))
    torch.testing.assert_close(preds, torch.sigmoid(logits))
    loss.backward()
    names = [n for n, _ in model.named_parameters()]
    for part in ("ebc.", "ec.", "tim.hyper", "tim.layers", "trm.", "fusion.levels.0.task_gates", "shared_gate",
                 "native", "task_experts", "shared_expert_layer", "towers."):
        assert any(part in n for n in names), part
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_fx_trace_matches_eager():
    schema, cfg = demo()
    torch.manual_seed(0)
    model = build_model(schema, cfg)
    batch = make_batch(schema, seed=3)
    gm = torchrec.fx.symbolic_trace(model)
    loss, out = model(batch)
    traced_loss, traced_out = gm(batch)
    torch.testing.assert_close(traced_loss, loss)
    torch.testing.assert_close(traced_out[1], out[1])

    # What TrainPipelineSparseDist does: embedding modules as leaves, fed straight from the batch.
    graph = torchrec.fx.Tracer(leaf_modules=["EmbeddingBagCollection", "EmbeddingCollection"]).trace(model)
    calls = {n.target: n for n in graph.nodes if n.op == "call_module"}
    assert calls["ebc"].args[0].op == "call_function" and calls["ebc"].args[0].args[1] == "sparse"
    assert calls["ec"].args[0].args[1] == "sequence"


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
    assert torch.isfinite(loss) and out[1].shape == (4, 2)
    if schema_kwargs.get("regression"):
        torch.testing.assert_close(out[2][:, 1], out[1][:, 1])
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
