"""Fault tolerance on one machine over loopback: an elastic restart after a worker is SIGKILLed
mid-training. (Two nodes meeting at a c10d rendezvous and training like one are tested through
the image's entrypoint, tests/test_docker.py.)"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.jobs import BATCH, assert_same_training, meta, read_log, train, train_args
from tests.launch import REPO, TORCHRUN, child_env, child_pids, free_port

pytestmark = pytest.mark.slow
STEPS = 80


@pytest.fixture(scope="module")
def straight(demo_logs, tmp_path_factory):
    """An uninterrupted single-node 2-rank run: the reference for the runs below."""
    run_dir = tmp_path_factory.mktemp("straight")
    train(demo_logs, run_dir, STEPS)
    return run_dir


def _popen(args, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*TORCHRUN, *args], cwd=REPO, env=child_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, timeout: int = 300) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}\n{text[-6000:]}"
    return text


def test_killed_worker_restarts_and_resumes_from_last_checkpoint(demo_logs, straight, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "elastic.log"
    args = ["--nnodes", "1", "--nproc_per_node", "2", "--max-restarts", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
            *train_args(demo_logs, run_dir, STEPS, "--set", "checkpoint.every_n_steps=20")]
    agent = _popen(args, log)
    first = run_dir / "checkpoints" / "step_00000020" / "meta.json"
    deadline = time.time() + 240
    while not first.exists():
        assert agent.poll() is None, log.read_text()[-4000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    workers = child_pids(agent.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)
    out = _finish(agent, log)

    assert "resumed from" in out  # the restarted group found the last complete checkpoint itself
    final = meta(run_dir / "checkpoints" / f"step_{STEPS:08d}")
    assert final["samples_seen"] == STEPS * BATCH * 2  # as many samples as the uninterrupted run
    # After the resume, training continued from the checkpoint's step and logged each later step once.
    log = read_log(run_dir)
    resumes = [i for i, r in enumerate(log) if r.get("event") == "resumed"]
    assert len(resumes) == 1
    resumed = log[resumes[0]]
    assert resumed["attempt"] == 1 and resumed["step"] >= 20 and resumed["step"] % 20 == 0
    after = [r["step"] for r in log[resumes[0] + 1 :] if "loss" in r]
    assert after == list(range(resumed["step"] + 10, STEPS + 1, 10))
    # No batch was trained twice or skipped after the resume: the model and optimizer state equal the uninterrupted run's.
    final = f"step_{STEPS:08d}"
    assert_same_training(straight / "checkpoints" / final, run_dir / "checkpoints" / final, tmp_path)
