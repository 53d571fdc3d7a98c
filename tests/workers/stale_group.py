"""A worker that leaves a reference to the default process group behind, as a module imported
after ``init_process_group`` does (``def f(..., group=group.WORLD)``), runs collectives up to its
last line and exits; then reports the threads still alive.

    torchrun --nproc_per_node 2 tests/workers/stale_group.py OUT_DIR [--raw]

``--raw`` ends with a bare ``destroy_process_group()`` and exits at once, reporting nothing:
the stale reference keeps the gloo backend alive into interpreter teardown, and the exit
aborts (SIGABRT, ``terminate called without an active exception``) in a good fraction of runs. Without it the worker ends through
``pipeline.job.process_group``, which must leave no gloo thread and exit 0 every time.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import torch
import torch.distributed as dist

from fusionrec.pipeline.job import process_group


def native_threads() -> list[str]:
    """The names of this process's native threads (Linux)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        except OSError:
            pass
    return sorted(names)


def collectives() -> None:
    def imported_late(tensor: torch.Tensor, group=dist.group.WORLD) -> None:  # noqa: B008 - the point
        dist.all_reduce(tensor, group=group)

    global late  # module-level, like a function of a module imported after the group exists
    late = imported_late
    for _ in range(50):
        late(torch.ones(1000))  # fresh tensors, released by the gloo worker that ran the op


def main(out: Path, raw: bool) -> None:
    if raw:  # and exit at once: the abort is a race with the gloo workers' last releases
        dist.init_process_group("gloo")
        collectives()
        dist.destroy_process_group()
        return
    with process_group("cpu"):
        collectives()
    report = {"native_threads": native_threads(), "python_threads": [t.name for t in threading.enumerate()]}
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--raw" in sys.argv[2:])
