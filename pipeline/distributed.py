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

from pipeline.cli_common import UserError


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


def all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce ``t`` in place across the default group (a no-op for one process); returns ``t``."""
    if is_multi_rank():
        dist.all_reduce(t, op=op)
    return t


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
