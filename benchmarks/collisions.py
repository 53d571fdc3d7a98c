"""Managed collisions vs modulo at the same table size: eval AUC and step time.

    python benchmarks/collisions.py --out runs/bench_collisions \\
        --json benchmarks/results/collisions.json --md benchmarks/results/collisions.md

Two data sets, both written by the synthetic generator from ``configs/demo.yaml``:

* ``demo``: ids drawn over the demo's own table sizes (user 20,000, item 50,000 rows);
* ``wide``: the same generator with ``--id-scale`` times larger id spaces (user and item), so
  nearly every id lies far beyond the table, as on the held-out production logs.

On each, the demo model is trained twice on 2 gloo ranks with the demo's table sizes: with
``modulo`` ids (id mod num_embeddings, the default) and with ``mch`` (collision: lfu on both
tables), one epoch, the same seeds, item and user row_wise in both (the only type TorchRec
offers for MC tables), then each checkpoint is evaluated in one process on the eval split.
Step time is the training log's wall time per step after the first logged window: of those
runs, and of short runs on the wide data with the variants alternated (``--timing-repeats``),
including ``mch10`` (admission every 10 steps). Training runs already in ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from runinfo import run_info  # noqa: E402

CONFIG = str(REPO / "configs/demo.yaml")
COMMON = ["--set", "sharding.constraints.item.sharding_types=[row_wise]", "--set", "train.log_every=50"]
MCH = ["--set", "features.tables.item.collision.eviction=lfu", "--set", "features.tables.user.collision.eviction=lfu"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--standalone"]


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def step_seconds(run_dir: Path) -> float:
    """Wall seconds per step between the first and the last logged window (rank 0's log)."""
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "samples_per_s" in r]
    first, last = rows[0], rows[-1]
    return (last["time"] - first["time"]) / (last["step"] - first["step"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench_collisions", help="scratch folder for data, runs and evaluations")
    p.add_argument("--rows", type=int, default=200_000, help="rows per data set, train + eval")
    p.add_argument("--id-scale", type=int, default=100, help="how much larger the wide id spaces are than the tables")
    p.add_argument("--timing-repeats", type=int, default=2,
                   help="then, on the wide data, alternate short runs of each variant this many times for step time")
    p.add_argument("--timing-steps", type=int, default=150, help="steps of each timing run")
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    args = p.parse_args()
    info = run_info()
    out = Path(args.out)
    wide = [
        "--set", f"features.tables.user.num_embeddings={20_000 * args.id_scale}",
        "--set", f"features.tables.item.num_embeddings={50_000 * args.id_scale}",
    ]  # fmt: skip
    results = {}
    for data, gen_sets in (("demo", []), ("wide", wide)):
        logs = out / data / "logs"
        if not (logs / "train").is_dir():
            run([sys.executable, "-m", "fusionrec.datasets.synthetic", "--config", CONFIG, "--out", str(logs),
                 "--rows", str(args.rows), *gen_sets])  # fmt: skip
        for variant, sets in (("modulo", []), ("mch", MCH)):
            run_dir = out / data / variant
            if not (run_dir / "train_log.jsonl").is_file() or not any((run_dir / "checkpoints").glob("step_*")):
                run([*TORCHRUN, "-m", "fusionrec.pipeline.train", "--config", CONFIG, *COMMON, *sets,
                     "--train-data", str(logs / "train"), "--run-dir", str(run_dir)])  # fmt: skip
            report = run_dir / "eval.json"
            run([sys.executable, "-m", "fusionrec.pipeline.evaluate", "--config", CONFIG, *COMMON, *sets,
                 "--checkpoint", str(run_dir), "--data", str(logs / "eval" / "*.parquet"), "--out", str(report)])  # fmt: skip
            tasks = json.loads(report.read_text())["tasks"]
            log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
            wrapped = max((r.get("data", {}).get("ids_out_of_range_wrapped", 0) for r in log), default=0)
            results[f"{data}/{variant}"] = {
                "auc": {t: round(m["auc"], 4) for t, m in tasks.items()},
                "gauc": {t: round(m["gauc"], 4) for t, m in tasks.items() if m.get("gauc") is not None},
                "step_seconds": round(step_seconds(run_dir), 4),
                "ids_out_of_range_wrapped_rank0": wrapped,
            }
            print(data, variant, results[f"{data}/{variant}"], flush=True)
    # Step time on the wide data, variants alternated so that the shared machine's load
    # drifts over all of them alike; mch10: admission every 10 steps instead of every step.
    timing_variants = (("modulo", []), ("mch", MCH),
                       ("mch10", [*MCH, "--set", "features.tables.item.collision.eviction_interval=10",
                                  "--set", "features.tables.user.collision.eviction_interval=10"]))  # fmt: skip
    timing: dict[str, list[float]] = {v: [] for v, _ in timing_variants}
    for repeat in range(args.timing_repeats):
        for variant, sets in timing_variants:
            run_dir = out / "timing" / f"{variant}-{repeat}"
            run([*TORCHRUN, "-m", "fusionrec.pipeline.train", "--config", CONFIG, *COMMON, *sets,
                 "--train-data", str(out / "wide" / "logs" / "train"), "--run-dir", str(run_dir),
                 "--max-steps", str(args.timing_steps)])  # fmt: skip
            timing[variant].append(round(step_seconds(run_dir), 4))
            print("timing", variant, repeat, timing[variant][-1], flush=True)
    info["load_at_end"] = run_info()["load_at_start"]
    doc = {**info, "rows": args.rows, "id_scale": args.id_scale, "results": results, "step_seconds_wide": timing}
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Managed collisions vs modulo at the same table size",
        "",
        f"- date: {info['date']}; machine: {info['machine']}; load at start: {info['load_at_start']}",
        f"- command: `{info['command']}`",
        f"- data: `configs/demo.yaml` synthetic logs, {args.rows:,} rows (80% train, 20% eval); `wide`: user and item "
        f"ids over {args.id_scale}x the table sizes. Tables: user 20,000, item 50,000 rows in every run.",
        "- training: 2 gloo ranks, one epoch, batch 256/rank, item and user row_wise; `mch`: collision "
        "{type: mch, eviction: lfu} on user and item. Evaluation: one process, the eval split.",
        "",
        "| data | ids | AUC click | AUC like | AUC convert | s/step | ids wrapped (rank 0) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in results.items():
        data, variant = key.split("/")
        a = r["auc"]
        lines.append(
            f"| {data} | {variant} | {a['click']:.4f} | {a['like']:.4f} | {a['convert']:.4f} | "
            f"{r['step_seconds']:.4f} | {r['ids_out_of_range_wrapped_rank0']:,} |"
        )
    if timing:
        lines += [
            "",
            f"Step time on the wide data, {args.timing_steps}-step runs alternated ({args.timing_repeats} each; "
            f"seconds per step after the first 50; load at end {info['load_at_end']}):",
            "",
            "| ids | s/step, each run | mean |",
            "| --- | --- | --- |",
        ]
        for variant, values in timing.items():
            if values:
                lines.append(f"| {variant} | {', '.join(f'{v:.4f}' for v in values)} | {sum(values) / len(values):.4f} |")
    Path(args.md).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.json} and {args.md}")


if __name__ == "__main__":
    main()
