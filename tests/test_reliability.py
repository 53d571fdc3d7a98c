"""Production faults injected for real, one process each (docs/reliability.md has the table):
the checkpoint's config and id types rule evaluation and resume, damaged checkpoints are
skipped, the run dir is locked against a second job, bad data shows and stops, the regression
metric has its real name, and config mistakes are one line naming what to fix.

The jobs run in this process through their ``main`` (a world of one, real files, a real DCP
checkpoint); only the lock's holder is another process. Runs under torchrun (signals, a killed
agent, the launcher) are in tests/test_preemption.py.
"""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fusionrec.datasets.schema import FeatureSchema, Schema, SparseFeature, TableConfig, TaskConfig
from fusionrec.pipeline import evaluate as evaluate_job
from fusionrec.pipeline import train as train_job
from fusionrec.pipeline.train_metrics import TrainMetrics
from tests.jobs import CONFIG
from tests.launch import REPO, child_env

BATCH = 32
TASK_ORDER = "tasks=[{name: like}, {name: click}, {name: convert, space: click}]"


@pytest.fixture(scope="module")
def logs(small_logs) -> Path:
    """4,000 synthetic demo rows in row groups of 500 (3,200 train, 800 eval)."""
    return small_logs


def train_main(logs: Path, run_dir: Path, steps: int, *extra: str) -> int:
    args = ["--config", CONFIG, "--train-data", str(logs / "train"), "--run-dir", str(run_dir), "--max-steps", str(steps),
            "--set", f"data.batch_size={BATCH}", "--set", "train.log_every=2", *extra]  # fmt: skip
    return _exit_code(train_job.main, args)


def evaluate_main(logs: Path, checkpoint: Path, tmp: Path, *extra: str) -> int:
    args = ["--config", CONFIG, "--checkpoint", str(checkpoint), "--data", str(logs / "eval"),
            "--out", str(tmp / "eval.json"), "--no-plots", "--fusion-batches", "0", *extra]  # fmt: skip
    return _exit_code(evaluate_job.main, args)


def _exit_code(main, args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as done:
        return int(done.code or 0)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(logs, tmp_path_factory) -> Path:
    """A one-process run of 4 steps with checkpoints at steps 2 and 4."""
    path = tmp_path_factory.mktemp("run")
    assert train_main(logs, path, 4, "--set", "checkpoint.every_n_steps=2", "--set", "checkpoint.keep_last=3") == 0
    return path


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


# ----------------------------------------------------------------------------- the checkpoint's config rules


def test_evaluate_refuses_tasks_in_another_order(logs, run_dir, tmp_path, capsys):
    assert evaluate_main(logs, run_dir, tmp_path, "--set", TASK_ORDER) == 2
    line = one_error_line(capsys)
    assert "tasks: checkpoint [click, like, convert], config [like, click, convert]" in line
    assert not (tmp_path / "eval.json").exists()


def test_evaluate_refuses_another_task_type_and_names_every_difference(logs, run_dir, tmp_path, capsys):
    code = evaluate_main(logs, run_dir, tmp_path, "--set", "tasks.like.type=regression", "--set", "model.tower_dims=[16]")
    assert code == 2
    line = one_error_line(capsys)
    assert "tasks.like.type: checkpoint binary, config regression" in line
    assert "model.tower_dims: checkpoint [32], config [16]" in line


def test_evaluate_accepts_what_may_differ(logs, run_dir, tmp_path):
    """Data, batch size, eval settings, task weights, sharding: none of them defines the model."""
    free = ["--set", "tasks.like.weight=3", "--set", "data.batch_size=7", "--set", "sharding.constraints={}",
            "--set", "eval.batch_size=9"]  # fmt: skip
    code = evaluate_main(logs, run_dir, tmp_path, "--batch-size", "50", *free)
    assert code == 0
    assert (tmp_path / "eval.json").is_file()


def test_resume_refuses_a_changed_task_type(logs, run_dir, tmp_path, capsys):
    copy = copy_run(run_dir, tmp_path)
    assert train_main(logs, copy, 6, "--resume", "--set", "tasks.like.type=regression") == 2
    assert "tasks.like.type: checkpoint binary, config regression" in one_error_line(capsys)
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]


def _string_user_ids(logs: Path, out: Path) -> Path:
    """The eval logs with the integer ``user_id`` column written as strings."""
    out.mkdir()
    for file in sorted((logs / "eval").glob("*.parquet")):
        table = pq.read_table(file)
        i = table.schema.get_field_index("user_id")
        table = table.set_column(i, "user_id", table.column("user_id").cast(pa.string()))
        pq.write_table(table, out / file.name)
    return out


def test_eval_data_with_string_ids_for_an_integer_feature_is_refused(logs, run_dir, tmp_path, capsys):
    data = _string_user_ids(logs, tmp_path / "eval")
    args = ["--config", CONFIG, "--checkpoint", str(run_dir), "--data", str(data), "--no-plots"]
    assert _exit_code(evaluate_job.main, args) == 2
    line = one_error_line(capsys)
    assert "feature 'user_id': trained on integer ids (taken modulo the table size)" in line
    assert "has string ids (hashed)" in line and str(data) in line


def test_periodic_eval_data_with_other_id_types_than_the_train_data_is_refused(logs, tmp_path, capsys):
    data = _string_user_ids(logs, tmp_path / "eval")
    code = train_main(logs, tmp_path / "run", 4, "--eval-data", str(data), "--set", "train.eval_every_n_steps=2")
    assert code == 2
    line = one_error_line(capsys)
    assert f"data.train {logs / 'train'}: feature 'user_id': trained on integer ids" in line and str(data) in line
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.parametrize("damage", ["shard", "metadata", "truncated"])
def test_damaged_newest_checkpoint_is_skipped_by_evaluate_and_named_when_explicit(
    logs, run_dir, tmp_path, capsys, damage
):
    copy = copy_run(run_dir, tmp_path)
    newest = copy / "checkpoints" / "step_00000004"
    shard = next(newest.glob("*.distcp"))
    if damage == "shard":
        shard.unlink()
    elif damage == "metadata":
        (newest / ".metadata").unlink()
    else:
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    assert evaluate_main(logs, copy, tmp_path) == 0
    out = capsys.readouterr().out
    assert f"skipping damaged checkpoint {newest}" in out
    assert "@ step 2 on" in out  # scored the newest whole one

    assert evaluate_main(logs, newest, tmp_path) == 2
    line = one_error_line(capsys)
    assert f"checkpoint {newest} is damaged" in line
    assert (".metadata" if damage == "metadata" else shard.name) in line


def test_resume_falls_back_past_a_damaged_checkpoint(logs, run_dir, tmp_path, capsys):
    copy = copy_run(run_dir, tmp_path)
    newest = copy / "checkpoints" / "step_00000004"
    next(newest.glob("*.distcp")).unlink()
    assert train_main(logs, copy, 6, "--resume") == 0
    out = capsys.readouterr().out
    assert f"skipping damaged checkpoint {newest}" in out
    assert "resumed from" in out and "step_00000002 at step 2" in out


def test_resume_without_rank_states_warns(logs, run_dir, tmp_path, capsys):
    copy = copy_run(run_dir, tmp_path)
    shutil.rmtree(copy / "checkpoints" / "step_00000004" / "ranks")
    assert train_main(logs, copy, 6, "--resume") == 0
    out = capsys.readouterr().out
    assert "lacks ranks/rank0.pt (RNG states)" in out and "at step 4" in out


# ----------------------------------------------------------------------------- one job per run dir

HOLD = """
import sys, time
from fusionrec.pipeline.runlock import RunDirLock
RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_job_on_a_locked_run_dir_is_refused_until_the_holder_dies(logs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train_main(logs, run_dir, 2) == 2
        line = one_error_line(capsys)
        assert f"run dir {run_dir} is in use by another job" in line and f"pid {holder.pid}" in line
        assert "host " in line and "started " in line
        assert not (run_dir / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
        holder.wait()
    assert train_main(logs, run_dir, 2) == 0
    assert (run_dir / "checkpoints" / "step_00000002").is_dir()


# ----------------------------------------------------------------------------- bad data


def _null_likes(logs: Path, out: Path, files: int) -> Path:
    """The train logs with every ``like`` label null in the first ``files`` files."""
    out.mkdir(parents=True)
    for n, file in enumerate(sorted((logs / "train").glob("*.parquet"))):
        table = pq.read_table(file)
        if n < files:
            i = table.schema.get_field_index("like")
            table = table.set_column(i, "like", pa.nulls(table.num_rows, table.schema.field("like").type))
        pq.write_table(table, out / file.name, row_group_size=500)
    return out


def test_bad_data_is_on_the_console_and_stops_past_max_bad_fraction(logs, tmp_path, capsys):
    bad_logs = tmp_path / "logs"
    bad = _null_likes(logs, bad_logs / "train", files=1)
    assert train_main(bad_logs, tmp_path / "visible", 4) == 0
    out = capsys.readouterr().out
    # At each log line, after the step (rows read include the batches the pipeline prefetched):
    assert re.search(r"^step 2/4 .*\ndata \((\d+) rows read, all ranks\): null_label_filled=\1 \(1/row\)$", out, re.M), out
    assert re.search(r"^step 4/4 .*\ndata \(128 rows read, all ranks\): null_label_filled=128 \(1/row\)$", out, re.M), out

    assert train_main(bad_logs, tmp_path / "stopped", 30, "--set", "data.max_bad_fraction=0.1") == 2
    line = one_error_line(capsys)
    first = sorted(bad.glob("*.parquet"))[0]
    assert re.search(r"data.max_bad_fraction 0.1 exceeded: null_label_filled at 1 events per row read \((\d+) in \1 rows", line)
    assert f"first in {first}" in line


# ----------------------------------------------------------------------------- names and one-line errors


def test_a_binary_task_on_a_column_that_is_not_0_or_1_stops_at_the_first_log_line(logs, tmp_path, capsys):
    """hour_of_day (a standardised dense value) declared a binary task: its labels are clipped in
    most rows, a config mistake, which the default data.max_label_out_of_range_fraction (1%) stops."""
    dense = "features.dense=[user_age, item_price, user_activity]"
    tasks = ["--set", "tasks=[{name: click}, {name: hour_of_day}]", "--set", dense]
    assert train_main(logs, tmp_path / "run", 4, *tasks) == 2
    line = one_error_line(capsys)
    assert "task 'hour_of_day' is binary but its label column 'hour_of_day' is outside [0, 1] in" in line, line
    assert re.search(r"values seen in \S+\.parquet: \d+ distinct, from -[\d.]+ to [\d.]+;", line), line
    assert "declare it type: regression" in line and "(data.max_label_out_of_range_fraction 0.01)" in line
    assert not list((tmp_path / "run").glob("checkpoints/step_*"))  # stopped at step 2, before any save
    # As a regression task it trains; the bound can also be lifted for a binary one.
    regression = ["--set", "tasks=[{name: click}, {name: hour_of_day, type: regression}]", tasks[2], tasks[3]]
    assert train_main(logs, tmp_path / "regression", 2, *regression) == 0
    capsys.readouterr()
    lifted = [*tasks, "--set", "data.max_label_out_of_range_fraction=null"]
    assert train_main(logs, tmp_path / "lifted", 2, *lifted) == 0
    final = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("data (")][-1]
    # At the end the bad values come first, the expected counters apart.
    assert re.match(r"data \(\d[\d,]* rows read, all ranks\): label_out_of_range_clipped=[\d,]+ \(0\.\d+/row\)", final), final
    assert "; expected: " in final and final.index("ids_truncated") > final.index("; expected: "), final


def test_eval_data_that_periodic_evaluation_does_not_read_is_said_to_be_unused(logs, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet")
    assert train_main(logs, tmp_path / "run", 2, "--eval-data", str(corrupt)) == 0  # eval_every_n_steps is 0
    out = capsys.readouterr().out
    assert f"note: data.eval {str(corrupt)!r} is not read: train.eval_every_n_steps is 0" in out, out


def test_regression_mse_is_the_mean_squared_error():
    schema = Schema(FeatureSchema(tables=[TableConfig("t", 10, 4)], sparse=[SparseFeature("a", "t")]),
                    [TaskConfig("score", "regression")])  # fmt: skip
    metrics = TrainMetrics(schema, 4, 1, 0, 100, torch.device("cpu"))
    metrics.update(torch.tensor([[1.0], [2.0], [3.0], [4.0]]), torch.zeros(4, 1), torch.ones(4))
    out = metrics.compute()
    assert out["mse/score/window"] == pytest.approx(7.5)  # (1 + 4 + 9 + 16) / 4, not its root
    assert out["rmse/score/window"] == pytest.approx(math.sqrt(7.5))
    assert out["mse/score/lifetime"] == pytest.approx(7.5)


def test_dtrn_over_tables_of_different_dims_is_one_line(logs, tmp_path, capsys):
    assert train_main(logs, tmp_path / "run", 2, "--set", "features.tables.tag.dim=8") == 2
    line = one_error_line(capsys)
    assert "model: DTRN needs one embedding dim for all tables it reads" in line and "'tag': 8" in line


def test_launcher_checks_the_config_and_the_data_before_torchrun(logs, tmp_path):
    """``fusionrec train`` stops in its own process: one line naming the --set argument, exit 2."""
    cmd = [sys.executable, "-m", "fusionrec", "train", "--nproc-per-node", "2", "--config", CONFIG,
           "--run-dir", str(tmp_path / "run"), "--train-data", str(logs / "train")]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run([*cmd, "--set", "train.max_steps=ten"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: --set train.max_steps=ten: train.max_steps: expected an integer, got 'ten'"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "part.parquet").write_bytes(b"not parquet")
    proc = subprocess.run([*cmd, "--train-data", str(broken)], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {broken / 'part.parquet'}: not a readable Parquet file")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # no torchrun, no worker: nothing was written
    assert time.monotonic() - started < 60
