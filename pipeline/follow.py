"""Continuous training on a Hive-partitioned log that keeps growing (``train.follow``).

The loop, on every rank in step::

    next partition   rank 0 lists the log (datasets.partitions) and chooses; all ranks follow
    (caught up)      poll every poll_interval_s, one short collective per poll, agreeing on stops
    score it         progressive validation: the model as it is, on rows it has never seen
    train on it      one pass, the trainer's own loop (checkpoints, stop signals, log lines)
    close it         a checkpoint that lists it as trained; every N partitions a new export

**Which partition next.** Every complete partition of the window is trained exactly once. The
next is the oldest complete one not yet trained. A partition that completes after a newer one
was trained (it landed late) is trained when it is seen, and said to be late; a partition that
is still incomplete is never read and never waited for while newer ones are ready. A partition
is not read again once trained, even if its files change later.

**Exactly once across restarts.** Each checkpoint's meta.json holds the names of the trained
partitions, the one in progress and the reader's position in it (``datasets.reader``): a
resume, on any world size, continues that partition at its first untrained row, then goes on
with the rest. Rows a checkpoint had not covered are trained again after a crash, as in any
resume; the model that continues has never seen them.

**Lag**: the complete partitions waiting behind the one being trained, in the log lines
(``lag_partitions``), train_log.jsonl and TensorBoard.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fusionrec.datasets.partitions import Partition, list_partitions, partition_order, window
from fusionrec.datasets.reader import ParquetReader, make_loader
from fusionrec.errors import DataError, UserError
from fusionrec.pipeline import data_health, job
from fusionrec.pipeline.distributed import all_gather_objects
from fusionrec.pipeline.logs import say

LATEST = "latest"  # the exports' pointer: a symlink to the newest version, replaced atomically


@dataclass
class Choice:
    """Rank 0's decision after one look at the log, sent to every rank."""

    partition: Optional[Partition] = None  # train this one next
    late: bool = False  # it is older than a partition already trained
    lag: int = 0  # complete partitions still waiting after it
    incomplete: int = 0  # partitions of the window without their marker
    error: Optional[str] = None  # listing failed: every rank stops with it


class PartitionFeed:
    """Which partition the trainer reads next, and waiting for one (collective: every rank
    calls :meth:`next` at the same point)."""

    def __init__(self, cfg, done: list[str], main: bool) -> None:
        self.root, self.part, self.follow, self.main = cfg.data.train, cfg.data.partitioning, cfg.train.follow, main
        self.done = list(done)
        self._done = set(done)
        self._newest_done: Optional[tuple] = None
        for name in done:
            self._note_order(name)

    def _note_order(self, name: str) -> None:
        order = partition_order([v.split("=", 1)[1] for v in name.split("/")])
        if self._newest_done is None or order > self._newest_done:
            self._newest_done = order

    def mark_done(self, name: str) -> None:
        self.done.append(name)
        self._done.add(name)
        self._note_order(name)

    def look(self, resuming: Optional[str] = None) -> Choice:
        """Rank 0: list the log and choose the next partition, or take ``resuming`` (the one a
        checkpoint stopped in) if given; errors become the choice's ``error``."""
        try:
            found = window(list_partitions(self.root, self.part.keys, self.part.marker), self.part.first,
                           self.part.last, self.part.keys)  # fmt: skip
        except DataError as err:
            return Choice(error=str(err))
        ready = [p for p in found if p.complete and p.name not in self._done]
        incomplete = sum(not p.complete for p in found)
        if resuming is not None:
            again = [p for p in ready if p.name == resuming]
            if not again:
                return Choice(error=f"{self.root}: partition {resuming}, which the checkpoint was training, is gone "
                                    "(or no longer complete); training cannot continue it exactly")  # fmt: skip
            return Choice(again[0], False, len(ready) - 1, incomplete)
        if not ready:
            return Choice(incomplete=incomplete)
        first = ready[0]
        late = self._newest_done is not None and first.order < self._newest_done
        return Choice(first, late, len(ready) - 1, incomplete)

    def resume(self, name: str) -> Choice:
        """Every rank: the partition ``name`` a checkpoint stopped in, as rank 0 finds it now."""
        choice = all_gather_objects(self.look(resuming=name) if self.main else None)[0]
        if choice.error is not None:
            raise DataError(choice.error)
        return choice

    def next(self, stop) -> tuple[Optional[Choice], int]:
        """The next partition to train, waiting for one when every complete partition is
        trained: ``(choice, 0)``; ``(None, signal)`` when the ranks agreed on a stop signal;
        ``(None, 0)`` after ``idle_timeout_s`` without a new partition."""
        waited_since = time.monotonic()
        announced = None
        while True:
            choice = all_gather_objects(self.look() if self.main else None)[0]
            if choice.error is not None:
                raise DataError(choice.error)
            signum = stop.agreed()
            if signum:
                return None, signum
            if choice.partition is not None:
                return choice, 0
            waited = time.monotonic() - waited_since
            timeout = self.follow.idle_timeout_s
            if timeout is not None and waited >= timeout:
                say(f"no new partition in {waited:.0f} s (train.follow.idle_timeout_s {timeout:g}): stopping",
                    enabled=self.main)
                return None, 0
            if announced != choice.incomplete:
                last = self.done[-1] if self.done else "none yet"
                say(f"caught up (last trained: {last}; {choice.incomplete} partition(s) without "
                    f"{self.part.marker or 'a marker'}): waiting for a complete partition, looking every "
                    f"{self.follow.poll_interval_s:g} s", enabled=self.main)  # fmt: skip
                announced = choice.incomplete
            time.sleep(self.follow.poll_interval_s if timeout is None else min(self.follow.poll_interval_s, timeout))


class Publisher:
    """Versioned exports of the model for a server to pick up: ``DIR/000012/`` (the number of
    partitions trained), ``DIR/latest`` a symlink to the newest, replaced atomically (a server
    that opens ``latest/model.pt`` gets a whole version, old or new), the last ``keep``
    versions kept. Rank 0 only."""

    def __init__(self, directory: Path, quantize: str, keep: int) -> None:
        self.dir, self.quantize, self.keep = directory, quantize, keep
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"train.follow.export_dir {self.dir}: cannot write there ({err.strerror or err})") from None

    def publish(self, cfg, checkpoint: Path, version: int) -> tuple[str, dict]:
        from fusionrec.pipeline.exporting import export  # noqa: PLC0415  (TorchScript export: loaded when first used)

        name = f"{version:06d}"
        manifest = export(cfg, checkpoint, self.dir / name, self.quantize, 64, force=True)
        pointer = self.dir / f".{LATEST}.tmp-{os.getpid()}"
        pointer.unlink(missing_ok=True)
        pointer.symlink_to(name)
        os.replace(pointer, self.dir / LATEST)
        self.prune()
        return name, manifest

    def versions(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit())

    def prune(self) -> None:
        current = os.readlink(self.dir / LATEST)
        for name in self.versions()[: -self.keep]:
            if name != current:
                shutil.rmtree(self.dir / name, ignore_errors=True)


def follow(trainer) -> None:
    """Train ``trainer`` (a :class:`pipeline.train.Trainer` built with ``train.follow``) on the
    partitions of ``data.train`` as they land, until a stop signal or the idle timeout."""
    cfg, info, s = trainer.cfg, trainer.info, trainer.state
    opts = cfg.train.follow
    resumed = trainer.resumed_meta or {}
    position = resumed.get("follow") or {}
    feed = PartitionFeed(cfg, position.get("done", []), trainer.main)
    publisher = None
    if opts.export_every_n_partitions and trainer.main:
        publisher = Publisher(Path(opts.export_dir) if opts.export_dir else trainer.run_dir / "exports",
                              opts.export_quantize, opts.keep_exports)  # fmt: skip
    current = position.get("current")
    if current is not None and (resumed.get("reader") or {}).get("epoch", 0) > 0:
        feed.mark_done(current)  # saved at the partition's last step, before it was closed
        current = None
    if resumed and not position:
        say("note: the checkpoint was not saved in follow mode: its weights go on training, on every partition",
            enabled=trainer.main)
    say(f"following {cfg.data.train} on {info.world_size} rank(s): {len(feed.done)} partition(s) trained so far"
        + (f", resuming {current}" if current else ""), enabled=trainer.main)
    with trainer.session(None) as pipeline:
        while True:
            if current is not None:  # resume the partition the checkpoint stopped in
                choice = feed.resume(current)
                evaluated = position.get("evaluated", False)
            else:
                choice, signum = feed.next(trainer.stop)
                if choice is None:
                    trainer.stopped_by = signum
                    break
                evaluated = False
            part = choice.partition
            trainer.log_fields = {"partition": part.name, "lag_partitions": choice.lag}
            if choice.late:
                say(f"late partition {part.name}: trained now, after {feed.done[-1]}", enabled=trainer.main)
                trainer.jsonl.write({"event": "late_partition", "step": s.step, "partition": part.name})
            if opts.progressive_eval and not evaluated:
                progressive_eval(trainer, pipeline, part, choice.lag)
            reader = open_partition(trainer, part, resumed.get("reader") if current is not None else None)
            trainer.follow_state = {"done": feed.done, "current": part.name, "evaluated": True}
            stream = itertools.islice(make_loader(reader), trainer.max_steps - s.step)
            trainer.train_steps(pipeline, stream)
            trainer.report_data(data_health.gather_counters(reader, info.device), final=False)
            current = None
            if trainer.stopped_by:
                trainer.save()
                break
            feed.mark_done(part.name)
            trainer.follow_state = {"done": feed.done, "current": None, "evaluated": False}
            trainer.save()
            trainer.jsonl.write({"event": "partition_trained", "step": s.step, "partition": part.name,
                                 "rows": reader.num_rows * info.world_size, "rows_dropped": reader.total_rows_dropped,
                                 "lag_partitions": choice.lag, "late": choice.late})  # fmt: skip
            if publisher is not None and len(feed.done) % opts.export_every_n_partitions == 0:
                _publish(trainer, publisher, part, len(feed.done))
    trainer.log_fields = {}


def open_partition(trainer, part: Partition, saved_reader: Optional[dict]) -> ParquetReader:
    """Point the trainer at ``part``: its reader (continued at ``saved_reader``'s position
    after a resume), the position in its pass and the step it ends at."""
    cfg, info, s = trainer.cfg, trainer.info, trainer.state
    reader = job.make_reader(cfg, list(part.files), info, cfg.data.batch_size, train=True)
    if saved_reader is not None:
        reader.load_state_dict(saved_reader)
        if reader.resume_note is not None:
            say(f"{part.name}: {reader.resume_note}", enabled=trainer.main)
    else:
        reader.set_epoch(0)
    trainer.reader = reader
    trainer.steps_per_epoch = reader.batches_per_epoch
    trainer.pass_batches = reader.num_batches
    s.epoch, s.batch_in_epoch = 0, reader.num_batches - len(reader)
    trainer.max_steps = s.step + len(reader)
    if reader.num_batches == 0:
        say(f"{part.name}: {reader.total_rows} rows, fewer than one batch of {cfg.data.batch_size} per rank on "
            f"{info.world_size} ranks: nothing to train", enabled=trainer.main)
    return reader


def progressive_eval(trainer, pipeline, part: Partition, lag: int) -> None:
    """Score ``part`` with the model as it is, before it trains on those rows; log it."""
    cfg, info, s = trainer.cfg, trainer.info, trainer.state
    batch = cfg.eval.batch_size or cfg.data.batch_size
    trainer.eval_reader = job.make_reader(cfg, list(part.files), info, batch, train=False)
    started = time.perf_counter()
    tasks = trainer.evaluate(pipeline)
    record = {"step": s.step, "event": "progressive_eval", "partition": part.name, "rows": trainer.eval_reader.total_rows,
              "lag_partitions": lag, "progressive": tasks}  # fmt: skip
    trainer.jsonl.write(record)
    trainer.board.write({"step": s.step, "progressive": tasks})
    summary = " ".join(f"{t}:{trainer_metric(m)}" for t, m in tasks.items())
    say(f"progressive eval {part.name} ({record['rows']:,} rows, before training on it, "
        f"{time.perf_counter() - started:.1f} s): {summary}", enabled=trainer.main)
    trainer.eval_reader = None
    trainer.restart_speed_window()


def trainer_metric(metrics: dict) -> str:
    parts = []
    for key in ("auc", "ne", "calibration", "mse"):
        if key in metrics and metrics[key] is not None:
            parts.append(f"{key}={metrics[key]:.4f}")
    return ",".join(parts) or "-"


def _publish(trainer, publisher: Publisher, part: Partition, trained: int) -> None:
    """Rank 0 exports the checkpoint just saved; a failed export is said and training goes on
    (the next one is due ``export_every_n_partitions`` later)."""
    step, checkpoint = trainer.last_saved
    try:
        name, manifest = publisher.publish(trainer.cfg, checkpoint, trained)
    except Exception as err:  # noqa: BLE001  (publishing must not stop training; it is said, and logged)
        say(f"warning: export after {part.name} failed: {type(err).__name__}: {err}")
        trainer.jsonl.write({"event": "export_failed", "step": step, "partition": part.name, "error": str(err)})
        return
    say(f"exported version {name} (after {part.name}, step {step}, tables {manifest['table_dtype']}, "
        f"{manifest['seconds']:.1f} s) to {publisher.dir / name}; {publisher.dir / LATEST} -> {name}")
    trainer.jsonl.write({"event": "exported", "step": step, "partition": part.name, "version": name,
                         "path": str(publisher.dir / name)})  # fmt: skip
