"""Train a multi-task model on sharded embedding tables.

    torchrun --nproc_per_node 2 -m pipeline.train --config configs/demo.yaml --run-dir runs/demo
    python -m pipeline.train --config configs/demo.yaml --run-dir runs/debug   # one process

Flow: config (validated before any process group) → process group → model built with its
tables on the meta device → TorchRec planner → DistributedModelParallel (sparse optimizer
fused into the backward of the embedding kernels) → TrainPipelineSparseDist steps →
DCP checkpoints in ``RUN_DIR/checkpoints``. After an elastic restart (torchrun
``--max-restarts``) the job resumes from the newest complete checkpoint by itself.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from datasets.batch import Batch
from datasets.reader import ParquetReader, make_loader, resolve_paths
from models import build_model
from models.losses import MultiTaskLoss
from pipeline import checkpoint as ckpt
from pipeline.cli_common import UserError, add_common_args, exit_on_user_error, load_job_config
from pipeline.config import EarlyStoppingConfig, ExperimentConfig, OptimizerConfig
from pipeline.distributed import DistInfo, all_reduce, init_distributed, is_multi_rank, shutdown
from pipeline.logs import JsonlLog, ProgressBar, TensorBoardLog, quiet_third_party, say
from pipeline.optimizers import build_optimizer, fuse_sparse_optimizer
from pipeline.scoring import score
from pipeline.train_metrics import TrainMetrics
from sharding.plan import PlanRecorder, format_memory_summary, quiet_planner
from sharding.planner import describe_plan, format_plan, plan_and_shard


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint's meta.json."""

    step: int = 0
    samples_seen: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_eval: Optional[float] = None
    evals_without_improvement: int = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--train-data", help="train Parquet logs: directory, glob or file (overrides data.train)")
    parser.add_argument("--eval-data", help="eval Parquet logs (overrides data.eval)")
    parser.add_argument("--run-dir", required=True, help="where checkpoints and logs go")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (overrides train.max_steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    return parser.parse_args(argv)


def config_overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set or [])
    if args.train_data:
        sets.append(f"data.train={args.train_data}")
    if args.eval_data:
        sets.append(f"data.eval={args.eval_data}")
    if args.max_steps is not None:
        sets.append(f"train.max_steps={args.max_steps}")
    return sets


def build_sharded_model(cfg: ExperimentConfig, info: DistInfo, sparse_opt: OptimizerConfig | None):
    """Model with its tables on the meta device, planned and sharded across the process group.

    With ``sparse_opt`` the embedding tables get that optimizer fused into their backward.
    Returns (DMP model, sharding plan, per-rank memory summary — on rank 0 only, else None).
    """
    model = build_model(cfg.schema, cfg.model, device=torch.device("meta"))
    if sparse_opt is not None:
        fuse_sparse_optimizer((model.ebc, model.ec), sparse_opt)
    tables = [t.name for t in cfg.features.tables]
    recorder = PlanRecorder()
    with quiet_planner():
        dmp, plan = plan_and_shard(
            model, cfg.sharding, tables, info.device, cfg.data.batch_size, info.local_world_size, stats=[recorder]
        )
    return dmp, plan, recorder.summary()


def epoch_batches(reader: ParquetReader, state: TrainerState, max_steps: int, epochs: int) -> Iterator[Batch]:
    """Batches from the trainer's position on: the rest of the current epoch, then the next ones.

    A resumed reader (``load_state_dict``) already stands at the position of ``state``, so its
    first pass starts right after the last trained batch without re-reading earlier rows.
    """
    remaining = max_steps - state.step
    for epoch in range(state.epoch, epochs):
        if epoch != reader.epoch:
            reader.set_epoch(epoch)
        for batch in make_loader(reader):
            if remaining <= 0:
                return
            remaining -= 1
            yield batch


def reader_for(
    cfg: ExperimentConfig, spec: str, info: DistInfo, batch_size: int, train: bool, num_workers: int | None = None
) -> ParquetReader:
    """The reader of this rank: shuffled and with full batches only for training;
    ``num_workers`` overrides ``data.num_workers``."""
    data = cfg.data
    return ParquetReader(
        resolve_paths(spec),
        cfg.schema,
        batch_size,
        rank=info.rank,
        world_size=info.world_size,
        drop_last=train,
        seed=data.seed,
        shuffle=data.shuffle and train,
        shuffle_buffer_rows=data.shuffle_buffer_rows if train else 0,
        num_workers=data.num_workers if num_workers is None else num_workers,
    )


def data_stats(reader: ParquetReader) -> dict[str, int]:
    """The reader's bad-value and drop counters, summed over all ranks (collective)."""
    stats = reader.data_stats()
    keys = sorted(stats)
    values = all_reduce(torch.tensor([stats[k] for k in keys], dtype=torch.float64))
    return {k: int(v) for k, v in zip(keys, values.tolist())}


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class LossWindow:
    """Mean training loss, total and per task, over the steps since the last log line and
    over all ranks. Sums stay on the device; the only host sync and all-reduce happen in
    :meth:`flush`, which every rank calls at the same step."""

    def __init__(self, loss_fn: MultiTaskLoss, device: torch.device) -> None:
        self.loss_fn = loss_fn
        self.sums = torch.zeros(1 + len(loss_fn.task_names), device=device)
        self.steps = 0

    def add(self, outputs: tuple) -> None:
        loss, logits, _, labels, weights = outputs
        _, per_task = self.loss_fn(logits.float(), labels, weights)
        self.sums += torch.cat([loss.reshape(1).float(), per_task]).detach()
        self.steps += 1

    def flush(self) -> dict:
        sums = all_reduce(self.sums.clone())
        if is_multi_rank():
            sums /= dist.get_world_size()
        means = (sums / max(self.steps, 1)).tolist()
        self.sums.zero_()
        self.steps = 0
        return {"loss": means[0], "task_loss": dict(zip(self.loss_fn.task_names, means[1:]))}


def improved(stopping: EarlyStoppingConfig, value: float, best: Optional[float]) -> bool:
    if best is None:
        return True
    return value > best + stopping.min_delta if stopping.higher_is_better else value < best - stopping.min_delta


def autocast_forward(model: torch.nn.Module, device: torch.device, mode: str) -> Optional[Callable]:
    """A model forward under bf16 autocast for the pipeline, or None for plain fp32."""
    if mode != "bf16":
        return None

    def forward(batch: Batch):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return model(batch)

    return forward


class Trainer:
    """One training job on this rank: model, optimizers, data, logs and checkpoints."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, info: DistInfo) -> None:
        self.cfg, self.run_dir, self.info = cfg, run_dir, info
        self.main = info.is_main
        torch.manual_seed(cfg.train.seed)
        if cfg.data.train is None:
            raise UserError("no train data: set data.train in the config or pass --train-data")
        self.reader = reader_for(cfg, cfg.data.train, info, cfg.data.batch_size, train=True)
        self.steps_per_epoch = self.reader.num_batches
        if self.steps_per_epoch == 0:
            raise UserError(
                f"data.train {cfg.data.train!r} has too few rows for one batch of {cfg.data.batch_size} per rank "
                f"on {info.world_size} ranks"
            )
        total = self.steps_per_epoch * cfg.train.epochs
        self.max_steps = min(cfg.train.max_steps or total, total)
        self.eval_reader = None
        if cfg.train.eval_every_n_steps:
            self.eval_reader = reader_for(cfg, cfg.data.eval, info, cfg.eval.batch_size or cfg.data.batch_size, False)

        self.model, plan, memory = build_sharded_model(cfg, info, cfg.train.sparse_optimizer)
        self.plan_rows = describe_plan(plan)
        say(f"sharding plan ({info.world_size} ranks, {info.device.type}):\n{format_plan(plan)}", enabled=self.main)
        if memory is not None:
            say(format_memory_summary(memory), enabled=self.main)
        self.optimizer, self.dense_optimizer, self.scheduler = build_optimizer(
            self.model, self.model.fused_optimizer, cfg.train, self.max_steps
        )
        self.state = TrainerState()
        self.global_batch = cfg.data.batch_size * info.world_size
        self.jsonl = JsonlLog(run_dir / "train_log.jsonl" if self.main else None)

    # ------------------------------------------------------------------ checkpoints
    def restore(self, path: Path) -> None:
        meta = ckpt.read_meta(path)
        if meta["world_size"] != self.info.world_size:
            raise UserError(
                f"{path} was saved by {meta['world_size']} ranks; resuming the reader position needs the same "
                f"world size (got {self.info.world_size})"
            )
        # Dense optimizer state is created lazily at the first step; DCP loads in place, so the
        # state must exist first (a zero-gradient step; the weights are then overwritten by the load).
        self.dense_optimizer.init_state()
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        ckpt.load_checkpoint(path, state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(meta["lr_scheduler"])
        self.state = TrainerState(**meta["trainer"])
        self.reader.load_state_dict(meta["reader"])
        rng = ckpt.load_rank_state(path, self.info.rank)
        if rng is not None:
            set_rng_state(rng["rng"], self.info.device)
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.jsonl.write({"event": "resumed", "step": self.state.step, "checkpoint": str(path), "attempt": attempt})
        say(f"resumed from {path} at step {self.state.step}", enabled=self.main)

    def save(self) -> None:
        s = self.state
        meta = {
            "samples_seen": s.samples_seen,
            "world_size": self.info.world_size,
            "model": self.cfg.model.name,
            "trainer": asdict(s),
            "lr_scheduler": self.scheduler.state_dict(),
            "reader": self.reader.state_dict(epoch=s.epoch, batches_consumed=s.batch_in_epoch),
        }
        path = ckpt.save_checkpoint(
            self.run_dir,
            s.step,
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
            meta,
            self.plan_rows,
            self.cfg.to_dict(),
            self.cfg.checkpoint.keep_last,
            rank_state={"rng": rng_state(self.info.device)},
        )
        say(f"checkpoint {path}", enabled=self.main)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, pipeline: TrainPipelineSparseDist) -> dict[str, dict]:
        """Score the eval data with the current weights (the pipeline's model rewrite is
        undone for the duration, its in-flight batches are kept)."""
        assert self.eval_reader is not None
        model = pipeline.detach()
        limit = self.cfg.train.eval_max_batches
        n = self.eval_reader.num_batches if limit is None else min(limit, self.eval_reader.num_batches)
        self.eval_reader.set_epoch(0)  # every evaluation reads the same rows from the start
        batches = itertools.islice(iter(make_loader(self.eval_reader)), n)
        result = score(model, batches, n, self.cfg.schema, self.info.device)
        pipeline.attach(model)
        return result.tasks

    def should_stop(self, tasks: dict[str, dict]) -> bool:
        stopping = self.cfg.train.early_stopping
        if stopping is None:
            return False
        value = tasks[stopping.task][stopping.metric]
        if improved(stopping, value, self.state.best_eval):
            self.state.best_eval, self.state.evals_without_improvement = value, 0
            return False
        self.state.evals_without_improvement += 1
        return self.state.evals_without_improvement >= stopping.patience

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainerState:
        cfg, info, s = self.cfg, self.info, self.state
        say(
            f"training {cfg.model.name} on {info.world_size} rank(s): {self.steps_per_epoch} steps/epoch, "
            f"{self.max_steps} steps, batch {cfg.data.batch_size}/rank, {self.reader.rows_dropped} rows/epoch "
            f"dropped on rank {info.rank} to keep ranks in step",
            enabled=self.main,
        )
        pipeline = TrainPipelineSparseDist(
            self.model,
            self.optimizer,
            info.device,
            execute_all_batches=True,
            custom_model_fwd=autocast_forward(self.model, info.device, cfg.train.mixed_precision),
        )
        stream = epoch_batches(self.reader, s, self.max_steps, cfg.train.epochs)
        window = LossWindow(MultiTaskLoss(cfg.tasks).to(info.device), info.device)
        metrics = TrainMetrics(
            cfg.schema, cfg.data.batch_size, info.world_size, info.rank, cfg.train.metrics_window, info.device
        )
        jsonl = self.jsonl
        board = TensorBoardLog(self.run_dir / "tensorboard" if self.main and cfg.train.tensorboard else None)
        bar = ProgressBar(self.max_steps, s.step, enabled=self.main and cfg.train.progress_bar)
        every_ckpt, every_eval = cfg.checkpoint.every_n_steps, cfg.train.eval_every_n_steps
        window_start, stopped_early = time.perf_counter(), False
        self.model.train()
        while s.step < self.max_steps and not stopped_early:
            # Run up to the next evaluation as one pipeline segment: the pipeline drains its
            # in-flight batches at the segment's end, so evaluation never interleaves with them.
            segment = itertools.islice(stream, every_eval - s.step % every_eval if every_eval else None)
            steps_before = s.step
            while True:
                try:
                    outputs = pipeline.progress(segment)  # the model's second return value
                except StopIteration:
                    break
                self.scheduler.step()
                s.step += 1
                s.samples_seen += self.global_batch
                s.batch_in_epoch += 1
                if s.batch_in_epoch == self.steps_per_epoch:
                    s.epoch, s.batch_in_epoch = s.epoch + 1, 0
                window.add(outputs)
                _, _, predictions, labels, weights = outputs
                metrics.update(predictions, labels, weights)
                bar.advance()
                if s.step % cfg.train.log_every == 0 or s.step == self.max_steps:
                    steps = window.steps
                    record = {"step": s.step, "samples_seen": s.samples_seen, **window.flush()}
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    record["samples_per_s"] = round(steps * self.global_batch / elapsed, 1)
                    record["lr"] = self.scheduler.get_last_lr()[0]
                    record["metrics"] = metrics.compute()
                    record["data"] = data_stats(self.reader)
                    jsonl.write(record)
                    board.write(record)
                    bar.show(record)
                    tasks = " ".join(f"{t}={v:.4f}" for t, v in record["task_loss"].items())
                    bar.say(
                        f"step {s.step}/{self.max_steps} loss={record['loss']:.4f} [{tasks}] "
                        f"{record['samples_per_s']:.0f} samples/s"
                    )
                    window_start = time.perf_counter()
                if every_ckpt and s.step % every_ckpt == 0:
                    self.save()
            if s.step == steps_before:
                break  # the data ran out
            if every_eval and s.step % every_eval == 0:
                tasks = self.evaluate(pipeline)
                jsonl.write({"step": s.step, "eval": tasks})
                board.write({"step": s.step, "eval": tasks})
                summary = " ".join(f"{t}:auc={m.get('auc', float('nan')):.4f}" for t, m in tasks.items())
                bar.say(f"eval @ step {s.step}: {summary}")
                stopped_early = self.should_stop(tasks)
                if stopped_early:
                    patience = cfg.train.early_stopping.patience
                    bar.say(f"early stopping at step {s.step}: no improvement in {patience} evaluations")
                window_start = time.perf_counter()
        bar.close()
        board.close()
        if not (every_ckpt and s.step % every_ckpt == 0):
            self.save()
        return s


def train(cfg: ExperimentConfig, run_dir: Path, resume: bool, info: DistInfo) -> TrainerState:
    trainer = Trainer(cfg, run_dir, info)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    latest = ckpt.latest_checkpoint(run_dir) if resume or restarted else None
    if latest is not None:
        trainer.restore(latest)
    elif resume:
        say(f"--resume: no complete checkpoint in {run_dir}, starting from scratch", enabled=info.is_main)
    return trainer.run()


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


@record
def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    quiet_third_party()
    args = parse_args(argv)
    with exit_on_user_error():
        cfg = load_job_config(args.config, config_overrides(args))
        info = init_distributed(cfg.train.device, cfg.train.process_group_timeout_s)
        try:
            state = train(cfg, Path(args.run_dir), args.resume, info)
            say(f"done: {state.step} steps, {state.samples_seen} samples", enabled=info.is_main)
        finally:
            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
