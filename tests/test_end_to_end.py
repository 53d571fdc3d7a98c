"""The demo slice for real: synthetic Parquet logs -> 2-rank sharded training under torchrun
(gloo) -> DCP checkpoints -> evaluation in one process; plus resume and CLI errors."""

import shutil
import subprocess
import sys

import pytest

from tests.jobs import BATCH, CONFIG, TRAIN, assert_same_training, evaluate, meta, read_log, train
from tests.launch import REPO, child_env, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(demo_logs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    proc = train(demo_logs, run_dir, 120, "--set", "checkpoint.every_n_steps=40", "--set", "checkpoint.keep_last=2")
    return run_dir, proc


def test_two_rank_training_writes_dcp_checkpoints(trained):
    run_dir, proc = trained
    assert "row_wise" in proc.stdout and "column_wise" in proc.stdout and "table_wise" in proc.stdout
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_00000080", "step_00000120"]  # keep_last=2 pruned step 40
    final = run_dir / "checkpoints" / "step_00000120"
    m = meta(final)
    assert m["step"] == 120 and m["world_size"] == 2 and m["samples_seen"] == 120 * BATCH * 2
    assert m["trainer"]["batch_in_epoch"] == 120 and "lr_scheduler" in m
    assert (final / ".metadata").is_file() and list(final.glob("*.distcp"))
    assert sorted(p.name for p in (final / "ranks").iterdir()) == ["rank0.pt", "rank1.pt"]
    plan = {row["table"]: row for row in __import__("json").loads((final / "plan.json").read_text())}
    assert plan["user"]["sharding_type"] == "row_wise" and plan["user"]["ranks"] == [0, 1]
    log = read_log(run_dir)
    assert [r["step"] for r in log] == list(range(10, 121, 10))
    assert set(log[-1]["task_loss"]) == {"click", "like", "convert"} and log[-1]["samples_per_s"] > 0
    assert log[-1]["loss"] < log[0]["loss"]
    metrics = log[-1]["metrics"]  # torchrec.metrics, windowed and lifetime, per task
    for task in ("click", "like", "convert"):
        for name in (f"ne/{task}/window", f"ne/{task}/lifetime", f"auc/{task}/window", f"calibration/{task}/lifetime",
                     f"ctr/{task}/window"):
            assert name in metrics, name
    assert metrics["auc/click/window"] > 0.55
    assert metrics["throughput/total_examples"] == 120 * BATCH * 2
    data = log[-1]["data"]  # the reader's counters, summed over ranks
    assert data["rows_dropped_partial_batch"] == 32000 - 2 * (16000 // BATCH) * BATCH
    assert data["ids_truncated"] > 0  # the synthetic sequences run past max_len


def test_evaluation_of_two_rank_checkpoint_in_one_process(demo_logs, trained, tmp_path):
    run_dir, _ = trained
    result = evaluate(demo_logs, run_dir, tmp_path / "eval.json")  # a run dir resolves to its newest checkpoint
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


def test_checkpoint_reshards_into_two_ranks_with_another_plan(demo_logs, trained, tmp_path):
    """Saved with user row-wise / item column-wise; loaded by 2 ranks with user table-wise and
    item row-wise, and by 1 process: the same predictions, hence the same metrics."""
    run_dir, _ = trained
    single = evaluate(demo_logs, run_dir, tmp_path / "one.json")
    other_plan = ["--set", "sharding.constraints.user.sharding_types=[table_wise]",
                  "--set", "sharding.constraints.item.sharding_types=[row_wise]"]
    double = evaluate(demo_logs, run_dir, tmp_path / "two.json", *other_plan, nproc=2)
    assert double["world_size"] == 2 and double["samples"] == single["samples"]
    for task, metrics in single["tasks"].items():
        for key in ("auc", "logloss", "calibration"):
            assert double["tasks"][task][key] == pytest.approx(metrics[key], rel=1e-6), (task, key)


def test_resume_in_file_order_continues_exactly(demo_logs, trained, tmp_path):
    """The 120-step run's step-80 checkpoint, resumed to step 120, gives the same model and
    optimizer state as the uninterrupted run: no batch trained twice, none skipped."""
    run_dir, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir / "checkpoints" / "step_00000080", resumed / "checkpoints" / "step_00000080")
    assert meta(resumed / "checkpoints" / "step_00000080")["reader"]["batches_consumed"] == 80
    proc = train(demo_logs, resumed, 120, "--resume", "--set", "checkpoint.every_n_steps=40")
    assert "resumed from" in proc.stdout and "step_00000080" in proc.stdout
    m = meta(resumed / "checkpoints" / "step_00000120")
    assert m["step"] == 120 and m["samples_seen"] == 120 * BATCH * 2
    assert_same_training(run_dir / "checkpoints" / "step_00000120", resumed / "checkpoints" / "step_00000120", tmp_path)


def test_resume_shuffled_continues_exactly(demo_logs, tmp_path):
    """Shuffled row groups and a shuffle buffer: 30 steps, then 30 resumed steps (the reader
    seeks to its saved position) give the same state as 60 straight steps."""
    data = ["--set", "data.shuffle=true", "--set", "data.shuffle_buffer_rows=3000"]
    straight = tmp_path / "straight"
    train(demo_logs, straight, 60, *data)
    resumed = tmp_path / "resumed"
    train(demo_logs, resumed, 30, *data)
    assert meta(resumed / "checkpoints" / "step_00000030")["reader"]["batches_consumed"] == 30
    proc = train(demo_logs, resumed, 60, "--resume", *data)
    assert "resumed from" in proc.stdout and "step_00000030" in proc.stdout
    m = meta(resumed / "checkpoints" / "step_00000060")
    assert m["step"] == 60 and m["samples_seen"] == 60 * BATCH * 2
    assert_same_training(straight / "checkpoints" / "step_00000060", resumed / "checkpoints" / "step_00000060", tmp_path)


def test_resume_mid_epoch_on_one_rank_trains_the_rest_of_the_epoch(demo_logs, trained, tmp_path):
    """The 2-rank run's step-80 checkpoint (80 of 125 steps of the epoch) resumed on 1 rank:
    the reader re-splits the 32,000 - 80 x 2 x 128 = 11,520 rows no rank had consumed into
    90 batches, so the epoch ends at step 170 having trained each of its 32,000 rows once
    (the row-level check is tests/test_datasets_epochs.py), and the lr schedule decays over
    those 170 steps instead of the 250 a 1-rank run would take."""
    run_dir, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir / "checkpoints" / "step_00000080", resumed / "checkpoints" / "step_00000080")
    schedule = "train.lr_schedule={warmup_steps: 0, decay: linear, min_lr_ratio: 0.5}"
    proc = train(demo_logs, resumed, 1000, "--resume", "--set", schedule, nproc=1)
    assert "world_size 2 -> 1" in proc.stdout and "11,520 of its 32,000 rows remain" in proc.stdout
    m = meta(resumed / "checkpoints" / "step_00000170")
    assert m["world_size"] == 1 and m["samples_seen"] == 32000
    assert (m["reader"]["epoch"], m["reader"]["batches_consumed"]) == (1, 0)
    log = read_log(resumed)
    assert [r["event"] for r in log if "event" in r] == ["resumed", "epoch_resplit"]
    assert [r["lr"] for r in log if "lr" in r][-1] == pytest.approx(0.002 * 0.5)


def test_resume_mid_epoch_on_two_ranks_from_one(small_logs, tmp_path):
    """1 rank, 10 of 25 steps; then 2 ranks take the 1,920 rows left: 7 batches of 128 each,
    64 rows per rank dropped to keep the ranks in step."""
    one = ["--set", "checkpoint.every_n_steps=10", "--set", "train.epochs=1"]
    train(small_logs, tmp_path, 10, *one, nproc=1)
    proc = train(small_logs, tmp_path, 1000, "--resume", *one)
    assert "world_size 1 -> 2" in proc.stdout and "1,920 of its 3,200 rows remain" in proc.stdout
    m = meta(tmp_path / "checkpoints" / "step_00000017")
    assert m["world_size"] == 2 and m["samples_seen"] == 10 * BATCH + 7 * 2 * BATCH
    assert read_log(tmp_path)[-1]["data"]["rows_dropped_partial_batch"] == 2 * 64


def test_single_process_training_without_torchrun(demo_logs, tmp_path):
    proc = run([sys.executable, *TRAIN, "--train-data", str(demo_logs / "train"), "--run-dir", str(tmp_path),
                "--max-steps", "3"])
    assert "on 1 rank(s)" in proc.stdout
    assert meta(tmp_path / "checkpoints" / "step_00000003")["world_size"] == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "train.bogus=1"], ["--set train.bogus=1", "train.bogus", "unknown key"]),
        (["--train-data", "/nonexistent/*.parquet"], ["/nonexistent/*.parquet"]),
        (["--set", "train.device=cuda"], ["no CUDA device"]),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, words):
    cmd = [sys.executable, "-m", "fusionrec.pipeline.train", "--config", CONFIG, "--run-dir", str(tmp_path), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for word in words:
        assert word in line


def test_evaluation_report_with_intervals_plots_and_fusion_matrices(demo_logs, trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "report" / "eval.json"
    predictions = tmp_path / "predictions.parquet"
    result = evaluate(demo_logs, run_dir, out, "--bootstrap", "20", "--fusion-batches", "5",
                      "--predictions", str(predictions))
    for task, metrics in result["tasks"].items():
        lo, hi = metrics["ci"]["auc"]
        assert lo <= metrics["auc"] <= hi and hi - lo < 0.2, task
    assert result["bootstrap"]["replicates"] == 20
    levels = result["fusion"]  # the demo's AdaTT has 2 levels; the shared unit fuses at level 1 only
    assert [len(level["rows"]) for level in levels] == [4, 3]
    for level in levels:
        assert level["columns"] == ["click", "like", "convert", "shared"]
        for row in level["matrix"]:
            assert sum(row) == pytest.approx(1.0, abs=1e-6)  # gate mass over all experts
    summary = out.with_suffix(".md").read_text()
    assert "| click |" in summary and "## Fusion level 2" in summary and "bootstrap" in summary
    for task, metrics in result["tasks"].items():  # the demo schema has a group (user) column
        assert 0.55 < metrics["gauc"] < 1.0 and metrics["gauc_groups"] > 100, task
    import pyarrow.parquet as pq

    rows = pq.read_table(predictions)
    assert rows.column("row_id").to_pylist() == list(range(8000))
    files = sorted((demo_logs / "eval").glob("*.parquet"))
    truth = [v for f in files for v in pq.read_table(f, columns=["click"]).column("click").to_pylist()]
    assert rows.column("label_click").to_pylist() == truth  # row ids follow the files' order
    assert 0.0 < min(rows.column("prediction_click").to_pylist()) < max(rows.column("prediction_click").to_pylist()) < 1.0
    for name in ("roc.png", "calibration.png", "fusion.png"):
        png = out.parent / "eval_plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name


def test_checkpoint_of_another_model_names_what_differs(demo_logs, trained, tmp_path):
    """The checkpoint's config.yaml names the config keys that differ; a checkpoint without one
    (written before config.yaml was saved) still fails naming the tables and parameters."""
    run_dir, _ = trained
    newest = run_dir / "checkpoints" / "step_00000120"
    bare = tmp_path / "bare"
    shutil.copytree(newest, bare)
    (bare / "config.yaml").unlink()
    lines = []
    for checkpoint in (newest, bare):
        cmd = [sys.executable, "-m", "fusionrec.pipeline.evaluate", "--config", CONFIG, "--checkpoint", str(checkpoint),
               "--data", str(demo_logs / "eval"), "--set", "features.tables.0.num_embeddings=999",
               "--set", "model.tower_dims=[16]"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        lines.append(proc.stderr.strip().splitlines()[-1])
    assert "the config defines another model than the checkpoint's config.yaml" in lines[0]
    assert "features.tables.user.num_embeddings: checkpoint 20000, config 999" in lines[0]
    assert "model.tower_dims: checkpoint [32], config [16]" in lines[0]
    assert "does not match the configured model" in lines[1]
    assert "table 'user'" in lines[1] and "[20000, 16]" in lines[1] and "[999, 16]" in lines[1]
    assert "towers" in lines[1]
