"""The training job's command line, shared by the job (``pipeline.train``) and its launcher
(``fusionrec train``, ``pipeline.launch``), so that neither job imports the other."""

from __future__ import annotations

import argparse

from fusionrec.pipeline.cli_common import add_common_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fusionrec.pipeline.train", description="Train a multi-task model on sharded embedding tables."
    )
    add_common_args(parser)
    parser.add_argument("--train-data", help="train Parquet logs: directory, glob or file (overrides data.train)")
    parser.add_argument("--eval-data", help="eval Parquet logs (overrides data.eval)")
    parser.add_argument("--run-dir", required=True, help="where checkpoints and logs go")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (overrides train.max_steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--follow", action="store_true",
                        help="train each partition of a partitioned data.train once, as it lands (train.follow.enabled)")
    return parser.parse_args(argv)


def config_overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set or [])
    if args.train_data:
        sets.append(f"data.train={args.train_data}")
    if args.eval_data:
        sets.append(f"data.eval={args.eval_data}")
    if args.follow:
        sets.append("train.follow.enabled=true")
    if args.max_steps is not None:
        sets.append(f"train.max_steps={args.max_steps}")
    return sets
