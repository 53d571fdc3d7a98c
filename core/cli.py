"""The ``fusionrec`` console script: one command over the module entry points.

    fusionrec generate --config configs/demo.yaml --out data/demo --rows 200000
    fusionrec train    --nproc-per-node 2 --config configs/demo.yaml --run-dir runs/demo   (checks, then torchrun)
    fusionrec evaluate --config configs/demo.yaml --checkpoint runs/demo --data ...
    fusionrec plan     --config configs/production.yaml --world-size 64 --device cuda --hbm-gb 80
    fusionrec export   --config configs/demo.yaml --checkpoint runs/demo --out exports/demo-int8 --quantize int8
    fusionrec predict  --model exports/demo-int8 --data 'data/demo/eval/*.parquet' --out runs/demo/pred.parquet

``fusionrec train`` checks the config and the data in one process before it starts torchrun, and
reports a worker's config or data error as one line with exit 2 (:mod:`fusionrec.pipeline.launch`).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("fusionrec.datasets.synthetic", "write synthetic Parquet logs for a config"),
    "train": ("fusionrec.pipeline.launch", "check the job, then train under torchrun (--nproc-per-node N, ...)"),
    "evaluate": ("fusionrec.pipeline.evaluate", "score a checkpoint on Parquet logs"),
    "plan": ("fusionrec.pipeline.plan", "plan the embedding tables for a cluster (no GPU needed)"),
    "export": ("fusionrec.pipeline.export", "export a checkpoint as TorchScript with fp32/fp16/int8 tables"),
    "predict": ("fusionrec.pipeline.predict", "score Parquet logs with an exported model alone"),
    "census": ("fusionrec.datasets.census", "convert the UCI Census-Income (KDD) file to Parquet logs"),
    "movielens": ("fusionrec.datasets.movielens", "convert MovieLens-100k (from the recbole wheel) to time-split Parquet logs"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
        print("usage: fusionrec {" + ",".join(COMMANDS) + "} [options]\n", file=sys.stderr)
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
