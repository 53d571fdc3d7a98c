"""What moves the fixed cost of a sharded step: the real Trainer on 2 CPU ranks with its sharding
plan and batch size varied, on the tiny-dense config (``configs/bench_tiny.yaml``) and on
Census-Income (``configs/census.yaml``: 31 bag tables of at most 52 rows, no sequences).

    python benchmarks/fixed_cost.py --rounds 3 --json benchmarks/results/fixed_cost.json \
        --md benchmarks/results/fixed_cost.md

With a trivially small dense model a step is TorchRec's fixed cost (input and output dists,
KJT assembly, pipeline bookkeeping, metrics). Each round runs every variant once, in a rotating
order, through ``benchmarks/throughput.py``'s worker (same process settings as the trainer);
medians over rounds are reported with each run's 1-minute load. Census needs its Parquet files
first: ``python -m fusionrec.datasets.census --src ../shared/data/census-income-kdd/census-income.test.gz
--out data/census``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import throughput  # noqa: E402
from benchmarks.runinfo import run_info  # noqa: E402
from fusionrec.pipeline.config import load_config  # noqa: E402

TINY, CENSUS = "configs/bench_tiny.yaml", "configs/census.yaml"
CENSUS_TABLES = [t.name for t in load_config(REPO / CENSUS).features.tables]
UNPINNED = "sharding.constraints={}"
#: label → (config, --set overrides)
VARIANTS = {
    "tiny: the demo's plan (row-, column-, table-wise), 256/rank": (TINY, []),
    "tiny: proposals auto (every table table_wise), 256/rank": (TINY, [UNPINNED]),
    "tiny: proposals uniform (the cost model's one type: row_wise), 256/rank": (
        TINY, [UNPINNED, "sharding.proposals=uniform"]),
    "tiny: the demo's plan, 1024/rank": (TINY, ["data.batch_size=1024"]),
    "census: proposals auto (every table data_parallel), 512/rank": (CENSUS, []),
    "census: every table table_wise, 512/rank": (
        CENSUS, ["sharding.proposals=uniform", *[f"sharding.constraints.{t}.sharding_types=[table_wise]"
                                                for t in CENSUS_TABLES]]),
    "census: proposals mixed (TorchRec's default proposers), 512/rank": (CENSUS, ["sharding.proposals=mixed"]),
}  # fmt: skip


def render(result: dict) -> str:
    """The Markdown table of a ``--json`` result."""
    lines = [
        "# Fixed cost of a sharded step: plans and batch sizes (2 CPU ranks)", "",
        f"Date {result['date']}; machine: {result['machine']}; load at start {result['load_at_start']}.",
        f"Command: `{result['command']}`.", "",
        "| variant | step ms (median) | samples/s (median) | CPU ms / 1k samples (median) | runs (ms, load) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n, v in result["variants"].items():
        each = "; ".join(f"{x['step_ms']} ms @ {x['load_1min']}" for x in v["runs"])
        lines.append(f"| {n} | {round(v['step_ms_median'], 2)} | {v['samples_per_s_median']:.0f} "
                     f"| {v['cpu_ms_per_1k_samples_median']} | {each} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", required=True)
    p.add_argument("--md")
    args = p.parse_args(argv)
    train = {TINY: throughput.ensure_data("tiny", TINY), CENSUS: str(REPO / "data/census/train")}
    if not Path(train[CENSUS]).exists():
        print(f"error: {train[CENSUS]} is missing; make it with the command in this file's docstring", file=sys.stderr)
        return 2
    names = list(VARIANTS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in throughput.rotated(names, r):
            load = round(os.getloadavg()[0], 2)
            config, sets = VARIANTS[name]
            res = throughput.run_fusionrec(
                "fixed", config, [f"data.train={train[config]}", *sets], args.warmup, args.steps, 2, tag="_cost",
                mallopt=True,
            )
            runs[name].append({"step_ms": round(res["step_ms_median"], 2), "samples_per_s": round(res["samples_per_s"]),
                               "cpu_ms_per_1k_samples": round(res["cpu_ms_per_1k_samples"], 1), "load_1min": load,
                               "plan": res["plan"]})
            print(f"[round {r}] {name}: {res['step_ms_median']:.1f} ms/step, {res['samples_per_s']:.0f} samples/s, "
                  f"load {load}", flush=True)
    result = {**run_info(), "variants": {
        n: {"config": VARIANTS[n][0], "sets": VARIANTS[n][1],
            "step_ms_median": round(statistics.median(x["step_ms"] for x in v), 2),
            "samples_per_s_median": statistics.median(x["samples_per_s"] for x in v),
            "cpu_ms_per_1k_samples_median": statistics.median(x["cpu_ms_per_1k_samples"] for x in v), "runs": v}
        for n, v in runs.items()
    }}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
