"""The model trains: on one process it fits a learnable signal; on 2 CPU ranks, sharded under
DistributedModelParallel inside TorchRec's TrainPipelineSparseDist, it trains exactly as the
unsharded model does on the same batches."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fusionrec.models import build_model
from tests.test_models_model import demo, make_batch


def _learnable_batch(schema, batch_size, seed):
    """Demo batch whose labels are functions of the inputs: click ← dense[0] > 0,
    like ← candidate item id is even, convert ← click and dense[1] > 0."""
    batch = make_batch(schema, batch_size, seed)
    item = batch.sequence.to_dict()["item_id"].values()
    click = (batch.dense[:, 0] > 0).float()
    like = (item % 2 == 0).float()
    convert = click * (batch.dense[:, 1] > 0).float()
    batch.labels = torch.stack([click, like, convert], dim=1)
    batch.weights = torch.ones(batch_size)
    return batch


def test_learns_a_signal_that_generalises():
    schema, cfg = demo()
    for table in schema.features.tables:
        table.num_embeddings = 64  # few ids, so each is seen often
    torch.manual_seed(0)
    model = build_model(schema, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train = [_learnable_batch(schema, 64, seed) for seed in range(8)]
    held_out = [_learnable_batch(schema, 64, seed) for seed in range(100, 104)]

    def held_out_loss() -> float:
        with torch.no_grad():
            return sum(float(model(b)[0]) for b in held_out) / len(held_out)

    before = held_out_loss()
    for step in range(80):
        loss, _ = model(train[step % len(train)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.5 * before, (before, after)


def _unsharded_reference(schema, cfg, checkpoint: str, batches_per_rank, sparse_lr: float, dense_lr: float):
    """The losses the 2-rank job must see, from one unsharded model loaded from the job's initial
    weights (a DCP checkpoint) and trained by hand on the same batches: DDP averages the dense
    gradients over the ranks, and TorchRec's embedding collectives divide the table gradients by
    the world size to match (``comm_ops`` gradient division), so both see the mean of the ranks'
    losses; → [rank][step] losses before each step's update."""
    import torch.distributed.checkpoint as dcp

    model = build_model(schema, cfg)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=checkpoint)
    model.load_state_dict(state["model"])
    tables = [*model.ebc.parameters(), *model.ec.parameters()]
    table_ids = {id(p) for p in tables}
    dense = [p for p in model.parameters() if id(p) not in table_ids]
    sparse_opt = torch.optim.SGD(tables, lr=sparse_lr)
    dense_opt = torch.optim.SGD(dense, lr=dense_lr)
    losses = [[] for _ in batches_per_rank]
    for step in range(len(batches_per_rank[0])):
        total = 0
        for rank, batches in enumerate(batches_per_rank):
            loss, _ = model(batches[step])
            losses[rank].append(float(loss))
            total = total + loss
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        (total / len(batches_per_rank)).backward()
        sparse_opt.step()
        dense_opt.step()
    return losses


def _worker(rank: int, world_size: int, port: int, results, weighted: bool = False, tmp: str = "") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
        from torchrec.optim.keyed import KeyedOptimizerWrapper
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        schema, cfg = demo(weighted)
        torch.manual_seed(0)
        model = build_model(schema, cfg, device=torch.device("meta"))
        sparse_params = [*model.ebc.parameters(), *model.ec.parameters()]
        apply_optimizer_in_backward(torch.optim.SGD, sparse_params, {"lr": 2.0})  # large, so table updates move the loss
        constraints = {
            "user": ParameterConstraints(sharding_types=["column_wise"]),
            "item": ParameterConstraints(sharding_types=["row_wise"]),
            "category": ParameterConstraints(sharding_types=["table_wise"]),
            "tag": ParameterConstraints(sharding_types=["table_wise"]),
        }
        sharders = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world_size, compute_device="cpu"), constraints=constraints
        )
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=sharders)
        dense_opt = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(dmp.named_parameters())), lambda p: torch.optim.SGD(p, lr=0.1)
        )
        import torch.distributed.checkpoint as dcp

        dcp.save({"model": dmp.state_dict()}, checkpoint_id=f"{tmp}/initial")
        pipeline = TrainPipelineSparseDist(dmp, dense_opt, torch.device("cpu"))
        # Each rank's two batches alternate, so the table rows a step updates are looked up again.
        per_rank = [[make_batch(schema, 16, seed=100 * r + i % 2) for i in range(6)] for r in range(world_size)]
        batches = iter(per_rank[rank])
        losses = []
        while True:
            try:
                out = pipeline.progress(batches)
            except StopIteration:
                break
            losses.append(float(out.loss))
            assert out.logits.shape == (16, 3)
        pipelined = sorted(type(m).__name__ for m in getattr(pipeline, "_pipelined_modules", []))
        # What the evaluator does: the inner model's introspection, on every rank (collective lookups).
        # The pipeline rewrote the embedding modules' forward; detach() restores it.
        dmp = pipeline.detach()
        dmp.eval()
        inner = dmp.module
        matrices = inner.fusion_matrices(make_batch(schema, 8, seed=7 + rank))
        labels = inner.fusion_matrix_labels()
        for m, (rows, cols) in zip(matrices, labels):
            assert m.shape == (len(rows), len(cols))
            torch.testing.assert_close(m.sum(-1), torch.ones(len(rows)))
        torch.manual_seed(0)
        expected = _unsharded_reference(schema, cfg, f"{tmp}/initial", per_rank, 2.0, 0.1)[rank]
        results[rank] = (losses, expected, pipelined, [tuple(m.shape) for m in matrices])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted_pooling"])
def test_sharded_training_equals_unsharded_training(weighted, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, results, weighted, str(tmp_path)), nprocs=2)
    for rank in range(2):
        losses, expected, pipelined, shapes = results[rank]
        assert len(losses) == 6
        # Step 0 checks the forward (same weights, same batch); later steps check that the fused
        # sparse updates and the DDP-averaged dense updates are those of plain training (SGD with
        # large steps for both: Adam would hide a gradient off by the world-size factor, and
        # small table steps would hide wrong table updates).
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-5, atol=1e-5)
        assert losses[0] != losses[-1]
        assert pipelined == ["ShardedEmbeddingBagCollection", "ShardedEmbeddingCollection"]
        assert shapes == [(4, 4), (3, 4)]  # demo AdaTT: tasks + shared unit, then tasks only
