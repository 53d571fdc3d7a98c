"""Loader benchmark: Parquet → Batch throughput against a raw pyarrow read, and peak memory.

    python benchmarks/loader.py --json benchmarks/results/loader.json --md benchmarks/results/loader.md

1. Generates synthetic logs with the schema of ``configs/demo.yaml`` (ids, an id list, three
   behaviour sequences, dense features, three labels) for each size (default 1M and 10M train
   rows; 65,536-row row groups, 625,000 rows per file) under ``--data-dir``, unless a
   matching set is already there.
2. For each size, in fresh subprocesses (so each peak RSS is that run's own), alternating:
   * ``pyarrow``: ``ParquetFile.read_row_group(i, columns=schema.columns)`` over every row
     group of every file — the decode alone, nothing converted;
   * ``reader``: ``ParquetReader(files, schema, batch_size)`` iterated in the process
     (num_workers=0: one worker), every batch built (dense, both KJTs, labels, weights).
   Both include opening the files; the best of ``--repeats`` runs of each counts (the
   machine is shared, so slower runs measure the neighbours).
3. Writes ``{"rows_per_s", "pyarrow_rows_per_s", "ratio", "peak_rss_mb_1m",
   "peak_rss_mb_10m", ...}`` with the machine, date and command to ``--json`` (and a table to
   ``--md``). ``rows_per_s`` and ``pyarrow_rows_per_s`` are from the largest size.

Not a test: it takes minutes and several GB of disk for 10M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.runinfo import machine, today  # noqa: E402

CONFIG = REPO / "configs" / "demo.yaml"
ANALYSIS = """\
## Where the time goes

Profiled in one process on the 1M set (cProfile plus CPU timers, batch 2048): decoding the
row groups (`read_row_group`, the same call the baseline makes, on a read-ahead thread) is
about 55-60 % of the reader's CPU; converting a window (ids wrapped and range-checked,
sequences truncated, dense cast, counters) about 25 %; cutting batches (one copy per key into
the KJT values, lengths, dense, labels, weights, per-batch counters) about 10 %. The raw read
uses both cores for decoding when they are free, while the reader shares them with its own
conversion, so the wall-clock ratio moves with the load on the machine; the CPU ratio (CPU
time per row of both, all threads counted) much less.

Fixes made after profiling (the first version reached a ratio of about 0.35 on the same
data): truncation by a mask applied while each batch copies its ids (no separate pass),
windows that end inside a row group so they convert without `combine_chunks` copies,
ragged gathers by scatter + cumsum instead of `np.repeat`, prefix sums for per-batch
counters, a read-ahead thread overlapping decode and conversion. What is left is numpy work
proportional to the ids (range checks and truncation masks); going further needs Parquet
column statistics to skip range checks or a compiled kernel.
"""
ROW_GROUP = 65_536
ROWS_PER_FILE = 625_000
EVAL_FRACTION = 0.01


def _schema():
    from fusionrec.datasets.synthetic import load_config

    return load_config(CONFIG)


def _label(rows: int) -> str:
    return f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else str(rows)


def ensure_data(data_dir: Path, rows: int) -> Path:
    """Train logs of exactly ``rows`` rows (generated once, reused while the recipe matches)."""
    from fusionrec.datasets.config import SyntheticConfig
    from fusionrec.datasets.synthetic import generate

    folder = data_dir / f"rows_{_label(rows)}"
    recipe = {"config": "configs/demo.yaml", "rows": rows, "row_group": ROW_GROUP, "rows_per_file": ROWS_PER_FILE}
    marker = folder / "recipe.json"
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return folder / "train"
    schema, cfg = _schema()
    total = round(rows / (1 - EVAL_FRACTION))
    while total - round(total * EVAL_FRACTION) != rows:  # exactly ``rows`` train rows
        total += 1 if total - round(total * EVAL_FRACTION) < rows else -1
    cfg = SyntheticConfig(
        **{
            **cfg.__dict__,
            "train_files": max(1, -(-rows // ROWS_PER_FILE)),
            "eval_files": 1,
            "eval_fraction": EVAL_FRACTION,
            "row_group_size": ROW_GROUP,
        }
    )
    start = time.perf_counter()
    summary = generate(schema, cfg, total, folder)
    print(
        f"generated {summary['train_rows']} train rows in {time.perf_counter() - start:.0f}s under {folder}", flush=True
    )
    marker.write_text(json.dumps(recipe))
    return folder / "train"


# ----------------------------------------------------------------------------- one measurement


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def measure(mode: str, train: Path, batch_size: int) -> dict:
    """Run in a fresh process: read everything once, return rows, seconds and peak RSS."""
    import pyarrow.parquet as pq

    from fusionrec.datasets.reader import ParquetReader, resolve_paths

    schema, _ = _schema()
    files = resolve_paths(str(train))
    rss_before = _peak_rss_mb()
    cpu0, t0 = time.process_time(), time.perf_counter()
    rows = 0
    if mode == "pyarrow":
        for path in files:
            pf = pq.ParquetFile(path)
            for g in range(pf.metadata.num_row_groups):
                rows += pf.read_row_group(g, columns=schema.columns).num_rows
            pf.close()
    else:
        reader = ParquetReader(files, schema, batch_size)
        for batch in reader:
            rows += batch.batch_size
    seconds = time.perf_counter() - t0
    return {
        "mode": mode,
        "rows": rows,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(time.process_time() - cpu0, 3),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_after_imports_mb": round(rss_before, 1),
    }


def run_child(mode: str, train: Path, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", mode, "--train", str(train), "--batch-size", str(batch_size)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    lines = [
        "# Loader benchmark",
        "",
        f"{result['date']} · {result['machine']} · batch size {result['batch_size']} · one worker (in-process)",
        "",
        f"Command: `{result['command']}`",
        "",
        (
            "| train rows | ParquetReader rows/s | raw pyarrow rows/s | ratio | CPU µs/row reader / pyarrow | CPU ratio "
            "| reader peak RSS (MB) | pyarrow peak RSS (MB) |"
        ),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in result["sizes"].values():
        lines.append(
            f"| {size['rows']:,} | {size['rows_per_s']:,} | {size['pyarrow_rows_per_s']:,} | {size['ratio']:.2f} | "
            f"{size['reader_cpu_us_per_row']:.2f} / {size['pyarrow_cpu_us_per_row']:.2f} | {size['cpu_ratio']:.2f} | "
            f"{size['peak_rss_mb']:.0f} | {size['pyarrow_peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        (
            f"Headline (largest size): ratio **{result['ratio']:.2f}** (aim ≥ 0.5); peak RSS "
            f"{result['peak_rss_mb_10m']:.0f} MB for 10M rows vs {result['peak_rss_mb_1m']:.0f} MB for 1M "
            f"(×{result['rss_growth_10m_over_1m']:.2f}; aim ≤ 1.5)."
        ),
        "",
        (
            "Every run is a fresh process; the best of the repeats counts for speed, the largest peak RSS of the "
            "reader runs for memory; CPU figures are medians over all threads. All runs are listed in `loader.json` "
            "(`runs`). The machine is shared with other jobs, so wall-clock rates move by up to 2x between runs."
        ),
    ]
    lines += ["", ANALYSIS.rstrip()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--md", help="write a Markdown table here")
    parser.add_argument("--data-dir", default=str(REPO / "data" / "bench"))
    parser.add_argument("--sizes", default="1000000,10000000", help="train rows per size, comma-separated")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", choices=["reader", "pyarrow"], help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.train), args.batch_size)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    runs, per_size = [], {}
    for rows in sizes:
        train = ensure_data(Path(args.data_dir), rows)
        run_child("pyarrow", train, args.batch_size)  # warm the page cache for both modes
        best = {}
        for _ in range(args.repeats):
            for mode in ("pyarrow", "reader"):
                r = run_child(mode, train, args.batch_size)
                r["size"] = _label(rows)
                runs.append(r)
                print(json.dumps(r), flush=True)
                if mode not in best or r["rows_per_s"] > best[mode]["rows_per_s"]:
                    best[mode] = r
        mine = [r for r in runs if r["size"] == _label(rows)]
        reader_rss = max(r["peak_rss_mb"] for r in mine if r["mode"] == "reader")
        cpu = {m: statistics.median(r["cpu_seconds"] / r["rows"] for r in mine if r["mode"] == m) for m in best}
        per_size[_label(rows)] = {
            "rows": best["reader"]["rows"],
            "rows_per_s": best["reader"]["rows_per_s"],
            "pyarrow_rows_per_s": best["pyarrow"]["rows_per_s"],
            "ratio": round(best["reader"]["rows_per_s"] / best["pyarrow"]["rows_per_s"], 3),
            # CPU seconds per row (median over runs; all threads): insensitive to idle cores
            "reader_cpu_us_per_row": round(cpu["reader"] * 1e6, 3),
            "pyarrow_cpu_us_per_row": round(cpu["pyarrow"] * 1e6, 3),
            "cpu_ratio": round(cpu["pyarrow"] / cpu["reader"], 3),
            "peak_rss_mb": reader_rss,
            "pyarrow_peak_rss_mb": max(
                r["peak_rss_mb"] for r in runs if r["size"] == _label(rows) and r["mode"] == "pyarrow"
            ),
        }
    largest = per_size[_label(max(sizes))]
    result = {
        "rows_per_s": largest["rows_per_s"],
        "pyarrow_rows_per_s": largest["pyarrow_rows_per_s"],
        "ratio": largest["ratio"],
        "peak_rss_mb_1m": per_size.get("1m", {}).get("peak_rss_mb"),
        "peak_rss_mb_10m": per_size.get("10m", {}).get("peak_rss_mb"),
        "batch_size": args.batch_size,
        "sizes": per_size,
        "machine": machine(),
        "date": today(),
        "command": "python benchmarks/loader.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": runs,
    }
    if result["peak_rss_mb_1m"] and result["peak_rss_mb_10m"]:
        result["rss_growth_10m_over_1m"] = round(result["peak_rss_mb_10m"] / result["peak_rss_mb_1m"], 3)
    summary = {k: v for k, v in result.items() if k not in ("runs", "sizes")}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
