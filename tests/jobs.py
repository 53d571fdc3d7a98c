"""The demo training and evaluation jobs, launched for real from tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.launch import REPO, run, torchrun

CONFIG = str(REPO / "configs/demo.yaml")
BATCH = 128
TRAIN = ["-m", "fusionrec.pipeline.train", "--config", CONFIG, "--set", f"data.batch_size={BATCH}", "--set", "train.log_every=10"]


#: every fusion but the demo's AdaTT, small: ``model.fusion=<spec>``
FUSIONS = {
    "adatt_sp": "{type: adatt_sp, expert_dims: [16, 8], experts_per_task: 2}",
    "ple": "{type: ple, expert_dims: [16, 8], experts_per_task: 1, shared_experts: 1}",
    "mmoe": "{type: mmoe, expert_dims: [[16, 8]], num_experts: 3}",
    "ml_mmoe": "{type: ml_mmoe, expert_dims: [[16], [8]], num_experts: 3}",
    "cross_stitch": "{type: cross_stitch, expert_dims: [16, 8]}",
    "shared_bottom": "{type: shared_bottom, hidden_dims: [16]}",
}


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


def checkpoint_tensors(checkpoint: Path, scratch: Path) -> dict:
    """Every tensor of a DCP checkpoint (model, optimizers), whole, read in this process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = scratch / f"{checkpoint.parent.parent.name}-{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint), str(out))
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    walk("", torch.load(out, weights_only=False))
    return flat


def assert_same_training(a: Path, b: Path, scratch: Path) -> None:
    """Checkpoints ``a`` and ``b`` hold the same model and optimizer state (every tensor, to
    float tolerance): the runs trained the same batches in the same order."""
    ta, tb = checkpoint_tensors(a, scratch), checkpoint_tensors(b, scratch)
    assert sorted(ta) == sorted(tb)
    assert any(k.startswith("model.ebc.") for k in ta) and any(k.startswith("optimizer.") for k in ta)
    for key in ta:
        torch.testing.assert_close(tb[key], ta[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
