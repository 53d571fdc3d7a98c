"""Export a checkpoint as a self-contained serving artifact: TorchScript, quantised tables.

    python -m fusionrec.pipeline.export --config configs/demo.yaml --checkpoint runs/demo \\
        --out exports/demo-int8 --quantize int8

The conversion (quantised TorchRec inference collections, FX trace, TorchScript, the
manifest, the atomic publish) is :mod:`fusionrec.pipeline.exporting`; this is its command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusionrec.errors import exit_on_user_error
from fusionrec.pipeline.cli_common import add_common_args
from fusionrec.pipeline.exporting import export, refuse_managed_collisions
from fusionrec.pipeline.job import load_job_config, resolve_checkpoint
from fusionrec.pipeline.logs import quiet_third_party, say


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fusionrec.pipeline.export", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint dir (RUN_DIR/checkpoints/step_N) or a run dir")
    parser.add_argument("--out", required=True, help="the directory to write (must not exist, or be empty, unless --force)")
    parser.add_argument("--quantize", default="int8", help="embedding table precision: none (fp32) | fp16 | int8 (default)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows of the example inputs (default 64)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    return parser.parse_args(argv)


def summary(manifest: dict, out: str) -> str:
    """One line: what was exported where, how big, how close to the eager model."""
    mib = 1 << 20
    return (f"exported {manifest['source']['model']} @ step {manifest['source']['step']} to {out} "
            f"in {manifest['seconds']:.1f} s: {manifest['format']}, tables {manifest['table_dtype']} "
            f"{manifest['embedding_bytes'] / mib:.2f} MiB (fp32 {manifest['fp32_embedding_bytes'] / mib:.2f} MiB), "
            f"dense {manifest['dense_bytes'] / mib:.2f} MiB; max |export - eager| on the example batch "
            f"{manifest['example_max_abs_diff_vs_eager']:.2g}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    args = parse_args(argv)
    with exit_on_user_error():
        cfg = load_job_config(args.config, args.set)
        refuse_managed_collisions(cfg)
        checkpoint = resolve_checkpoint(args.checkpoint)
        manifest = export(cfg, checkpoint, Path(args.out), args.quantize, args.batch_size, args.force, args.config)
        say(summary(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
