"""Under torchrun: train, then evaluate, through the jobs' own ``main`` in this one process, and
after each report which threads are still alive (what would meet interpreter teardown).

    torchrun --nproc_per_node 2 tests/workers/job_threads.py OUT_DIR LOGS_DIR RUN_DIR
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from fusionrec.pipeline import evaluate, train
from tests.jobs import CONFIG
from tests.workers.stale_group import native_threads


def threads() -> dict:
    return {"native_threads": native_threads(), "python_threads": [t.name for t in threading.enumerate()]}


def main(out: Path, logs: Path, run_dir: Path) -> None:
    report = {}
    report["train_code"] = train.main(["--config", CONFIG, "--train-data", str(logs / "train"), "--run-dir",
                                       str(run_dir), "--max-steps", "6", "--set", "data.batch_size=32"])  # fmt: skip
    report["after_train"] = threads()
    report["evaluate_code"] = evaluate.main(["--config", CONFIG, "--checkpoint", str(run_dir), "--data",
                                             str(logs / "eval"), "--fusion-batches", "2"])  # fmt: skip
    report["after_evaluate"] = threads()
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
