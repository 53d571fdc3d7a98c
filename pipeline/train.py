"""Train a multi-task model on sharded embedding tables.

    torchrun --nproc_per_node 2 -m pipeline.train --config configs/demo.yaml --run-dir runs/demo
    python -m pipeline.train --config configs/demo.yaml --run-dir runs/debug   # one process

Flow: config (validated before any process group) → process group → model built with its
tables on the meta device → TorchRec planner → DistributedModelParallel (sparse optimizer
fused into the backward of the embedding kernels) → TrainPipelineSparseDist steps →
DCP checkpoints in ``RUN_DIR/checkpoints``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from datasets.batch import Batch
from datasets.reader import ParquetReader, resolve_paths
from models import build_model
from models.losses import MultiTaskLoss
from pipeline import checkpoint as ckpt
from pipeline.cli_common import UserError, add_common_args, exit_on_user_error, load_job_config
from pipeline.config import ExperimentConfig, OptimizerConfig
from pipeline.distributed import DistInfo, init_distributed, shutdown
from pipeline.logs import JsonlLog, quiet_third_party, say
from pipeline.optimizers import dense_optimizer_factory, sparse_optimizer
from sharding.planner import describe_plan, format_plan, plan_and_shard


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint's meta.json."""

    step: int = 0
    samples_seen: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


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
    Returns (DMP model, sharding plan).
    """
    model = build_model(cfg.schema, cfg.model, device=torch.device("meta"))
    if sparse_opt is not None:
        embedding_params = [p for m in (model.ebc, model.ec) if m is not None for p in m.parameters()]
        opt_class, opt_kwargs = sparse_optimizer(sparse_opt)
        apply_optimizer_in_backward(opt_class, embedding_params, opt_kwargs)
    tables = [t.name for t in cfg.features.tables]
    return plan_and_shard(model, cfg.sharding, tables, info.device, cfg.data.batch_size, info.local_world_size)


def epoch_batches(reader: ParquetReader, state: TrainerState, max_steps: int, epochs: int) -> Iterator[Batch]:
    """Batches from the trainer's position on: the rest of the current epoch, then the next ones."""
    remaining = max_steps - state.step
    for epoch in range(state.epoch, epochs):
        skip = state.batch_in_epoch if epoch == state.epoch else 0
        for batch in itertools.islice(iter(reader), skip, None):
            if remaining <= 0:
                return
            remaining -= 1
            yield batch


def train(cfg: ExperimentConfig, run_dir: Path, resume: bool, info: DistInfo) -> TrainerState:
    main = info.is_main
    torch.manual_seed(cfg.train.seed)
    if cfg.data.train is None:
        raise UserError("no train data: set data.train in the config or pass --train-data")
    reader = ParquetReader(
        resolve_paths(cfg.data.train), cfg.schema, cfg.data.batch_size, rank=info.rank, world_size=info.world_size
    )
    steps_per_epoch = reader.num_batches
    if steps_per_epoch == 0:
        raise UserError(
            f"data.train {cfg.data.train!r} has too few rows for one batch of {cfg.data.batch_size} per rank "
            f"on {info.world_size} ranks"
        )
    total_steps = steps_per_epoch * cfg.train.epochs
    max_steps = min(cfg.train.max_steps or total_steps, total_steps)

    model, plan = build_sharded_model(cfg, info, cfg.train.sparse_optimizer)
    plan_rows = describe_plan(plan)
    say(f"sharding plan ({info.world_size} ranks, {info.device.type}):\n{format_plan(plan)}", enabled=main)
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    dense_opt = KeyedOptimizerWrapper(dense_params, dense_optimizer_factory(cfg.train.dense_optimizer))
    optimizer = CombinedOptimizer([model.fused_optimizer, dense_opt])

    state = TrainerState()
    if resume and (latest := ckpt.latest_checkpoint(run_dir)) is not None:
        # Dense optimizer state is created lazily at the first step; DCP loads in place, so the
        # state must exist first (a zero-gradient step; the weights are then overwritten by the load).
        dense_opt.init_state()
        train_state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        ckpt.load_checkpoint(latest, train_state)
        model.load_state_dict(train_state["model"])
        optimizer.load_state_dict(train_state["optimizer"])
        meta = ckpt.read_meta(latest)
        if meta["world_size"] != info.world_size:
            raise UserError(
                f"{latest} was saved by {meta['world_size']} ranks; resuming the reader position needs the same "
                f"world size (got {info.world_size})"
            )
        state = TrainerState(**{k: meta[k] for k in ("step", "samples_seen", "epoch", "batch_in_epoch")})
        say(f"resumed from {latest} at step {state.step}", enabled=main)
    elif resume:
        say(f"--resume: no complete checkpoint in {run_dir}, starting from scratch", enabled=main)

    log = JsonlLog(run_dir / "train_log.jsonl" if main else None)
    say(
        f"training {cfg.model.name} on {info.world_size} rank(s): {steps_per_epoch} steps/epoch, "
        f"{max_steps} steps, batch {cfg.data.batch_size}/rank, {reader.rows_dropped} rows/epoch dropped on rank "
        f"{info.rank} to keep ranks in step",
        enabled=main,
    )
    pipeline = TrainPipelineSparseDist(model, optimizer, info.device, execute_all_batches=True)
    batches = epoch_batches(reader, state, max_steps, cfg.train.epochs)
    window = LossWindow(MultiTaskLoss(cfg.tasks).to(info.device), info.device)
    global_batch = cfg.data.batch_size * info.world_size
    window_start = time.perf_counter()

    def save() -> None:
        meta = {
            "samples_seen": state.samples_seen,
            "world_size": info.world_size,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "model": cfg.model.name,
        }
        path = ckpt.save_checkpoint(
            run_dir,
            state.step,
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            meta,
            plan_rows,
            cfg.to_dict(),
            cfg.checkpoint.keep_last,
        )
        say(f"checkpoint {path}", enabled=main)

    model.train()
    while True:
        try:
            outputs = pipeline.progress(batches)  # the model's second return value
        except StopIteration:
            break
        state.step += 1
        state.samples_seen += global_batch
        state.batch_in_epoch += 1
        if state.batch_in_epoch == steps_per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        window.add(outputs)
        if state.step % cfg.train.log_every == 0 or state.step == max_steps:
            steps = window.steps
            record = {"step": state.step, "samples_seen": state.samples_seen, **window.flush()}
            elapsed = time.perf_counter() - window_start
            record["samples_per_s"] = round(steps * global_batch / max(elapsed, 1e-9), 1)
            log.write(record)
            tasks = " ".join(f"{t}={v:.4f}" for t, v in record["task_loss"].items())
            say(
                f"step {state.step}/{max_steps} loss={record['loss']:.4f} [{tasks}] "
                f"{record['samples_per_s']:.0f} samples/s",
                enabled=main,
            )
            window_start = time.perf_counter()
        if cfg.checkpoint.every_n_steps and state.step % cfg.checkpoint.every_n_steps == 0:
            save()
    if not (cfg.checkpoint.every_n_steps and state.step % cfg.checkpoint.every_n_steps == 0):
        save()
    return state


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
        _, per_task = self.loss_fn(logits, labels, weights)
        self.sums += torch.cat([loss.reshape(1), per_task]).detach()
        self.steps += 1

    def flush(self) -> dict:
        sums = self.sums.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
            sums /= dist.get_world_size()
        means = (sums / max(self.steps, 1)).tolist()
        self.sums.zero_()
        self.steps = 0
        return {"loss": means[0], "task_loss": dict(zip(self.loss_fn.task_names, means[1:]))}


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    args = parse_args(argv)
    with exit_on_user_error():
        cfg = load_job_config(args.config, config_overrides(args))
        run_dir = Path(args.run_dir)
        info = init_distributed(cfg.train.device, cfg.train.process_group_timeout_s)
        try:
            state = train(cfg, run_dir, args.resume, info)
            say(f"done: {state.step} steps, {state.samples_seen} samples", enabled=info.is_main)
        finally:
            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
