"""Every job ends cleanly: no thread of a process group (or of fusionrec's own) is alive when the
interpreter tears down, and a finished job exits 0 (docs/reliability.md, "Exit codes").

The abort these guard against (``terminate called without an active exception``, SIGABRT after
the last step) was a race, about one job in ten; what decides it is deterministic and checked
here: after the job's exit path the gloo backend's threads are gone. ``benchmarks/soak.py``
runs the jobs themselves a hundred times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch.distributed as dist

from fusionrec.pipeline.distributed import init_distributed, shutdown
from fusionrec.pipeline.lifecycle import ParentWatch
from tests.launch import REPO, child_env, free_port, torchrun

GLOO_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop")


def test_shutdown_drops_a_default_argument_that_holds_the_destroyed_group(capsys):
    init_distributed("cpu")  # a world of one

    def imported_late(tensor, group=dist.group.WORLD):  # what a module imported after the group exists holds
        return tensor

    assert imported_late.__defaults__[0] is not None
    shutdown()
    assert imported_late.__defaults__ == (None,)
    err = capsys.readouterr().err
    assert "released the destroyed process group held as a default argument of" in err
    assert "imported_late" in err and "warning" not in err
    assert not dist.is_initialized()


def test_shutdown_names_a_group_it_cannot_release(capsys):
    init_distributed("cpu")
    held = [dist.group.WORLD]  # a reference no default argument explains
    shutdown()
    assert "1 destroyed process group(s) still referenced" in capsys.readouterr().err
    del held


def test_the_agent_watch_stops_and_joins():
    watch = ParentWatch(os.getppid(), poll_s=0.05)
    time.sleep(0.1)
    assert watch._thread.is_alive()
    watch.stop()
    assert not watch._thread.is_alive()


def _reports(out) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_a_stale_group_reference_no_longer_keeps_gloo_threads_alive(tmp_path):
    proc = torchrun([str(REPO / "tests/workers/stale_group.py"), str(tmp_path)])
    assert "terminate called" not in proc.stderr
    for rank, report in enumerate(_reports(tmp_path)):
        assert not set(GLOO_THREADS) & set(report["native_threads"]), report
        assert report["python_threads"] == ["MainThread"], report
        assert f"rank {rank}/2: released the destroyed process group" in proc.stderr


@pytest.mark.slow
def test_train_and_evaluate_leave_no_thread_behind_under_torchrun(small_logs, tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    out.mkdir()
    proc = torchrun([str(REPO / "tests/workers/job_threads.py"), str(out), str(small_logs), str(run_dir)])
    for report in _reports(out):
        assert report["train_code"] == 0 and report["evaluate_code"] == 0
        for after in ("after_train", "after_evaluate"):
            assert not set(GLOO_THREADS) & set(report[after]["native_threads"]), (after, report)
            assert report[after]["python_threads"] == ["MainThread"], (after, report)
    # The modules known to hold the group were imported before it existed: nothing to release.
    assert "released the destroyed process group" not in proc.stderr
    assert "still referenced" not in proc.stderr and "terminate called" not in proc.stderr


@pytest.mark.slow
def test_a_finished_job_exits_0_under_the_launcher_with_its_last_line(small_logs, tmp_path):
    cmd = [sys.executable, "-m", "fusionrec", "train", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--config", str(REPO / "configs/demo.yaml"), "--train-data",
           str(small_logs / "train"), "--run-dir", str(tmp_path), "--max-steps", "4", "--set", "data.batch_size=32"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == f"done: 4 steps, {4 * 32 * 2} samples"
    for bad in ("terminate called", "Traceback", "still referenced", "released the destroyed"):
        assert bad not in proc.stdout + proc.stderr

