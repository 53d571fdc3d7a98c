"""The demo training and evaluation jobs, launched for real from tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.launch import REPO, run, torchrun

CONFIG = str(REPO / "configs/demo.yaml")
BATCH = 128
TRAIN = ["-m", "fusionrec.pipeline.train", "--config", CONFIG, "--set", f"data.batch_size={BATCH}", "--set", "train.log_every=10"]


def train_args(logs: Path, run_dir: Path, max_steps: int, *extra: str) -> list[str]:
    """Arguments after ``python``/``torchrun`` for a demo training run."""
    return [*TRAIN, "--train-data", str(logs / "train"), "--run-dir", str(run_dir), "--max-steps", str(max_steps), *extra]


def train(logs: Path, run_dir: Path, max_steps: int, *extra: str, nproc: int = 2):
    return torchrun(train_args(logs, run_dir, max_steps, *extra), nproc=nproc)


def evaluate(logs: Path, checkpoint: Path, out: Path, *extra: str, nproc: int | None = None) -> dict:
    """Evaluate on the demo eval logs, in one process (``nproc=None``) or under torchrun."""
    args = ["-m", "fusionrec.pipeline.evaluate", "--config", CONFIG, "--checkpoint", str(checkpoint),
            "--data", str(logs / "eval" / "*.parquet"), "--out", str(out), *extra]
    if nproc is None:
        run([sys.executable, *args])
    else:
        torchrun(args, nproc=nproc)
    return json.loads(out.read_text())


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def meta(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "meta.json").read_text())
