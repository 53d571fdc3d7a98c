"""Under torchrun (or alone): the real ``pipeline.train`` job in follow mode, with every batch
it hands to the train loop written down, so that a test can check which rows were trained.

    torchrun --nproc_per_node 2 tests/workers/follow_audit.py AUDIT_DIR -- TRAIN_ARGS...

Appends one JSON line per batch to ``AUDIT_DIR/pid<PID>-rank<R>.jsonl``: ``{"pid",
"partition", "step", "rows"}``, ``step`` the global step that trains the batch (the loop trains a stream's
batches in order: the n-th of a partition's stream at its start step + n) and ``rows`` the
rows' identities, each the bit patterns of its dense features (float32 draws of the
synthetic generator: distinct for every row of a test's logs, which the test checks). A
batch is written when the loop pulls it, which may be before it is trained (the pipeline
prefetches), so a killed run's audit names steps that never finished: the test counts a
killed run's batches only up to the checkpoint the next run resumed from.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from fusionrec.pipeline import follow, train


def main(audit_dir: Path, train_args: list[str]) -> int:
    log = open(audit_dir / f"pid{os.getpid()}-rank{os.environ.get('RANK', '0')}.jsonl", "a", buffering=1)
    current = {}
    open_partition, make_loader = follow.open_partition, follow.make_loader

    def audited_open(trainer, part, saved_reader):
        reader = open_partition(trainer, part, saved_reader)
        current.update(partition=part.name, start=trainer.state.step)
        return reader

    def audited_loader(reader):
        for n, batch in enumerate(make_loader(reader), start=1):
            rows = batch.dense.contiguous().view(dtype=torch.int32).tolist()
            entry = {"pid": os.getpid(), "partition": current["partition"], "step": current["start"] + n, "rows": rows}
            log.write(json.dumps(entry) + "\n")
            yield batch

    follow.open_partition, follow.make_loader = audited_open, audited_loader
    return train.main(train_args)


if __name__ == "__main__":
    split = sys.argv.index("--")
    sys.exit(main(Path(sys.argv[1]), sys.argv[split + 1 :]))
