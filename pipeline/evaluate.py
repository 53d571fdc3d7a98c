"""Score a checkpoint on Parquet logs: per-task AUC, NE, log loss, calibration, count.

    python -m pipeline.evaluate --config configs/demo.yaml \\
        --checkpoint runs/demo/checkpoints/step_00000400 --data 'data/demo/eval/*.parquet' \\
        --out runs/demo/eval.json

Runs as one process or under torchrun; a checkpoint saved by any number of ranks loads
through DCP's resharding. Metrics stream (fixed memory whatever the eval set's size) and
are summed across ranks. A task with a ``space`` is scored only where its gating label is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datasets.reader import ParquetReader, resolve_paths
from pipeline import checkpoint as ckpt
from pipeline.cli_common import UserError, add_common_args, exit_on_user_error, load_job_config
from pipeline.config import ExperimentConfig
from pipeline.distributed import DistInfo, init_distributed, shutdown
from pipeline.logs import quiet_third_party, say
from pipeline.scoring import score
from pipeline.train import build_sharded_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint dir (RUN_DIR/checkpoints/step_N) or a run dir")
    parser.add_argument("--data", help="eval Parquet logs: directory, glob or file (default: data.eval)")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--batch-size", type=int, help="default: eval.batch_size, else data.batch_size")
    return parser.parse_args(argv)


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint dir as given, or the newest complete checkpoint of a run dir."""
    p = Path(path)
    if (p / ckpt.META).is_file():
        return p
    latest = ckpt.latest_checkpoint(p)
    if latest is None:
        raise UserError(f"{path} is neither a complete checkpoint (no {ckpt.META}) nor a run dir holding one")
    return latest


def evaluate(cfg: ExperimentConfig, checkpoint: Path, data: str, batch_size: int, info: DistInfo) -> dict:
    model, _, _ = build_sharded_model(cfg, info, sparse_opt=None)
    state = {"model": model.state_dict()}
    ckpt.load_checkpoint(checkpoint, state)
    model.load_state_dict(state["model"])
    reader = ParquetReader(
        resolve_paths(data), cfg.schema, batch_size, rank=info.rank, world_size=info.world_size, drop_last=False
    )
    try:
        tasks, samples = score(model, reader, reader.num_batches, cfg.schema, info.device)
    except ValueError as err:
        raise UserError(f"eval data {data!r}: {err}") from None
    return {
        "model": cfg.model.name,
        "checkpoint": str(checkpoint),
        "data": data,
        "samples": samples,
        "step": ckpt.read_meta(checkpoint)["step"],
        "world_size": info.world_size,
        "tasks": tasks,
    }


def format_table(result: dict) -> str:
    columns = ["auc", "ne", "logloss", "calibration", "positive_rate", "mse", "count"]
    present = [c for c in columns if any(c in r for r in result["tasks"].values())]
    header = f"{'task':<16}" + "".join(f"{c:>14}" for c in present)
    lines = [header, "-" * len(header)]
    for name, r in result["tasks"].items():
        cells = []
        for c in present:
            v = r.get(c)
            cells.append(f"{'-':>14}" if v is None else f"{v:>14d}" if isinstance(v, int) else f"{v:>14.4f}")
        lines.append(f"{name:<16}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    args = parse_args(argv)
    with exit_on_user_error():
        cfg = load_job_config(args.config, args.set)
        data = args.data or cfg.data.eval
        if data is None:
            raise UserError("no eval data: pass --data or set data.eval in the config")
        checkpoint = resolve_checkpoint(args.checkpoint)
        batch_size = args.batch_size or cfg.eval.batch_size or cfg.data.batch_size
        info = init_distributed(cfg.train.device, cfg.train.process_group_timeout_s)
        try:
            result = evaluate(cfg, checkpoint, data, batch_size, info)
        finally:
            shutdown()
        if info.is_main:
            say(f"{result['model']} @ step {result['step']} on {result['samples']} rows of {data}")
            say(format_table(result))
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
                say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
