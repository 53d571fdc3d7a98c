"""The demo slice for real: synthetic Parquet logs -> 2-rank sharded training under torchrun
(gloo) -> DCP checkpoints -> evaluation in one process; plus resume and CLI errors."""

import json
import sys

import pytest

from tests.launch import REPO, run, torchrun

pytestmark = pytest.mark.slow

CONFIG = str(REPO / "configs/demo.yaml")
BATCH = 128
TRAIN = ["-m", "pipeline.train", "--config", CONFIG, "--set", f"data.batch_size={BATCH}", "--set", "train.log_every=10"]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    out = tmp_path_factory.mktemp("logs")
    run([sys.executable, "-m", "datasets.synthetic", "--config", CONFIG, "--out", str(out), "--rows", "40000"])
    return out


def _train(logs, run_dir, max_steps, *extra):
    return torchrun(
        [*TRAIN, "--train-data", str(logs / "train"), "--run-dir", str(run_dir), "--max-steps", str(max_steps), *extra]
    )


def _evaluate(logs, checkpoint, out):
    run(
        [sys.executable, "-m", "pipeline.evaluate", "--config", CONFIG, "--checkpoint", str(checkpoint),
         "--data", str(logs / "eval" / "*.parquet"), "--out", str(out)]
    )
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def trained(logs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    proc = _train(logs, run_dir, 120, "--set", "checkpoint.every_n_steps=40", "--set", "checkpoint.keep_last=2")
    return run_dir, proc


def test_two_rank_training_writes_dcp_checkpoints(trained):
    run_dir, proc = trained
    assert "row_wise" in proc.stdout and "column_wise" in proc.stdout and "table_wise" in proc.stdout
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_00000080", "step_00000120"]  # keep_last=2 pruned step 40
    final = run_dir / "checkpoints" / "step_00000120"
    meta = json.loads((final / "meta.json").read_text())
    assert meta["step"] == 120 and meta["world_size"] == 2 and meta["samples_seen"] == 120 * BATCH * 2
    assert (final / ".metadata").is_file() and list(final.glob("*.distcp"))
    plan = {row["table"]: row for row in json.loads((final / "plan.json").read_text())}
    assert plan["user"]["sharding_type"] == "row_wise" and plan["user"]["ranks"] == [0, 1]
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(10, 121, 10))
    assert set(log[-1]["task_loss"]) == {"click", "like", "convert"} and log[-1]["samples_per_s"] > 0
    assert log[-1]["loss"] < log[0]["loss"]


def test_evaluation_of_two_rank_checkpoint_in_one_process(logs, trained, tmp_path):
    run_dir, _ = trained
    result = _evaluate(logs, run_dir, tmp_path / "eval.json")  # a run dir resolves to its newest checkpoint
    assert result["model"] == "dtrn+adatt"
    assert result["checkpoint"].endswith("step_00000120") and result["step"] == 120
    assert result["samples"] == 8000  # 40000 rows x eval_fraction 0.2, every eval row scored
    tasks = result["tasks"]
    assert set(tasks) == {"click", "like", "convert"}
    for name, metrics in tasks.items():
        assert isinstance(metrics["count"], int)
        for key in ("auc", "ne", "logloss", "calibration"):
            assert isinstance(metrics[key], float)
        # 120 steps of 256 samples learn every task: an untrained model sits at AUC 0.5, NE >= 1.
        assert metrics["auc"] > 0.6, (name, metrics)
        assert metrics["ne"] < 1.0, (name, metrics)
    assert tasks["click"]["count"] == 8000
    assert tasks["convert"]["count"] < tasks["click"]["count"]  # scored on clicked rows only


def test_resume_continues_exactly_where_it_stopped(logs, trained, tmp_path):
    run_dir, _ = trained
    straight = tmp_path / "straight"
    _train(logs, straight, 80)
    resumed = tmp_path / "resumed"
    _train(logs, resumed, 40)
    proc = _train(logs, resumed, 80, "--resume")
    assert "resumed from" in proc.stdout and "step_00000040" in proc.stdout
    meta = json.loads((resumed / "checkpoints" / "step_00000080" / "meta.json").read_text())
    assert meta["step"] == 80 and meta["samples_seen"] == 80 * BATCH * 2
    a = _evaluate(logs, straight, tmp_path / "a.json")["tasks"]
    b = _evaluate(logs, resumed, tmp_path / "b.json")["tasks"]
    for task in a:
        assert b[task]["logloss"] == pytest.approx(a[task]["logloss"], rel=1e-5), task


def test_single_process_training_without_torchrun(logs, tmp_path):
    proc = run(
        [sys.executable, *TRAIN, "--train-data", str(logs / "train"), "--run-dir", str(tmp_path), "--max-steps", "3"]
    )
    assert "on 1 rank(s)" in proc.stdout
    assert json.loads((tmp_path / "checkpoints" / "step_00000003" / "meta.json").read_text())["world_size"] == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "train.bogus=1"], ["demo.yaml", "train.bogus", "unknown key"]),
        (["--train-data", "/nonexistent/*.parquet"], ["/nonexistent/*.parquet"]),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, words):
    import subprocess

    from tests.launch import child_env

    cmd = [sys.executable, "-m", "pipeline.train", "--config", CONFIG, "--run-dir", str(tmp_path), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for word in words:
        assert word in line
