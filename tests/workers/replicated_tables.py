"""Under torchrun: the real Trainer with the demo's small bag tables replicated (data_parallel,
as ``sharding.proposals: auto`` plans small tables on CPU ranks), 6 steps on each rank's own
rows; writes ``OUT/rank{r}.json`` with the plan and every replicated table before and after.

    torchrun --nproc_per_node 2 tests/workers/replicated_tables.py OUT_DIR LOGS_DIR RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fusionrec.pipeline import job
from fusionrec.pipeline.train import Trainer
from tests.jobs import CONFIG

REPLICATED = ("category", "tag")


def main(out: Path, logs: Path, run_dir: Path) -> None:
    overrides = [f"data.train={logs / 'train'}", "data.batch_size=32", "train.max_steps=6",
                 *[f"sharding.constraints.{t}.sharding_types=[data_parallel]" for t in REPLICATED]]  # fmt: skip
    cfg = job.load_job_config(CONFIG, overrides)
    with job.process_group(cfg.train.device, cfg.train.process_group_timeout_s) as info:
        report = train_and_report(cfg, run_dir, info)
    (out / f"rank{info.rank}.json").write_text(json.dumps(report))


def train_and_report(cfg, run_dir: Path, info) -> dict:
    trainer = Trainer(cfg, run_dir, info)

    def tables() -> dict[str, list]:
        state = trainer.model.state_dict()
        return {t: next(v for k, v in state.items() if k.endswith(f"embedding_bags.{t}.weight")).tolist()
                for t in REPLICATED}  # fmt: skip

    before = tables()
    trainer.run()
    return {"plan": {r["table"]: r["sharding_type"] for r in trainer.plan_rows}, "before": before, "after": tables()}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
