"""Process-group set-up for torchrun (one node or many) and for a plain single process.

Under torchrun the workers join the elastic agent's TCPStore themselves, inside a key space
named after ``TORCHELASTIC_RESTART_COUNT``: after a worker dies and the agent restarts the
group, the new attempt must not see the dead attempt's keys (with torch 2.13 a plain
``init_process_group()`` then hangs or dials the dead workers' addresses). For the same reason
each group a process starts (train, then evaluate, in one driver) gets a key space of its own.

:func:`shutdown` is the other end: it destroys every group *and its backend*, so that no gloo
worker thread lives into interpreter teardown (see there for why that aborts a finished job).
"""

from __future__ import annotations

import gc
import importlib
import itertools
import os
import sys
import types
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from fusionrec.errors import UserError, print_line, rank_prefix


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


#: Modules that evaluate ``group.WORLD`` when they are imported, as a default argument
#: (``def broadcast(tensor, src, group=group.WORLD)``). Imported after the default group exists
#: (TorchRec imports them lazily, while the model is built), they hold that group for the rest
#: of the process, past ``destroy_process_group``; imported before it, they hold None.
BINDS_WORLD_AT_IMPORT = (
    "torch.distributed.nn.functional",
    "torch.distributed.optim.zero_redundancy_optimizer",
)


_groups_started = itertools.count()  # default groups this process has started


def init_distributed(device_request: str = "auto", timeout_s: int = 600) -> DistInfo:
    """Start the default process group: NCCL on CUDA, gloo on CPU.

    Without torchrun (no ``RANK`` in the environment) this is a world of one process, so
    every entry point also runs directly under ``python -m`` for debugging.
    """
    for name in BINDS_WORLD_AT_IMPORT:  # before the group exists: see shutdown()
        importlib.import_module(name)
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
        # Every rank starts its groups in the same order, so the counters agree.
        store: dist.Store = dist.PrefixStore(f"fusionrec/attempt{attempt}/group{next(_groups_started)}", agent_store)
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
    return all_reduce_async(t, op)()


def all_reduce_async(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Callable[[], torch.Tensor]:
    """Start :func:`all_reduce` of ``t`` without waiting for it; returns the wait, which reduces
    ``t`` in place (copied back from the group's device if it was staged there) and returns it.
    Every rank must start the same collectives in the same order and call each wait before the
    group ends."""
    if not is_multi_rank():
        return lambda: t
    device = group_device()
    staged = t if t.device == device else t.to(device)
    work = dist.all_reduce(staged, op=op, async_op=True)

    def wait() -> torch.Tensor:
        work.wait()
        return t if staged is t else t.copy_(staged)

    return wait


def all_gather_objects(obj: object) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not is_multi_rank():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Destroy every process group of this process, and with the last reference to each its
    backend: gloo joins its worker threads here, while the interpreter is whole.

    Why it matters: ``destroy_process_group`` drops only torch's own references. A group still
    referenced elsewhere keeps its gloo worker threads running into interpreter teardown. A
    worker that frees the tensors of a just-finished collective then needs the GIL to release
    their Python objects; a finalizing interpreter ends such a thread with ``pthread_exit``,
    whose unwinding stops at the (noexcept) destructor it is in: ``std::terminate``, printed
    as ``terminate called without an active exception``, and the finished job dies by SIGABRT.
    It is a race between that worker and the main thread's exit, so it aborted about one job in
    ten. The references were default arguments (:data:`BINDS_WORLD_AT_IMPORT`);
    any left here are found and dropped, saying so on stderr, and a group that is still held
    after that is named in a warning.
    """
    if not dist.is_initialized():
        return
    gc.collect()  # a sharded model lives in reference cycles, and holds its groups
    groups = list(dist.distributed_c10d._world.pg_map)
    dist.destroy_process_group()
    if any(_held_elsewhere(groups, i) for i in range(len(groups))):
        released = release_default_arguments(groups)
        if released:
            print_line(f"note: {rank_prefix()}released the destroyed process group held as a default argument of "
                       f"{', '.join(released)} (import it before init_distributed)")
        still = sum(_held_elsewhere(groups, i) for i in range(len(groups)))
        if still:
            print_line(f"warning: {rank_prefix()}{still} destroyed process group(s) still referenced: their backend "
                       "threads outlive the job")
    del groups  # the last references: each backend is destroyed here and joins its threads


def _held_elsewhere(groups: list, i: int) -> bool:
    # Two references are ours: the list's and getrefcount's argument.
    return sys.getrefcount(groups[i]) > 2


def release_default_arguments(groups: list) -> list[str]:
    """Replace each of ``groups`` where a function holds it as a default argument by None (what
    the function would hold had it been imported before the group existed); returns the
    functions' qualified names."""
    ids = {id(g) for g in groups}
    released = []
    for obj in gc.get_objects():
        if type(obj) is not types.FunctionType:  # type(), not isinstance: no lazy-module __class__ lookups
            continue
        defaults, kwdefaults = obj.__defaults__, obj.__kwdefaults__
        hit = False
        if defaults and any(id(d) in ids for d in defaults):
            obj.__defaults__ = tuple(None if id(d) in ids else d for d in defaults)
            hit = True
        if kwdefaults and any(id(v) in ids for v in kwdefaults.values()):
            obj.__kwdefaults__ = {k: None if id(v) in ids else v for k, v in kwdefaults.items()}
            hit = True
        if hit:
            released.append(f"{obj.__module__}.{obj.__qualname__}")
    return released
