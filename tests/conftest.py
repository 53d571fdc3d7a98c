"""Shared test fixtures."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Keep each test process to one intra-op thread: the suite runs on 2 cores and several
# tests launch 2-rank jobs.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def demo_logs(tmp_path_factory) -> Path:
    """Synthetic logs for configs/demo.yaml (40,000 rows: 32,000 train, 8,000 eval), written
    once per test session by the real CLI."""
    from tests.launch import run

    out = tmp_path_factory.mktemp("demo_logs")
    run([sys.executable, "-m", "fusionrec.datasets.synthetic", "--config", str(REPO / "configs/demo.yaml"), "--out", str(out),
         "--rows", "40000"])
    return out


@pytest.fixture(scope="session")
def small_logs(tmp_path_factory) -> Path:
    """4,000 synthetic demo rows in row groups of 500 (3,200 train, 800 eval), for lean
    process-level tests; written once per test session."""
    from tests.launch import run

    out = tmp_path_factory.mktemp("small_logs")
    run([sys.executable, "-m", "fusionrec.datasets.synthetic", "--config", str(REPO / "configs/demo.yaml"), "--out", str(out),
         "--rows", "4000", "--set", "synthetic.row_group_size=500"])  # fmt: skip
    return out
