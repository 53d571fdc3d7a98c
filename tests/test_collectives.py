"""Every collective of fusionrec's own runs on a tensor of its process group's device.

NCCL reduces only CUDA tensors: a counter built on the host and handed to ``all_reduce`` works
under gloo and raises under NCCL at world size >= 2. No GPU runs here, so this is kept true by
construction and checked on the CPU: every tensor collective goes through
``pipeline.distributed.all_reduce``, which stages a tensor on ``group_device()``; object
collectives (``all_gather_object``) pick the device themselves.
"""

from __future__ import annotations

import ast

import pytest
import torch

from tests.launch import REPO

TENSOR_COLLECTIVES = {
    "all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce", "reduce_scatter",
    "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "scatter",
}
OBJECT_COLLECTIVES = {"all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list"}


def _dist_calls(path):
    """(line, name) of every ``dist.<collective>(...)`` / ``torch.distributed.<collective>(...)`` call."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if owner_name in ("dist", "distributed") and node.func.attr in TENSOR_COLLECTIVES | OBJECT_COLLECTIVES:
                yield node.lineno, node.func.attr


def test_tensor_collectives_only_in_the_staging_helper():
    offenders = []
    for folder in ("datasets", "models", "sharding", "pipeline", "core"):
        for path in (REPO / folder).glob("*.py"):
            for line, name in _dist_calls(path):
                if name in TENSOR_COLLECTIVES and path.name != "distributed.py":
                    offenders.append(f"{path.relative_to(REPO)}:{line} dist.{name}")
    assert not offenders, "tensor collectives outside pipeline.distributed.all_reduce: " + ", ".join(offenders)


def test_all_reduce_stages_a_host_tensor_on_the_group_device(monkeypatch):
    """Under a (fake) NCCL group, a CPU tensor reaches ``dist.all_reduce`` only as a copy on the
    group's device, and the reduced value comes back into the caller's tensor."""
    import torch.distributed as dist

    from fusionrec.pipeline import distributed

    seen = []

    class Done:
        def wait(self) -> None:
            pass

    def fake_all_reduce(t, op=None, async_op=False):  # dist.all_reduce's signature
        seen.append(t.device)
        t.mul_(2)  # what a 2-rank SUM of equal values gives
        return Done() if async_op else None

    monkeypatch.setattr(distributed, "is_multi_rank", lambda: True)
    monkeypatch.setattr(distributed, "group_device", lambda: torch.device("meta"))
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    counts = torch.tensor([1.0, 2.0])
    with pytest.raises(NotImplementedError):  # meta tensors hold no data to copy back: the copy was attempted
        distributed.all_reduce(counts)
    assert seen == [torch.device("meta")]

    seen.clear()
    monkeypatch.setattr(distributed, "group_device", lambda: torch.device("cpu"))
    out = distributed.all_reduce(counts)
    assert out is counts and seen == [torch.device("cpu")]
    torch.testing.assert_close(counts, torch.tensor([2.0, 4.0]))
