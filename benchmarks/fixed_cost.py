"""What moves the fixed cost of a sharded step: the tiny-dense config (``configs/bench_tiny.yaml``)
under the real Trainer on 2 CPU ranks, with its sharding plan and batch size varied.

    python benchmarks/fixed_cost.py --rounds 2 --json benchmarks/results/fixed_cost.json \\
        --md benchmarks/results/fixed_cost.md

With a trivially small dense model a step is TorchRec's fixed cost (input and output dists,
KJT assembly, pipeline bookkeeping, metrics). Each round runs every variant once, in a rotating
order, through ``benchmarks/throughput.py``'s worker (same process settings as the trainer);
medians over rounds are reported with each run's 1-minute load.
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

CONFIG = "configs/bench_tiny.yaml"
VARIANTS = {
    "demo plan (row-, column-, table-wise), 256/rank": [],
    "every table table_wise, 256/rank": [
        "sharding.constraints.user.sharding_types=[table_wise]",
        "sharding.constraints.item.sharding_types=[table_wise]",
    ],
    "small bag tables data_parallel, 256/rank": [
        "sharding.constraints.category.sharding_types=[data_parallel]",
        "sharding.constraints.tag.sharding_types=[data_parallel]",
    ],
    "demo plan, 1024/rank": ["data.batch_size=1024"],
}


def render(result: dict) -> str:
    """The Markdown table of a ``--json`` result."""
    lines = [
        "# Fixed cost of a sharded step (tiny-dense config, 2 CPU ranks)", "",
        f"Date {result['date']}; machine: {result['machine']}; load at start {result['load_at_start']}.",
        f"Command: `{result['command']}`.", "",
        "| variant | step ms (median) | samples/s (median) | runs (ms, load) |", "| --- | --- | --- | --- |",
    ]
    for n, v in result["variants"].items():
        each = "; ".join(f"{x['step_ms']} ms @ {x['load_1min']}" for x in v["runs"])
        lines.append(f"| {n} | {round(v['step_ms_median'], 2)} | {v['samples_per_s_median']:.0f} | {each} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", required=True)
    p.add_argument("--md")
    args = p.parse_args(argv)
    train = throughput.ensure_data("tiny", CONFIG)
    names = list(VARIANTS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            load = round(os.getloadavg()[0], 2)
            res = throughput.run_fusionrec(
                "tiny", CONFIG, [f"data.train={train}", *VARIANTS[name]], args.warmup, args.steps, 2,
                tag="_fixed", mallopt=True,
            )
            runs[name].append({"step_ms": round(res["step_ms_median"], 2), "samples_per_s": round(res["samples_per_s"]),
                               "load_1min": load})
            print(f"[round {r}] {name}: {res['step_ms_median']:.1f} ms/step, {res['samples_per_s']:.0f} samples/s, "
                  f"load {load}", flush=True)
    result = {**run_info(), "config": CONFIG, "variants": {
        n: {"step_ms_median": round(statistics.median(x["step_ms"] for x in v), 2),
            "samples_per_s_median": statistics.median(x["samples_per_s"] for x in v), "runs": v}
        for n, v in runs.items()
    }}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
