"""Process-group set-up for torchrun (one node or many) and for a plain single process.

Under torchrun the workers join the elastic agent's TCPStore themselves, inside a key space
named after ``TORCHELASTIC_RESTART_COUNT``: after a worker dies and the agent restarts the
group, the new attempt must not see the dead attempt's keys (with torch 2.13 a plain
``init_process_group()`` then hangs or dials the dead workers' addresses).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from fusionrec.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def pick_device(requested: str, local_rank: int) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device is 'cuda' but this machine has no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_request: str = "auto", timeout_s: int = 600) -> DistInfo:
    """Start the default process group: NCCL on CUDA, gloo on CPU.

    Without torchrun (no ``RANK`` in the environment) this is a world of one process, so
    every entry point also runs directly under ``python -m`` for debugging.
    """
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank, local_world_size = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", 1)
    device = pick_device(device_request, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        agent_store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
        )
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store: dist.Store = dist.PrefixStore(f"fusionrec/attempt{attempt}", agent_store)
    else:
        store = dist.HashStore()
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return DistInfo(rank, world_size, local_rank, local_world_size, device)


def is_multi_rank() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def this_rank() -> int:
    """This process's rank in the default group (0 outside one)."""
    return dist.get_rank() if is_multi_rank() else 0


def barrier() -> None:
    """Wait for every rank of the default group (a no-op for one process)."""
    if is_multi_rank():
        dist.barrier()


def group_device() -> torch.device:
    """The device a tensor must live on for a collective of the default group: the current
    CUDA device under NCCL (which reduces only CUDA tensors), else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce ``t`` in place across the default group (a no-op for one process); returns ``t``.

    Every collective of fusionrec's own goes through here: a tensor that is not on
    :func:`group_device` (a host-side counter under NCCL) is staged there and copied back, so no
    caller can hand NCCL a CPU tensor."""
    if is_multi_rank():
        device = group_device()
        if t.device == device:
            dist.all_reduce(t, op=op)
        else:
            staged = t.to(device)
            dist.all_reduce(staged, op=op)
            t.copy_(staged)
    return t


def all_gather_objects(obj: object) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not is_multi_rank():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
