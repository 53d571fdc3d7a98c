"""Follow mode for real: a 2-rank torchrun job trains an hourly partitioned log while a writer
process adds partitions; a partition written slowly (marker last) waits for its marker; the job
is SIGKILLed inside a partition and resumed on 1 rank; a partition that lands late is trained
when seen. Every row of every partition must be trained exactly once across the two runs,
checked row by row from the batches the train loop was handed (tests/workers/follow_audit.py).
Also: a partition that fails the schema check stops the job with one line naming its file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fusionrec.datasets.synthetic import SyntheticWorld, load_config as load_synthetic, partition_name, write_partition
from fusionrec.pipeline import artifact, checkpoint as ckpt
from fusionrec.pipeline.logs import TRAIN_LOG, read_jsonl
from tests.launch import REPO, TORCHRUN, child_env, child_pids, free_port

pytestmark = pytest.mark.slow
CONFIG = str(REPO / "configs/stream.yaml")
WORKER = str(REPO / "tests/workers/follow_audit.py")
ROWS = 460  # per partition: 230 per rank on 2 ranks, 7 batches of 32 and 6 rows left out by drop_last
SLOW_ROWS = 2 * ROWS  # the slow partition: long enough to be killed inside whatever the machine's speed
DENSE = ["user_age", "item_price", "hour_of_day", "user_activity"]
SETTINGS = ["data.batch_size=32", "train.log_every=2", "checkpoint.every_n_steps=3", "checkpoint.keep_last=3",
            "train.follow.poll_interval_s=0.3", "train.follow.idle_timeout_s=5",
            "train.follow.export_every_n_partitions=2", "train.follow.keep_exports=2"]  # fmt: skip


def sets(settings: list[str]) -> list[str]:
    return [arg for s in settings for arg in ("--set", s)]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def records(run_dir: Path) -> list[dict]:
    """The run's train_log.jsonl so far (read while the job appends: a torn last line is left out)."""
    return read_jsonl(run_dir / TRAIN_LOG)


def trained(run_dir: Path) -> list[str]:
    return [r["partition"] for r in records(run_dir) if r.get("event") == "partition_trained"]


def wait_until(condition, what: str, procs: list[tuple[subprocess.Popen, Path]], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc, log in procs:
            assert proc.poll() is None, f"exited {proc.returncode} while waiting for {what}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{procs[0][1].read_text()[-4000:]}"
        time.sleep(0.2)


def row_keys(table) -> list[tuple]:
    """Each row's identity: the bit patterns of its float32 dense features."""
    dense = np.stack([table.column(c).to_numpy().astype(np.float32) for c in DENSE], axis=1)
    return [tuple(r) for r in dense.view(np.int32).tolist()]


def audit(audit_dir: Path, up_to_step: float) -> dict[str, list[tuple]]:
    """Rows per partition of one run's batches (all ranks) trained at steps <= up_to_step."""
    out: dict[str, list[tuple]] = {}
    for path in audit_dir.glob("pid*-rank*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["step"] <= up_to_step:
                out.setdefault(entry["partition"], []).extend(tuple(r) for r in entry["rows"])
    return out


def test_follow_trains_every_row_once_across_a_kill_and_a_resume_on_another_world_size(tmp_path):
    root, run_dir = tmp_path / "log", tmp_path / "run"
    audits = [tmp_path / "audit1", tmp_path / "audit2"]
    for folder in audits:
        folder.mkdir()
    synth = [sys.executable, "-m", "fusionrec.datasets.synthetic", "--config", CONFIG, "--out", str(root),
             "--rows", str(ROWS)]  # fmt: skip
    subprocess.run([*synth, "--partitions", "2"], cwd=REPO, env=child_env(), check=True, capture_output=True)
    train = ["--config", CONFIG, "--train-data", str(root), "--run-dir", str(run_dir), *sets(SETTINGS)]

    # Run 1: 2 ranks, while a writer process adds partitions 2 and 3, 2 s apart.
    log1 = tmp_path / "run1.log"
    run1 = start([*TORCHRUN, "--nnodes", "1", "--nproc_per_node", "2", "--master-addr", "127.0.0.1", "--master-port",
                  str(free_port()), WORKER, str(audits[0]), "--", *train], log1)  # fmt: skip
    writer = start([*synth, "--partitions", "2", "--first-partition", "2", "--interval-s", "2"], tmp_path / "writer.log")
    assert writer.wait(timeout=120) == 0, (tmp_path / "writer.log").read_text()

    # Partition 4 is written slowly: its data files first, its marker only once the job has
    # caught up and said it is waiting for it.
    schema, synthetic_cfg = load_synthetic(CONFIG)
    world = SyntheticWorld(schema, synthetic_cfg)
    write_partition(world, root, 4, SLOW_ROWS, files=2, marker=None)
    slow = partition_name(4)
    wait_until(lambda: "1 partition(s) without _SUCCESS" in log1.read_text(), "caught-up line", [(run1, log1)])
    assert trained(run_dir) == [partition_name(i) for i in range(4)]
    (root / slow / "_SUCCESS").touch()

    # SIGKILL every process of run 1 once partition 4 has a checkpoint inside it.
    def checkpoint_inside_slow() -> bool:
        starts = [r["step"] for r in records(run_dir) if r.get("event") == "progressive_eval" and r["partition"] == slow]
        return bool(starts) and any(int(p.name.rsplit("_", 1)[1]) > starts[0] for p in ckpt.list_checkpoints(run_dir))

    wait_until(checkpoint_inside_slow, "a checkpoint inside the slow partition", [(run1, log1)])
    for pid in [*child_pids(run1.pid), run1.pid]:
        os.kill(pid, signal.SIGKILL)
    run1.wait(timeout=30)
    assert slow not in trained(run_dir)

    # Run 2: 1 rank, --resume; partition 6 is there, partition 5 lands after 6 was trained.
    write_partition(world, root, 6, ROWS, files=2)
    log2 = tmp_path / "run2.log"
    run2 = start([sys.executable, WORKER, str(audits[1]), "--", *train, "--resume"], log2)
    wait_until(lambda: partition_name(6) in trained(run_dir), "partition 6 trained", [(run2, log2)])
    write_partition(world, root, 5, ROWS, files=2)
    assert run2.wait(timeout=240) == 0, log2.read_text()[-4000:]
    out2 = log2.read_text()
    assert "no new partition in" in out2 and "done:" in out2, out2[-3000:]

    # Each partition trained once, in order of landing; the late one said so.
    order = [0, 1, 2, 3, 4, 6, 5]
    assert trained(run_dir) == [partition_name(i) for i in order]
    log = records(run_dir)
    assert [r["partition"] for r in log if r.get("event") == "late_partition"] == [partition_name(5)]
    resumed = [r for r in log if r.get("event") == "resumed"]
    assert len(resumed) == 1
    resumed_at = resumed[0]["step"]

    # Exactly once, row by row: run 1's batches up to the checkpoint run 2 resumed from, then
    # all of run 2's, against the rows of each partition's files.
    first, second = audit(audits[0], resumed_at), audit(audits[1], float("inf"))
    dropped = {r["partition"]: r["rows_dropped"] for r in log if r.get("event") == "partition_trained"}
    for i in order:
        name = partition_name(i)
        keys = row_keys(pq.read_table(root / name, columns=DENSE))
        assert len(set(keys)) == len(keys) == (SLOW_ROWS if name == slow else ROWS)  # row identities are unique
        seen = first.get(name, []) + second.get(name, [])
        twice = [k for k, n in Counter(seen).items() if n > 1]
        assert not twice, f"{name}: {len(twice)} rows trained twice"
        assert set(seen) <= set(keys), f"{name}: rows from elsewhere"
        assert len(keys) - len(seen) == dropped[name], f"{name}: {len(keys) - len(seen)} rows missing, {dropped[name]} dropped"
        assert dropped[name] < 32 * 2, name  # at most a partial batch per rank
    assert first.get(slow) and second.get(slow), "the kill was meant to split the slow partition between the runs"

    # Progressive evaluation of every partition before it was trained on, with per-task metrics.
    scored = {r["partition"]: r for r in log if r.get("event") == "progressive_eval"}
    assert set(scored) == {partition_name(i) for i in order}
    for name, r in scored.items():
        assert set(r["progressive"]) == {"click", "like", "convert"}, r
        assert 0.0 < r["progressive"]["click"]["auc"] < 1.0
        assert r["step"] <= next(t["step"] for t in log if t.get("event") == "partition_trained" and t["partition"] == name)
    # Lag: complete partitions waiting behind the one in training, as rank 0 saw them when it
    # chose it (run 2 resumed partition 4 with 6 waiting; 5 landed only after 6 was trained).
    lag = {r["partition"]: r["lag_partitions"] for r in log if r.get("event") == "partition_trained"}
    assert lag[partition_name(0)] >= 1 and lag[slow] == 1 and lag[partition_name(6)] == lag[partition_name(5)] == 0, lag
    run2_slow = [r for r in log[log.index(resumed[0]) :] if r.get("partition") == slow and "loss" in r]
    assert run2_slow and all(r["lag_partitions"] == 1 for r in run2_slow), run2_slow

    # Exports after 2, 4 and 6 partitions; the last 2 kept; latest points at the newest.
    exports = run_dir / "exports"
    assert sorted(p.name for p in exports.iterdir() if not p.is_symlink()) == ["000004", "000006"]
    assert os.readlink(exports / "latest") == "000006"
    model, manifest = artifact.load_model(exports / "latest")  # as a server picks it up
    assert manifest["table_dtype"].startswith("int8"), manifest["table_dtype"]
    inputs, expected = (torch.load(exports / "latest" / f) for f in (artifact.EXAMPLE_INPUTS, artifact.EXAMPLE_OUTPUTS))
    torch.testing.assert_close(model(*inputs), expected)
    assert [r["version"] for r in log if r.get("event") == "exported"] == ["000002", "000004", "000006"]

    # evaluate writes the run's progressive curve (no eval data needed) and its plot.
    out = tmp_path / "eval" / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "fusionrec.pipeline.evaluate", "--config", CONFIG, "--checkpoint",
                           str(run_dir), "--out", str(out)], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = json.loads(out.read_text())["progressive"]
    assert [p["partition"] for p in curve] == [partition_name(i) for i in order]
    assert curve[-1]["tasks"] == scored[partition_name(5)]["progressive"]
    assert (out.parent / "eval_plots" / "progressive.png").is_file()


def test_a_partition_failing_the_schema_check_stops_the_job_with_one_line_and_a_restart_needs_resume(tmp_path):
    root, run_dir = tmp_path / "log", tmp_path / "run"
    schema, synthetic_cfg = load_synthetic(CONFIG)
    world = SyntheticWorld(schema, synthetic_cfg)
    write_partition(world, root, 0, 300)
    bad = write_partition(world, root, 1, 300, marker=None)
    table = pq.read_table(bad / "part-00000.parquet").drop_columns(["item_price"])
    pq.write_table(table, bad / "part-00000.parquet")
    (bad / "_SUCCESS").touch()
    proc = subprocess.run([sys.executable, "-m", "fusionrec.pipeline.train", "--config", CONFIG, "--train-data", str(root),
                           "--run-dir", str(run_dir), *sets(SETTINGS)], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad / "part-00000.parquet") in errors[0] and "item_price" in errors[0], proc.stderr
    assert trained(run_dir) == [partition_name(0)]  # the good partition before it was trained and kept

    # Restarted without --resume, the job would train partition 0 again: refused.
    again = subprocess.run([sys.executable, "-m", "fusionrec.pipeline.train", "--config", CONFIG, "--train-data", str(root),
                            "--run-dir", str(run_dir), *sets(SETTINGS)], cwd=REPO, env=child_env(), capture_output=True,
                           text=True, timeout=240)  # fmt: skip
    assert again.returncode == 2, again.stderr[-3000:]
    assert "holds checkpoints of a follow run; continue it with --resume" in again.stderr
    assert trained(run_dir) == [partition_name(0)]
