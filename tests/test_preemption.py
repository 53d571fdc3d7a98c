"""Faults a cluster injects into a running 2-rank torchrun job, for real: SIGTERM to torchrun and
SIGUSR1 to the ``fusionrec train`` launcher (preemption: save at an agreed step, exit, resume
exactly), SIGKILL to the torchrun agent (orphaned workers stop), and a worker's data error under
the launcher (one line, exit 2). Training state is compared in this process from the DCP files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusionrec.pipeline import checkpoint as ckpt
from tests.jobs import CONFIG, assert_same_training
from tests.launch import REPO, TORCHRUN, child_env, child_pids, free_port, torchrun

pytestmark = pytest.mark.slow
STEPS = 30
BATCH = 32
GRACE_S = 30  # torchrun's shutdown grace before it SIGKILLs the workers


@pytest.fixture(scope="module")
def logs(small_logs) -> Path:
    return small_logs


def train_args(logs: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["--config", CONFIG, "--train-data", str(logs / "train"), "--run-dir", str(run_dir), "--max-steps", str(steps),
            "--set", f"data.batch_size={BATCH}", "--set", "train.log_every=5", "--set", "data.shuffle=true", *extra]  # fmt: skip


def bare_torchrun(*args: str) -> list[str]:
    return [*TORCHRUN, "--nnodes", "1", "--nproc_per_node", "2", "--master-addr", "127.0.0.1", "--master-port",
            str(free_port()), "-m", "fusionrec.pipeline.train", *args]  # fmt: skip


def launcher(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusionrec", "train", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), *args]  # fmt: skip


@pytest.fixture(scope="module")
def straight(logs, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    torchrun(["-m", "fusionrec.pipeline.train", *train_args(logs, run_dir, STEPS)])
    return run_dir


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=out, stderr=subprocess.STDOUT)


def logged_step(run_dir: Path) -> int:
    """The last step of train_log.jsonl (0 before the first log line)."""
    try:
        lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.strip() and '"loss"' in line]
    return steps[-1] if steps else 0


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while logged_step(run_dir) < step:
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no step {step} within {timeout} s"
        time.sleep(0.1)


def stop_with(proc: subprocess.Popen, sig: int, log: Path) -> tuple[int, float, str]:
    """Send ``sig``; (exit code, seconds until exit, output)."""
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=GRACE_S + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, time.monotonic() - sent, log.read_text()


def test_preempted_twice_by_sigterm_and_sigusr1_resumes_exactly(logs, straight, tmp_path):
    run_dir = tmp_path / "run"

    # 1. SIGTERM to torchrun, as Kubernetes and Slurm send it: the agent forwards it to both workers.
    log = tmp_path / "sigterm.log"
    proc = start(bare_torchrun(*train_args(logs, run_dir, STEPS)), log)
    wait_for_step(proc, run_dir, 5, log)
    code, seconds, out = stop_with(proc, signal.SIGTERM, log)
    stopped = re.search(r"stopped by SIGTERM at step (\d+): checkpoint (\S+); continue with --resume", out)
    assert stopped, out[-4000:]
    first = int(stopped.group(1))
    assert 5 <= first < STEPS and seconds < GRACE_S, (first, seconds)
    assert "[rank" not in out and "Unable to shutdown process" not in out  # no worker failed or was SIGKILLed
    assert code == 1  # torchrun itself re-raises the signal (SignalException); the launcher maps it to 0
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == [f"step_{first:08d}"]
    assert ckpt.damage(run_dir / "checkpoints" / f"step_{first:08d}") is None

    # 2. Resume under the launcher; SIGUSR1 (Slurm's --signal) to it saves again, and it exits 0.
    log = tmp_path / "sigusr1.log"
    proc = start(launcher(*train_args(logs, run_dir, STEPS, "--resume")), log)
    wait_for_step(proc, run_dir, first + 5, log)
    code, seconds, out = stop_with(proc, signal.SIGUSR1, log)
    assert code == 0, out[-4000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{first:08d}'} at step {first}" in out
    second = int(re.search(r"stopped by SIGUSR1 at step (\d+)", out).group(1))
    assert first + 5 <= second < STEPS and seconds < GRACE_S, (second, seconds)
    assert "Traceback" not in out and "SignalException" not in out

    # 3. Resume to the end: the uninterrupted run's model and optimizer state (no batch twice, none skipped).
    torchrun(["-m", "fusionrec.pipeline.train", *train_args(logs, run_dir, STEPS, "--resume")])
    final = f"step_{STEPS:08d}"
    assert_same_training(straight / "checkpoints" / final, run_dir / "checkpoints" / final, tmp_path)


def test_a_signal_to_every_process_at_once_still_saves(logs, tmp_path):
    """What Slurm's scancel and --signal do: SIGTERM to the launcher, the agent and both workers at
    the same moment (the agent, signalled twice, may exit before its workers have saved). The
    workers read through DataLoader worker processes, which the agent's signal to each worker's
    process group must not kill."""
    run_dir, log = tmp_path / "run", tmp_path / "all.log"
    proc = start(launcher(*train_args(logs, run_dir, STEPS, "--set", "data.num_workers=2")), log)
    wait_for_step(proc, run_dir, 5, log)
    agent = child_pids(proc.pid)
    assert len(agent) == 1, agent
    workers = child_pids(agent[0])
    assert len(workers) == 2 and all(child_pids(w) for w in workers), workers  # each with its readers
    for pid in [*workers, agent[0]]:
        os.kill(pid, signal.SIGTERM)
    code, seconds, out = stop_with(proc, signal.SIGTERM, log)
    assert code == 0 and seconds < GRACE_S, out[-4000:]
    step = int(re.search(r"stopped by SIGTERM at step (\d+)", out).group(1))
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == [f"step_{step:08d}"]
    assert ckpt.damage(run_dir / "checkpoints" / f"step_{step:08d}") is None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_of_a_killed_agent_stop_without_publishing(logs, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "orphans.log"
    proc = start(bare_torchrun(*train_args(logs, run_dir, 400, "--set", "checkpoint.every_n_steps=5",
                                          "--set", "train.epochs=10")), log)  # fmt: skip
    wait_for_step(proc, run_dir, 10, log)  # the step-5 checkpoint is published by then
    workers = child_pids(proc.pid)
    assert len(workers) == 2, workers
    killed = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = logged_step(run_dir)
    while any(_alive(w) for w in workers):
        assert time.monotonic() - killed < 10, f"orphaned workers {workers} still running after 10 s"
        time.sleep(0.1)
    gone_after = time.monotonic() - killed
    time.sleep(1)
    published = ckpt.list_checkpoints(run_dir)
    assert published and all(ckpt.damage(p) is None for p in published)  # whatever was published is whole
    assert int(published[-1].name[5:]) <= at_kill + 5  # at most the save that was under way
    assert logged_step(run_dir) <= at_kill + 5, "the orphans went on training"
    assert "the torchrun agent" in log.read_text() and gone_after < 10


def test_a_workers_data_error_under_the_launcher_is_one_line_and_exit_2(logs, tmp_path):
    bad = tmp_path / "train"
    bad.mkdir()
    for n, file in enumerate(sorted((logs / "train").glob("*.parquet"))):
        table = pq.read_table(file)
        if n == 0:
            i = table.schema.get_field_index("like")
            table = table.set_column(i, "like", pa.nulls(table.num_rows, table.schema.field("like").type))
        pq.write_table(table, bad / file.name, row_group_size=500)
    args = train_args(tmp_path, tmp_path / "run", STEPS, "--set", "data.max_bad_fraction=0.05", "--set", "data.shuffle=false")
    proc = subprocess.run(launcher(*args), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert re.fullmatch(r"error: rank [01]/2: data.max_bad_fraction 0.05 exceeded: null_label_filled .*", lines[0])
    assert str(sorted(bad.glob("*.parquet"))[0]) in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr and "ChildFailedError" not in proc.stdout + proc.stderr
    assert os.environ.get("FUSIONREC_REPORT_DIR") is None
