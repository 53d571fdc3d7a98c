"""The one recipe every job follows, in the order a job runs it.

    cfg   = load_job_config(path, overrides)             # typed, validated; no process group yet
    with process_group(device, timeout) as info:         # gloo on CPU, NCCL on CUDA; world of one without torchrun
    lock  = lock_run_dir(run_dir, info)                  # training only: one job per run dir
    built = build_sharded_model(cfg, info, sparse_opt)   # tables on meta → TorchRec planner → DMP
    (optimizers: pipeline.optimizers.build_optimizer(built.model, ...), training only)
    reader = make_reader(cfg, spec, info, batch_size, train=...)
    path  = resolve_checkpoint(path)                     # newest undamaged checkpoint of a run dir
    check_checkpoint_binding(cfg, path, reader, ...)     # the checkpoint's config, id types and MC world size rule
    meta  = load_model_weights(built.model, path)        # DCP, any saved world size (MC tables: merges only)
    (end of the with: every group destroyed with its threads, the agent watch stopped)

``pipeline.train``, ``pipeline.evaluate``, ``pipeline.plan``, ``pipeline.export``, the
``fusionrec train`` launcher and the benchmarks call these steps;
no job imports another job. Each step is small on purpose: read this file top to bottom to know
what any job does before its own loop starts, and how every job that joins a process group ends.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from fusionrec.datasets.partitions import list_partitions, window
from fusionrec.datasets.reader import ParquetReader, resolve_paths
from fusionrec.errors import CheckpointDamagedError, ConfigError, DataError, UserError
from fusionrec.models import MultiTaskModel, build_model
from fusionrec.models.embeddings import max_ids_per_row
from fusionrec.pipeline import binding
from fusionrec.pipeline import checkpoint as ckpt
from fusionrec.pipeline.config import ExperimentConfig, OptimizerConfig, load_config
from fusionrec.pipeline.distributed import DistInfo, all_reduce, init_distributed, shutdown
from fusionrec.pipeline.lifecycle import watch_parent
from fusionrec.pipeline.logs import say
from fusionrec.pipeline.optimizers import fuse_sparse_optimizer
from fusionrec.pipeline.runlock import RunDirLock, locked_error
from fusionrec.sharding.collisions import reserve_admission_history
from fusionrec.sharding.planner import describe_plan, plan_and_shard
from fusionrec.sharding.report import PlanRecorder, PlanSummary, quiet_planner


# ----------------------------------------------------------------------------- 0. the process


def keep_freed_memory() -> None:
    """Keep freed memory in glibc's heap instead of returning it to the OS every step.

    By default glibc serves large blocks with a fresh ``mmap`` and unmaps them on free, so each
    step's activations, gradients and gloo buffers are page-faulted in again; measured on the
    2-core CPU machine that costs 20-40% of throughput (benchmarks/results/throughput.md). This
    is what ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` do; the price is that the heap
    keeps its high-water mark. A no-op off glibc; ``FUSIONREC_KEEP_FREED_MEMORY=0`` turns it off.
    """
    if os.environ.get("FUSIONREC_KEEP_FREED_MEMORY", "1") == "0" or sys.platform != "linux":
        return
    import ctypes  # noqa: PLC0415
    import ctypes.util  # noqa: PLC0415

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_top_pad, 256 << 20)


# ----------------------------------------------------------------------------- 1. the config


def load_job_config(path: str, overrides: list[str]) -> ExperimentConfig:
    """The experiment YAML with ``--set key.path=value`` overrides applied, typed and validated
    (a ConfigError names the file or the ``--set`` argument, and the key)."""
    return load_config(path, overrides)


# ----------------------------------------------------------------------------- 2. the process group


@contextlib.contextmanager
def process_group(device: str, timeout_s: int = 600) -> Iterator[DistInfo]:
    """Join torchrun's process group (or make a world of one) on ``device`` (``train.device``:
    auto, cpu or cuda; ``timeout_s``: ``train.process_group_timeout_s``) for the body of the
    ``with``, and leave it the one way every job ends, also on an error: every group destroyed
    with its backend's threads (:func:`distributed.shutdown`), then the agent watch stopped.
    Under torchrun this process also ends itself once its agent is gone (:func:`watch_parent`).

    The job's model, pipeline and readers must be unreferenced by the end of the body (keep
    them in a function the body calls, not in the caller's locals): a sharded model holds
    its process group, and a group alive after this aborts the finished process at exit
    (see :func:`distributed.shutdown`).
    """
    watch = watch_parent()
    try:
        info = init_distributed(device, timeout_s)
        try:
            yield info
        except BaseException as err:
            # A traceback keeps its frames' locals (the model, hence its process group) alive;
            # the frames that have returned lose them here, the message and lines stay.
            traceback.clear_frames(err.__traceback__)
            raise
        finally:
            shutdown()
    finally:
        if watch is not None:
            watch.stop()


def lock_run_dir(run_dir: Path, info: DistInfo) -> Optional[RunDirLock]:
    """Rank 0 takes the run dir's exclusive lock (:mod:`pipeline.runlock`) for the job's life;
    when another live job holds it, every rank stops with one line naming the run dir and the
    holder (collective). Returns the lock on rank 0, None elsewhere."""
    lock, refused = None, None
    if info.is_main:
        try:
            lock = RunDirLock(run_dir).acquire()
        except UserError as err:
            refused = err
    if int(all_reduce(torch.tensor([int(refused is not None)]))):
        raise refused if refused is not None else locked_error(run_dir)
    return lock


# ----------------------------------------------------------------------------- 3. the model, planned and sharded


@dataclass
class ShardedModel:
    """The DMP-wrapped model and how its tables were placed.

    ``plan_rows``: one dict per table (``sharding.planner.describe_plan``), saved beside every
    checkpoint; ``memory``: the planner's per-rank memory summary, on rank 0 only (else None).
    """

    model: torch.nn.Module
    plan: object
    plan_rows: list[dict]
    memory: Optional[PlanSummary]


def build_meta_model(
    cfg: ExperimentConfig, sparse_opt: OptimizerConfig | None, world_size: int = 1
) -> MultiTaskModel:
    """The model with its embedding tables on the meta device (no table memory allocated) and,
    with ``sparse_opt``, that optimizer fused into the tables' backward, as training runs it.
    ``world_size``: the ranks it will be sharded over (collision-managed tables split their
    id → row maps into that many row-wise blocks; a checkpoint's blocks merge onto fewer ranks
    but never split, see :func:`check_checkpoint_binding`)."""
    try:
        model = build_model(cfg.schema, cfg.model, device=torch.device("meta"), mc_buckets=world_size)
    except ValueError as err:  # the model builders raise ValueError for configs they cannot build
        raise ConfigError(f"model: {err}") from None
    if sparse_opt is not None:
        fuse_sparse_optimizer((model.ebc, model.ec, model.mc_ebc, model.mc_ec), sparse_opt)
    return model


def build_sharded_model(cfg: ExperimentConfig, info: DistInfo, sparse_opt: OptimizerConfig | None) -> ShardedModel:
    """Plan the tables with TorchRec's planner over the process group and wrap the model in
    DistributedModelParallel, which materialises each rank's shards on ``info.device``."""
    model = build_meta_model(cfg, sparse_opt, info.world_size)
    recorder = PlanRecorder()
    ids_per_step = collision_ids_per_step(cfg, cfg.data.batch_size, info.world_size)
    with quiet_planner():
        dmp, plan = plan_and_shard(
            model,
            cfg.sharding,
            [t.name for t in cfg.features.tables],
            info.device,
            cfg.data.batch_size,
            info.local_world_size,
            stats=[recorder],
            collision_ids_per_step=ids_per_step,
        )
    if ids_per_step:  # before the first step: see sharding.collisions.reserve_admission_history
        reserve_admission_history(dmp, ids_per_step)
    return ShardedModel(dmp, plan, describe_plan(plan), recorder.summary())


def collision_ids_per_step(cfg: ExperimentConfig, batch_size: int, world_size: int) -> dict[str, int]:
    """Per collision-managed table, the most ids one step can bring to one rank: every id of
    the global batch (row-wise routing may send them all to one rank)."""
    return {t: max_ids_per_row(cfg.features, t) * batch_size * world_size for t in cfg.features.collision_tables}


# ----------------------------------------------------------------------------- 4. the data


def make_reader(
    cfg: ExperimentConfig,
    spec: str | Sequence[str],
    info: DistInfo,
    batch_size: int,
    train: bool,
    num_workers: int | None = None,
) -> ParquetReader:
    """This rank's reader of the Parquet logs ``spec``: a directory, glob or file, or a list of
    files read in the order given (a partition's, or :func:`train_files`').

    Training reads shuffled (``data.shuffle``) full batches only, so every rank takes the same
    number of steps; evaluation reads every row in file order. ``num_workers`` overrides
    ``data.num_workers``."""
    data = cfg.data
    return ParquetReader(
        resolve_paths(spec) if isinstance(spec, str) else list(spec),
        cfg.schema,
        batch_size,
        rank=info.rank,
        world_size=info.world_size,
        drop_last=train,
        seed=data.seed,
        shuffle=data.shuffle and train,
        shuffle_buffer_rows=data.shuffle_buffer_rows if train else 0,
        num_workers=data.num_workers if num_workers is None else num_workers,
        ordered=not isinstance(spec, str),
    )


def train_files(cfg: ExperimentConfig, spec: str) -> str | list[str]:
    """What training reads of ``spec`` (data.train): itself, or with ``data.partitioning`` the
    files of the complete partitions of its window, oldest partition first."""
    part = cfg.data.partitioning
    if part is None:
        return spec
    chosen = [p for p in window(list_partitions(spec, part.keys, part.marker), part.first, part.last, part.keys)
              if p.complete]  # fmt: skip
    if not chosen:
        raise DataError(f"data.train {spec!r}: no complete partition in the window "
                        f"{part.first or 'the oldest'} .. {part.last or 'the newest'} (marker {part.marker!r})")
    return [f for p in chosen for f in p.files]


# ----------------------------------------------------------------------------- 5. the checkpoint


def resolve_checkpoint(path: str | Path, announce: bool = True) -> Path:
    """A checkpoint dir as given, or the newest undamaged checkpoint of a run dir.

    A checkpoint named explicitly must be whole (:func:`checkpoint.damage`), else this stops
    with one line naming the missing or short file. Of a run dir, damaged checkpoints are
    skipped, newest first, each with a line saying why (when ``announce``)."""
    p = Path(path)
    if (p / ckpt.META).is_file():
        problem = ckpt.damage(p)
        if problem is not None:
            raise CheckpointDamagedError(f"checkpoint {p} is damaged: {problem}")
        return p
    found, skipped = ckpt.newest_whole_checkpoint(p)
    for bad, problem in skipped:
        say(f"skipping damaged checkpoint {bad}: {problem}", enabled=announce)
    if found is None:
        if skipped:
            raise CheckpointDamagedError(f"{path}: every checkpoint is damaged; the newest: {skipped[0][1]}")
        raise UserError(f"{path} is neither a complete checkpoint (no {ckpt.META}) nor a run dir holding one")
    return found


def check_checkpoint_binding(
    cfg: ExperimentConfig,
    checkpoint: Path,
    reader: Optional[ParquetReader],
    purpose: str,
    world_size: Optional[int] = None,
) -> None:
    """Stop unless ``cfg`` defines the model ``checkpoint`` was trained as (its ``config.yaml``),
    its collision-managed tables can be loaded on ``world_size`` ranks (default: ``reader``'s, else
    the process group's) and ``reader``'s data has each id feature of the type it was trained on
    (:mod:`pipeline.binding`)."""
    binding.check_config(checkpoint, cfg.to_dict(), purpose)
    if world_size is None:
        world_size = reader.world_size if reader is not None else dist.get_world_size() if dist.is_initialized() else 1
    tables = {t: cfg.features.table(t).num_embeddings for t in cfg.features.collision_tables}
    binding.check_collision_world_size(str(checkpoint), tables, ckpt.read_meta(checkpoint).get("world_size"), world_size)
    if reader is not None:
        saved = ckpt.read_meta(checkpoint).get("id_types")
        binding.check_id_types(str(checkpoint), saved, reader.id_types(), reader.paths[0])


def check_same_id_types(cfg: ExperimentConfig, train: ParquetReader, other: ParquetReader) -> None:
    """Stop when ``other`` (the periodic-evaluation data) has an id feature of another type than
    the train data: it would be hashed where training took ids modulo the table size, or the reverse."""
    binding.check_id_types(f"data.train {cfg.data.train}", train.id_types(), other.id_types(), other.paths[0])


def load_model_weights(model: torch.nn.Module, checkpoint: Path, alone: bool = False) -> dict:
    """Load the model part of ``checkpoint`` into ``model`` (resharded to this job's plan and
    world size; a checkpoint of another model fails naming what differs); returns its meta.json.
    ``alone``: this process loads an unsharded model by itself (see ``checkpoint.load_checkpoint``)."""
    state = {"model": model.state_dict()}
    ckpt.load_checkpoint(checkpoint, state, alone=alone)
    model.load_state_dict(state["model"])
    return ckpt.read_meta(checkpoint)
