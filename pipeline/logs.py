"""Console and JSONL logging for jobs; quiets third-party chatter that users cannot act on."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, TextIO


def quiet_third_party() -> None:
    """Silence warnings from torch/torchrec internals that say nothing about the user's job."""
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torch|torchrec|fbgemm_gpu)(\.|$)")
    warnings.filterwarnings("ignore", message=r".*HeuristicalStorageReservation.*")
    for name in ("torchrec", "torch.distributed", "torch.fx", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)


def say(message: str, *, enabled: bool = True, stream: Optional[TextIO] = None) -> None:
    """Print one line to ``stream`` (default: the current ``sys.stdout``); rank 0 passes
    enabled=True, other ranks stay quiet."""
    if enabled:
        print(message, file=stream or sys.stdout, flush=True)


TRAIN_LOG = "train_log.jsonl"  # in the run dir: every log line, evaluation and event of a training job


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; [] if there is none. A last line cut short (the
    writer was killed mid-write) is left out; a damaged line before it is an error naming it."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record") from None
    return out


class JsonlLog:
    """Appends one JSON object per line to ``path`` (rank 0 only)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


class ProgressBar:
    """A tqdm bar on rank 0 (only when stderr is a terminal); log lines go through it so
    the bar stays at the bottom. Disabled, it just prints the lines."""

    def __init__(self, total: Optional[int], initial: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm  # noqa: PLC0415  (a torchrec dependency, only needed here)

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", samples_per_s=f"{record['samples_per_s']:.0f}")

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        elif self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class TensorBoardLog:
    """TensorBoard event files under ``path`` (rank 0, when enabled): every number of a log
    record becomes a scalar named by its key path, e.g. ``metrics/auc/click/window``."""

    def __init__(self, path: str | Path | None) -> None:
        self.writer = None
        if path is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            except ImportError as err:
                raise RuntimeError(
                    "train.tensorboard is true but the tensorboard package is missing (pip install tensorboard)"
                ) from err
            self.writer = SummaryWriter(log_dir=str(path))

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is not None:
            for name, value in _scalars(record).items():
                self.writer.add_scalar(name, value, global_step=record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
