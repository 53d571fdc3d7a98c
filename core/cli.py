"""The ``fusionrec`` console script: one command over the module entry points.

    fusionrec generate --config configs/demo.yaml --out data/demo --rows 200000
    fusionrec train    --config configs/demo.yaml --run-dir runs/demo      (one process)
    fusionrec evaluate --config configs/demo.yaml --checkpoint runs/demo --data ...
    fusionrec plan     --config configs/production.yaml --world-size 64 --device cuda --hbm-gb 80

For several ranks, launch the module under torchrun: ``torchrun ... -m fusionrec.pipeline.train ...``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("fusionrec.datasets.synthetic", "write synthetic Parquet logs for a config"),
    "train": ("fusionrec.pipeline.train", "train (one process; use torchrun -m fusionrec.pipeline.train for more)"),
    "evaluate": ("fusionrec.pipeline.evaluate", "score a checkpoint on Parquet logs"),
    "plan": ("fusionrec.pipeline.plan", "plan the embedding tables for a cluster (no GPU needed)"),
    "census": ("fusionrec.datasets.census", "convert the UCI Census-Income (KDD) file to Parquet logs"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: fusionrec {" + ",".join(COMMANDS) + "} [options]\n", file=sys.stderr)
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
