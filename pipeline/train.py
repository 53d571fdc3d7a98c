"""Train a multi-task model on sharded embedding tables.

    torchrun --nproc_per_node 2 --standalone -m fusionrec.pipeline.train --config configs/demo.yaml --run-dir runs/demo
    python -m fusionrec.pipeline.train --config configs/demo.yaml --run-dir runs/debug   # one process

The job recipe (:mod:`fusionrec.pipeline.job`) builds everything a job needs: config →
process group → model with meta-device tables → TorchRec planner → DistributedModelParallel
(sparse optimizer fused into the backward of the embedding kernels) → readers → checkpoint.
This module adds the loop: TrainPipelineSparseDist steps, periodic evaluation in drained
pipeline segments, logs, and DCP checkpoints in ``RUN_DIR/checkpoints``. After an elastic
restart (torchrun ``--max-restarts``) the job resumes from the newest complete checkpoint by itself.
SIGTERM or SIGUSR1 (preemption) make every rank finish its step, save a checkpoint there and
exit 0 (:mod:`pipeline.lifecycle`); bad input data shows on the console at each log line
(:mod:`pipeline.data_health`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch.autograd.profiler import record_function
from torch.distributed.elastic.multiprocessing.errors import record
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from fusionrec.datasets.batch import Batch
from fusionrec.datasets.reader import ParquetReader, make_loader
from fusionrec.errors import UserError, exit_on_user_error, report_to_launcher
from fusionrec.models.multitask import StepOutput
from fusionrec.pipeline import checkpoint as ckpt
from fusionrec.pipeline import data_health, job
from fusionrec.pipeline.compiled import compile_dense
from fusionrec.pipeline.train_args import config_overrides, parse_args
from fusionrec.pipeline.config import EarlyStoppingConfig, ExperimentConfig
from fusionrec.pipeline.follow import follow
from fusionrec.pipeline.distributed import DistInfo, all_reduce
from fusionrec.pipeline.lifecycle import StopRequest, signal_name
from fusionrec.pipeline.logs import TRAIN_LOG, JsonlLog, ProgressBar, TensorBoardLog, quiet_third_party, say
from fusionrec.pipeline.optimizers import build_optimizer, set_schedule_length
from fusionrec.pipeline.scoring import score
from fusionrec.pipeline.train_metrics import TrainMetrics
from fusionrec.sharding.planner import format_plan
from fusionrec.sharding.report import format_memory_summary


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint's meta.json."""

    step: int = 0
    samples_seen: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of the epoch's pass trained (a pass re-split on resume counts from 0)
    best_eval: Optional[float] = None
    evals_without_improvement: int = 0


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


def pipeline_steps(pipeline: TrainPipelineSparseDist, batches: Iterable[Batch]) -> Iterator[StepOutput]:
    """Run ``pipeline`` over ``batches``, yielding each trained step's output.

    TorchRec's ``progress`` says that the batches and its in-flight ones are used up by raising
    StopIteration; this turns that into the end of a plain iterator.
    """
    batches = iter(batches)
    while True:
        try:
            out = pipeline.progress(batches)
        except StopIteration:
            return
        yield out


class LossWindow:
    """Mean training loss, total and per task, over the steps since the last log line and
    over all ranks: the losses the model computed, summed on the device; the only host sync
    and all-reduce happen in :meth:`flush`, which every rank calls at the same step."""

    def __init__(self, task_names: list[str], device: torch.device) -> None:
        self.task_names = task_names
        self.sums = torch.zeros(1 + len(task_names), device=device)
        self.steps = 0

    def add(self, out: StepOutput) -> None:
        self.sums += torch.cat([out.loss.reshape(1), out.task_losses]).float()
        self.steps += 1

    def flush(self, world_size: int) -> dict:
        sums = all_reduce(self.sums.clone()) / world_size
        means = (sums / max(self.steps, 1)).tolist()
        self.sums.zero_()
        self.steps = 0
        return {"loss": means[0], "task_loss": dict(zip(self.task_names, means[1:]))}


def improved(stopping: EarlyStoppingConfig, value: float, best: Optional[float]) -> bool:
    if best is None:
        return True
    return value > best + stopping.min_delta if stopping.higher_is_better else value < best - stopping.min_delta


def headline_metric(metrics: dict) -> str:
    """A task's metric for a one-line summary: AUC for a binary task, MSE for a regression."""
    if "auc" in metrics:
        return f"auc={metrics['auc']:.4f}"
    if "mse" in metrics:
        return f"mse={metrics['mse']:.4f}"
    return "-"


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
        self.follow = cfg.train.follow.enabled
        self.resumed_meta: Optional[dict] = None  # the checkpoint meta a follow-mode resume starts from
        self.follow_state: Optional[dict] = None  # follow mode: the partitions trained and the one in progress
        self.log_fields: dict = {}  # follow mode: the partition and the lag, in every log record
        if self.follow:  # the partitions are read one by one (pipeline.follow); none may exist yet
            self.reader: Optional[ParquetReader] = None
            self.steps_per_epoch = self.pass_batches = self.max_steps = 0
        else:
            self.reader = job.make_reader(cfg, job.train_files(cfg, cfg.data.train), info, cfg.data.batch_size,
                                          train=True)  # fmt: skip
            self.steps_per_epoch = self.reader.batches_per_epoch
            self.pass_batches = self.steps_per_epoch  # batches of the epoch pass the state is in
            if self.steps_per_epoch == 0:
                raise UserError(
                    f"data.train {cfg.data.train!r} has too few rows for one batch of {cfg.data.batch_size} per rank "
                    f"on {info.world_size} ranks"
                )
            total = self.steps_per_epoch * cfg.train.epochs
            self.max_steps = min(cfg.train.max_steps or total, total)
        self.eval_reader = None
        if cfg.train.eval_every_n_steps:
            eval_batch = cfg.eval.batch_size or cfg.data.batch_size
            self.eval_reader = job.make_reader(cfg, cfg.data.eval, info, eval_batch, train=False)
            job.check_same_id_types(cfg, self.reader, self.eval_reader)
        elif cfg.data.eval is not None:
            say(f"note: data.eval {cfg.data.eval!r} is not read: train.eval_every_n_steps is 0 (score checkpoints "
                "with fusionrec.pipeline.evaluate, or set it)", enabled=self.main)

        built = job.build_sharded_model(cfg, info, cfg.train.sparse_optimizer)
        self.model, self.plan_rows = built.model, built.plan_rows
        say(f"sharding plan ({info.world_size} ranks, {info.device.type}):\n{format_plan(built.plan)}", enabled=self.main)
        if built.memory is not None:
            say(format_memory_summary(built.memory), enabled=self.main)
        if cfg.train.compile.enabled:  # the dense submodules only; embeddings and the pipeline stay eager
            say(compile_dense(self.model, cfg.train.compile, info.device), enabled=self.main)
        # A followed log has no last step: its schedule (warm-up, no decay: checked in the config) needs none.
        self.optimizer, self.dense_optimizer, self.scheduler = build_optimizer(
            self.model, self.model.fused_optimizer, cfg.train, self.max_steps or 1
        )
        self.state = TrainerState()
        self.stop = StopRequest()
        self.stopped_by = 0  # the signal the ranks agreed to stop on (0: none)
        self.last_saved: Optional[tuple[int, Path]] = None
        self.global_batch = cfg.data.batch_size * info.world_size
        self.jsonl = JsonlLog(run_dir / TRAIN_LOG if self.main else None)

    # ------------------------------------------------------------------ checkpoints
    def restore(self, path: Path) -> None:
        meta = ckpt.read_meta(path)
        job.check_checkpoint_binding(self.cfg, path, self.reader, "resume")
        # Dense optimizer state is created lazily at the first step; DCP loads in place, so the
        # state must exist first (a zero-gradient step; the weights are then overwritten by the load).
        self.dense_optimizer.init_state()
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        ckpt.load_checkpoint(path, state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(meta["lr_scheduler"])
        self.state = TrainerState(**meta["trainer"])
        if self.follow:
            self.resumed_meta = meta  # the partition and the reader position: pipeline.follow takes them
        else:
            self.reader.load_state_dict(meta["reader"])
        rank_state = ckpt.load_rank_state(path, self.info.rank)
        if rank_state is not None:
            ckpt.set_rng_state(rank_state["rng"], self.info.device)
        missing = ckpt.missing_rank_states(path, meta["world_size"])
        if missing:
            say(
                f"warning: {path} lacks {', '.join(missing)} (RNG states): those ranks resume with fresh RNG "
                "states, so dropout and other random draws will not repeat an uninterrupted run",
                enabled=self.main,
            )
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.jsonl.write({"event": "resumed", "step": self.state.step, "checkpoint": str(path), "attempt": attempt})
        say(f"resumed from {path} at step {self.state.step}", enabled=self.main)
        if not self.follow:
            self.continue_epoch(meta["world_size"])

    def continue_epoch(self, saved_world_size: int) -> None:
        """Take over the reader's pass after a resume: when the reader re-split the rest of the
        epoch for another layout (world size, workers, batch size), the state's position is
        the start of that shorter pass, and the steps left (and so the lr schedule's length)
        follow from it."""
        s, reader = self.state, self.reader
        if reader.resume_note is not None:
            s.batch_in_epoch = 0
            note = f"{reader.resume_note} (saved by {saved_world_size} rank(s), now {self.info.world_size})"
            say(note, enabled=self.main)
            self.jsonl.write({"event": "epoch_resplit", "step": s.step, "note": note})
        self.pass_batches = reader.num_batches
        if self.pass_batches == 0:  # fewer rows left than one batch per rank: on to the next epoch
            s.epoch, s.batch_in_epoch, self.pass_batches = s.epoch + 1, 0, self.steps_per_epoch
            reader.set_epoch(s.epoch)
        left = self.pass_batches - s.batch_in_epoch + (self.cfg.train.epochs - s.epoch - 1) * self.steps_per_epoch
        total = s.step + max(left, 0)
        max_steps = min(self.cfg.train.max_steps or total, total)
        if max_steps != self.max_steps:
            self.max_steps = max_steps
            set_schedule_length(self.scheduler, self.cfg.train.lr_schedule, max_steps)

    def save(self) -> None:
        """A checkpoint at this step (with follow mode's partition position, ``follow_state``)."""
        s = self.state
        meta = {
            "samples_seen": s.samples_seen,
            "world_size": self.info.world_size,
            "model": self.cfg.model.name,
            "trainer": asdict(s),
            "lr_scheduler": self.scheduler.state_dict(),
            "reader": self.reader.state_dict(epoch=s.epoch, batches_consumed=s.batch_in_epoch),
            "id_types": self.reader.id_types(),
        }
        if self.follow_state is not None:
            meta["follow"] = self.follow_state
        path = ckpt.save_checkpoint(
            self.run_dir,
            s.step,
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
            meta,
            self.plan_rows,
            self.cfg.to_dict(),
            self.cfg.checkpoint.keep_last,
            rank_state={"rng": ckpt.rng_state(self.info.device)},
        )
        say(f"checkpoint {path}", enabled=self.main)
        self.last_saved = (s.step, path)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, pipeline: TrainPipelineSparseDist) -> dict[str, dict]:
        """Score the eval data with the current weights (the pipeline's model rewrite is
        undone for the duration; it holds no batch in flight between segments)."""
        assert self.eval_reader is not None
        model = pipeline.detach()
        limit = self.cfg.train.eval_max_batches
        n = self.eval_reader.num_batches if limit is None else min(limit, self.eval_reader.num_batches)
        self.eval_reader.set_epoch(0)  # every evaluation reads the same rows from the start
        batches = itertools.islice(make_loader(self.eval_reader), n)
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
    def segment_ends(self) -> Iterator[int]:
        """The steps at which a pipeline segment ends: every evaluation step, then the last step.

        Between segments the pipeline has drained its in-flight batches, so an evaluation's
        collectives never interleave with a prefetched batch's input distribution."""
        every = self.cfg.train.eval_every_n_steps
        if every:
            yield from range((self.state.step // every + 1) * every, self.max_steps, every)
        yield self.max_steps

    def run(self) -> TrainerState:
        cfg, info, s = self.cfg, self.info, self.state
        say(
            f"training {cfg.model.name} on {info.world_size} rank(s): {self.steps_per_epoch} steps/epoch, "
            f"{self.max_steps} steps, batch {cfg.data.batch_size}/rank, {self.reader.rows_dropped} rows/epoch "
            f"dropped on rank {info.rank} to keep ranks in step",
            enabled=self.main,
        )
        stream = epoch_batches(self.reader, s, self.max_steps, cfg.train.epochs)
        every_eval = cfg.train.eval_every_n_steps
        with self.session(self.max_steps) as pipeline:
            for end in self.segment_ends():
                before = s.step
                self.train_steps(pipeline, itertools.islice(stream, end - s.step))
                if self.stopped_by or s.step == before:
                    break  # a stop signal, or the data ran out
                if every_eval and s.step % every_eval == 0 and self.evaluate_and_decide(pipeline):
                    break
            if self.last_saved is None or self.last_saved[0] != s.step:
                self.save()
        self.report_data(data_health.gather_counters(self.reader, self.info.device), final=True)
        return s

    @contextlib.contextmanager
    def session(self, bar_total: Optional[int]) -> Iterator[TrainPipelineSparseDist]:
        """The train pipeline with its logs, metrics and stop handler, for one run of the loop
        (``bar_total``: the steps the progress bar counts to; None: no end)."""
        cfg, info = self.cfg, self.info
        pipeline = TrainPipelineSparseDist(
            self.model,
            self.optimizer,
            info.device,
            execute_all_batches=True,
            custom_model_fwd=autocast_forward(self.model, info.device, cfg.train.mixed_precision),
        )
        self.window = LossWindow(cfg.schema.task_names, info.device)
        self.metrics = TrainMetrics(
            cfg.schema, cfg.data.batch_size, info.world_size, info.rank, cfg.train.metrics_window, info.device
        )
        self.board = TensorBoardLog(self.run_dir / "tensorboard" if self.main and cfg.train.tensorboard else None)
        self.bar = ProgressBar(bar_total, self.state.step, enabled=self.main and cfg.train.progress_bar)
        self.restart_speed_window()
        self.model.train()
        self.stop.install()
        try:
            yield pipeline
        finally:
            self.stop.restore()
            self.bar.close()
            self.board.close()

    def train_steps(self, pipeline: TrainPipelineSparseDist, batches: Iterable[Batch]) -> None:
        """Train on ``batches`` (the pipeline drains them all), checkpointing when due; ends
        early when the ranks agree on a stop signal (``self.stopped_by``)."""
        s = self.state
        every_ckpt, every_stop_check = self.cfg.checkpoint.every_n_steps, self.cfg.checkpoint.stop_check_every_n_steps
        try:
            for out in pipeline_steps(pipeline, batches):
                self.after_step(out)
                if every_ckpt and s.step % every_ckpt == 0:
                    with record_function("## fusionrec:checkpoint ##"):
                        self.save()
                if s.step % every_stop_check == 0 and s.step < self.max_steps:
                    with record_function("## fusionrec:stop_check ##"):
                        self.stopped_by = self.stop.poll()  # the check started one check earlier
                    if self.stopped_by:
                        return
        finally:  # the check still running ends here, on every rank, before any other exchange
            found = self.stop.settle()
        if found and (self.follow or s.step < self.max_steps):
            self.stopped_by = found

    def after_step(self, out: StepOutput) -> None:
        """Advance the state, the LR schedule and the metrics by one trained step; log when due."""
        s = self.state
        self.scheduler.step()
        s.step += 1
        s.samples_seen += self.global_batch
        s.batch_in_epoch += 1
        if s.batch_in_epoch == self.pass_batches:
            s.epoch, s.batch_in_epoch, self.pass_batches = s.epoch + 1, 0, self.steps_per_epoch
        with record_function("## fusionrec:loss_window ##"):
            self.window.add(out)
        with record_function("## fusionrec:metrics_update ##"):
            self.metrics.update(out.predictions, out.labels, out.weights)
        self.bar.advance()
        if s.step % self.cfg.train.log_every == 0 or s.step == self.max_steps:
            with record_function("## fusionrec:log ##"):
                self.log_step()

    def log_step(self) -> None:
        """One log line (collective: every rank calls it at the same step)."""
        s = self.state
        record = {"step": s.step, "samples_seen": s.samples_seen, **self.window.flush(self.info.world_size)}
        started, from_step = self.speed_window
        elapsed = max(time.perf_counter() - started, 1e-9)
        record["samples_per_s"] = round((s.step - from_step) * self.global_batch / elapsed, 1)
        record["lr"] = self.scheduler.get_last_lr()[0]
        record["metrics"] = self.metrics.compute()
        record["data"] = data_health.gather_counters(self.reader, self.info.device)
        record.update(self.log_fields)
        self.jsonl.write(record)
        self.board.write(record)
        self.bar.show(record)
        tasks = " ".join(f"{t}={v:.4f}" for t, v in record["task_loss"].items())
        where = (f"step {s.step} [{self.log_fields['partition']} {s.batch_in_epoch or self.steps_per_epoch}/"
                 f"{self.steps_per_epoch}, lag {self.log_fields['lag_partitions']}]" if self.follow
                 else f"step {s.step}/{self.max_steps}")  # fmt: skip
        self.bar.say(f"{where} loss={record['loss']:.4f} [{tasks}] {record['samples_per_s']:.0f} samples/s")
        self.report_data(record["data"], final=False)
        self.restart_speed_window()

    def restart_speed_window(self) -> None:
        """samples/s counts the steps trained since here (the loss window keeps its own steps,
        which a periodic evaluation does not end)."""
        self.speed_window = (time.perf_counter(), self.state.step)

    def report_data(self, totals: dict[str, int], final: bool) -> None:
        """Rank 0 prints the non-zero bad-value counters of ``totals`` (summed over ranks; at the
        end every non-zero counter), and past ``data.max_bad_fraction`` every rank stops with a
        DataError naming the counter, its rate and the first file where it happened (collective)."""
        line = data_health.console_line(totals, everything=final)
        if line is not None and final:
            say(line, enabled=self.main)
        elif line is not None:
            self.bar.say(line)
        data_health.check_bad_fraction(totals, self.cfg.data.max_bad_fraction, self.reader)
        data_health.check_label_range(totals, self.cfg.data.max_label_out_of_range_fraction, self.reader)

    def evaluate_and_decide(self, pipeline: TrainPipelineSparseDist) -> bool:
        """Evaluate at this step, log it, and say whether early stopping ends the run."""
        s = self.state
        tasks = self.evaluate(pipeline)
        self.jsonl.write({"step": s.step, "eval": tasks})
        self.board.write({"step": s.step, "eval": tasks})
        summary = " ".join(f"{t}:{headline_metric(m)}" for t, m in tasks.items())
        self.bar.say(f"eval @ step {s.step}: {summary}")
        stop = self.should_stop(tasks)
        if stop:
            patience = self.cfg.train.early_stopping.patience
            self.bar.say(f"early stopping at step {s.step}: no improvement in {patience} evaluations")
        self.restart_speed_window()
        return stop


@dataclass(frozen=True)
class TrainOutcome:
    """How a training run ended, without a reference to its model (see ``job.process_group``):
    where it stands, the signal the ranks stopped on (0: none) and the last checkpoint saved."""

    state: TrainerState
    stopped_by: int
    last_saved: Optional[tuple[int, Path]]


def train(cfg: ExperimentConfig, run_dir: Path, resume: bool, info: DistInfo) -> TrainOutcome:
    """Lock the run dir, build the trainer, resume when asked (or after an elastic restart) from
    the newest undamaged checkpoint, and run; returns how it ended once it has stopped."""
    lock = job.lock_run_dir(run_dir, info)
    try:
        trainer = Trainer(cfg, run_dir, info)
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        latest = None
        saved = ckpt.list_checkpoints(run_dir)
        if (resume or restarted) and saved:
            latest = job.resolve_checkpoint(run_dir, announce=info.is_main)
        if latest is not None:
            trainer.restore(latest)
        elif trainer.follow and saved:
            # Starting over would train every partition again into a run dir (exports, log)
            # that says they were trained: a restarted follow job must say --resume.
            raise UserError(f"--run-dir {run_dir}: holds checkpoints of a follow run; continue it with --resume "
                            "(every partition then stays trained once) or start over in a new run dir")  # fmt: skip
        elif resume:
            say(f"--resume: no complete checkpoint in {run_dir}, starting from scratch", enabled=info.is_main)
        if trainer.follow:
            follow(trainer)
        else:
            trainer.run()
        return TrainOutcome(trainer.state, trainer.stopped_by, trainer.last_saved)
    finally:
        if lock is not None:
            lock.release()


def report_outcome(outcome: TrainOutcome, info: DistInfo) -> None:
    """The job's last line: done, or where a stop signal left the checkpoint (also left for the
    launcher, so that every node's launcher exits 0)."""
    state = outcome.state
    if outcome.stopped_by:
        line = (
            f"stopped by {signal_name(outcome.stopped_by)} at step {state.step}: checkpoint "
            f"{outcome.last_saved[1] if outcome.last_saved else None}; continue with --resume"
        )
        say(line, enabled=info.is_main)
        report_to_launcher(f"stopped-rank{info.rank}", line)
    else:
        say(f"done: {state.step} steps, {state.samples_seen} samples", enabled=info.is_main)


@record
def main(argv: list[str] | None = None) -> int:
    job.keep_freed_memory()
    quiet_third_party()
    args = parse_args(argv)
    with exit_on_user_error():
        cfg = job.load_job_config(args.config, config_overrides(args))
        with job.process_group(cfg.train.device, cfg.train.process_group_timeout_s) as info:
            outcome = train(cfg, Path(args.run_dir), args.resume, info)
        report_outcome(outcome, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
