"""Training options, each run for real in one process: periodic evaluation with early
stopping, TensorBoard event files, bf16 autocast, LR schedule in the log."""

import math
import sys

import pytest

from tests.jobs import meta, read_log, train_args
from tests.launch import run

pytestmark = pytest.mark.slow


def _train(demo_logs, run_dir, steps, *extra):
    return run([sys.executable, *train_args(demo_logs, run_dir, steps, *extra)])


def test_periodic_eval_and_early_stopping(demo_logs, tmp_path):
    # min_delta 1.0 cannot be beaten: the first evaluation sets the best, the second stops.
    proc = _train(
        demo_logs, tmp_path, 100,
        "--eval-data", str(demo_logs / "eval"),
        "--set", "train.eval_every_n_steps=10", "--set", "train.eval_max_batches=5",
        "--set", "train.early_stopping={task: click, metric: auc, patience: 1, min_delta: 1.0}",
    )
    assert "early stopping at step 20" in proc.stdout
    evals = [r for r in read_log(tmp_path) if "eval" in r]
    assert [r["step"] for r in evals] == [10, 20]
    assert evals[0]["eval"]["click"]["count"] == 5 * 128  # eval_max_batches batches of 128
    final = meta(tmp_path / "checkpoints" / "step_00000020")
    assert final["trainer"]["best_eval"] == evals[0]["eval"]["click"]["auc"]
    assert final["trainer"]["evals_without_improvement"] == 1


def test_tensorboard_event_files_hold_the_logged_scalars(demo_logs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(demo_logs, tmp_path, 20, "--set", "train.tensorboard=true")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "task_loss/click", "samples_per_s", "lr", "metrics/auc/click/window"} <= tags
    assert [e.step for e in events.Scalars("loss")] == [10, 20]


def test_lr_schedule_is_logged_and_followed(demo_logs, tmp_path):
    _train(demo_logs, tmp_path, 20, "--set", "train.lr_schedule={warmup_steps: 10, decay: linear, min_lr_ratio: 0.5}")
    lrs = {r["step"]: r["lr"] for r in read_log(tmp_path) if "lr" in r}
    base = 0.002  # dense_optimizer.lr in configs/demo.yaml
    assert lrs[10] == pytest.approx(base)  # warm-up done
    assert lrs[20] == pytest.approx(base * 0.5)  # decayed linearly to min_lr_ratio at the last step


def test_bf16_autocast_trains(demo_logs, tmp_path):
    _train(demo_logs, tmp_path, 10, "--set", "train.mixed_precision=bf16")
    record = [r for r in read_log(tmp_path) if "loss" in r][-1]
    assert math.isfinite(record["loss"]) and record["step"] == 10
