"""Score a checkpoint on Parquet logs: per-task AUC, NE, log loss, calibration, count.

    python -m fusionrec.pipeline.evaluate --config configs/demo.yaml \\
        --checkpoint runs/demo/checkpoints/step_00000400 --data 'data/demo/eval/*.parquet' \\
        --out runs/demo/eval.json

Runs as one process or under torchrun; a checkpoint saved by any number of ranks loads
through DCP's resharding. Metrics stream (fixed memory whatever the eval set's size) and
are summed across ranks. A task with a ``space`` is scored only where its gating label is 1.

A checkpoint of a follow-mode run (``train.follow``) also carries its progressive curve: each
partition scored before the model trained on it, up to the checkpoint's step, read from the
run's train_log.jsonl into the JSON, the Markdown and ``progressive.png``. Without eval data
(no ``--data``, no ``data.eval``) evaluate writes that curve alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fusionrec.datasets.reader import make_loader
from fusionrec.errors import UserError, exit_on_user_error
from fusionrec.pipeline import checkpoint as ckpt
from fusionrec.pipeline import job, report
from fusionrec.pipeline.cli_common import add_common_args
from fusionrec.pipeline.config import ExperimentConfig
from fusionrec.pipeline.distributed import DistInfo
from fusionrec.pipeline.logs import quiet_third_party, say
from fusionrec.pipeline.predictions import PredictionWriter, predictions_path
from fusionrec.pipeline.progressive import curve_markdown, progressive_curve
from fusionrec.pipeline.scoring import ScoreOptions, ScoreResult, score


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fusionrec.pipeline.evaluate", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint dir (RUN_DIR/checkpoints/step_N) or a run dir")
    parser.add_argument("--data", help="eval Parquet logs: directory, glob or file (default: data.eval)")
    parser.add_argument("--out", help="write the metrics as JSON here, the Markdown summary beside it (.md) and "
                                      "the plots into OUT_STEM_plots/")
    parser.add_argument("--batch-size", type=int, help="default: eval.batch_size, else data.batch_size")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="add 95%% confidence intervals from N Poisson-bootstrap replicates (e.g. 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    parser.add_argument("--fusion-batches", type=int, default=20, metavar="N",
                        help="average the fusion matrices over the first N batches per rank (0: skip)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--predictions", metavar="OUT.parquet",
                        help="also write row ids, labels and predictions (one file per rank under torchrun: "
                             "OUT-rank{r}.parquet); reads with one worker so row ids follow the files' order")
    return parser.parse_args(argv)


def evaluate(
    cfg: ExperimentConfig,
    checkpoint: Path,
    data: str,
    batch_size: int,
    info: DistInfo,
    options: ScoreOptions,
    predictions: str | None = None,
) -> tuple[dict, ScoreResult]:
    """Load ``checkpoint`` into the configured model and score ``data`` (writing per-row
    predictions to ``predictions`` when given).

    Returns (the JSON-ready result, the full ScoreResult with curves)."""
    # Row ids follow the files' order only when one process reads.
    reader = job.make_reader(cfg, data, info, batch_size, train=False, num_workers=0 if predictions else None)
    job.check_checkpoint_binding(cfg, checkpoint, reader, "evaluate")
    model = job.build_sharded_model(cfg, info, sparse_opt=None).model
    meta = job.load_model_weights(model, checkpoint)
    writer = None
    if predictions:
        writer = PredictionWriter(predictions_path(predictions, info), cfg.schema.task_names, reader.first_row)
        options.on_batch = writer
    try:
        scored = score(
            model, make_loader(reader), reader.num_batches, cfg.schema, info.device, options, cfg.model.fusion.type
        )
    except ValueError as err:
        raise UserError(f"eval data {data!r}: {err}") from None
    finally:
        if writer is not None:
            writer.close()
    result = {
        "model": cfg.model.name,
        "checkpoint": str(checkpoint),
        "data": data,
        "samples": scored.rows,
        "step": meta["step"],
        "world_size": info.world_size,
        "tasks": scored.tasks,
    }
    if options.bootstrap:
        result["bootstrap"] = {"replicates": options.bootstrap, "level": 0.95, "seed": options.seed}
    if scored.fusion is not None:
        result["fusion"] = scored.fusion
    return result, scored


def write_outputs(result: dict, scored: ScoreResult | None, out: Path, plots: bool) -> list[Path]:
    """JSON at ``out``, Markdown beside it, PNG plots in ``<out stem>_plots/``; returns the files.
    ``scored`` None: a progressive curve alone (no curves of an eval set to plot)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out]
    out.write_text(json.dumps(result, indent=2) + "\n")
    images: dict[str, str] = {}
    if plots:
        folder = out.parent / f"{out.stem}_plots"
        folder.mkdir(exist_ok=True)
        if scored is not None and scored.roc:
            aucs = {t: result["tasks"][t].get("auc", float("nan")) for t in scored.roc}
            report.plot_roc(scored.roc, aucs, folder / "roc.png")
            report.plot_calibration(scored.calibration, folder / "calibration.png")
            images.update(roc=f"{folder.name}/roc.png", calibration=f"{folder.name}/calibration.png")
        if scored is not None and scored.fusion:
            report.plot_fusion(scored.fusion, folder / "fusion.png")
            images["fusion"] = f"{folder.name}/fusion.png"
        if result.get("progressive"):
            report.plot_progressive(result["progressive"], folder / "progressive.png")
            images["progressive"] = f"{folder.name}/progressive.png"
        written += [out.parent / p for p in images.values()]
    summary = out.with_suffix(".md")
    summary.write_text(report.markdown(result, images))
    return written + [summary]


def format_table(result: dict) -> str:
    columns = ["auc", "gauc", "ne", "logloss", "calibration", "positive_rate", "mse", "mae", "count"]
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
        cfg = job.load_job_config(args.config, args.set)
        main_rank = os.environ.get("RANK", "0") == "0"
        checkpoint = job.resolve_checkpoint(args.checkpoint, announce=main_rank)
        step = ckpt.read_meta(checkpoint)["step"]
        curve = progressive_curve(checkpoint.parent.parent, up_to_step=step)  # RUN_DIR/checkpoints/step_N
        data = args.data or cfg.data.eval
        if data is None and not curve:
            raise UserError("no eval data: pass --data or set data.eval in the config (a follow-mode run's "
                            "progressive curve needs neither, but this checkpoint's run has none)")  # fmt: skip
        if data is None and args.predictions:
            raise UserError("--predictions: needs eval data (--data or data.eval)")
        if data is None:
            result, scored = {"model": cfg.model.name, "checkpoint": str(checkpoint), "step": step}, None
        else:
            batch_size = args.batch_size or cfg.eval.batch_size or cfg.data.batch_size
            options = ScoreOptions(bootstrap=args.bootstrap, seed=args.seed, fusion_batches=args.fusion_batches)
            with job.process_group(cfg.train.device, cfg.train.process_group_timeout_s) as info:
                result, scored = evaluate(cfg, checkpoint, data, batch_size, info, options, args.predictions)
        if curve:
            result["progressive"] = curve
        if main_rank:
            if scored is not None:
                say(f"{result['model']} @ step {result['step']} on {result['samples']} rows of {data}")
                say(format_table(result))
            if curve:
                say(f"progressive evaluation: {len(curve)} partition(s) of {checkpoint.parent.parent}, "
                    f"{curve[0]['partition']} to {curve[-1]['partition']}")
                say("\n".join(curve_markdown(curve)))
            if args.out:
                for path in write_outputs(result, scored, Path(args.out), plots=not args.no_plots):
                    say(f"wrote {path}")
            if args.predictions:
                say(f"wrote predictions to {args.predictions}" + (" (one file per rank)" if info.world_size > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
