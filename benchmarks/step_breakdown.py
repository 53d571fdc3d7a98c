"""Where the sharded step's time goes (issue 21, step 1): every millisecond of one training step
on every rank, phase by phase and kind of work by kind of work.

    .venv/bin/python -m benchmarks.step_breakdown --configs tiny,demo

For each config it runs the real trainer on 2 CPU ranks under torchrun (``benchmarks/throughput.py``'s
worker: planner, DMP, fused row-wise Adagrad, TrainPipelineSparseDist, torchrec.metrics, 1
thread per rank, no checkpoint saves, the demo's 256 rows per rank) with ``torch.profiler`` on
**every** rank over ``--profile-steps`` steady-state steps, then the plain 1-thread trainer
(``benchmarks/baseline_trainer.py``) on the same global batch as the reference.

Accounting (:func:`account`), on the thread that runs the step:

* **phases**: the outermost labelled ranges. TorchRec's pipeline labels its stages
  (``## next_batch ##`` and ``## copy_batch_to_gpu ##``: the reader and the batch copy;
  ``## start_sparse_data_dist ##`` / ``## wait_sparse_data_dist ##`` / ``## wait_for_batch ##``:
  the input dist of the next batch; ``## forward ##``: lookups, output dist and the dense forward;
  ``## backward ##``: dense backward, embedding backward with the fused sparse update, gradient
  collectives; ``## optimizer ##`` / ``## zero_grad ##``: the dense optimizer), and the trainer its
  own (``## fusionrec:loss_window ##``, ``## fusionrec:metrics_update ##``, ``## fusionrec:log ##``,
  ``## fusionrec:stop_check ##``, ``## fusionrec:checkpoint ##``: pipeline/train.py). The step's
  wall time outside them is ``other``.
* **kinds**: each profiled op's *self* CPU time, by name: collectives (gloo all-to-all,
  reduce-scatter, all-reduce, all-gather and the waits on them: on CPU a wait is where a rank
  idles until the other rank catches up), FBGEMM embedding kernels (lookups; in backward the
  fused optimizer update), FBGEMM sparse-data ops (KJT permutes, bucketize, jagged and cumsum
  kernels), dense ATen ops, autograd nodes, and Python (a labelled range's self time: the
  interpreter between ops). What the profiler sees nowhere is the rest of ``other``.

Then, on the tiny config, a few levers in alternating rounds without the profiler (``LEVERS``).
Writes ``benchmarks/results/step_breakdown.{json,md}``; ``step_breakdown_notes.md`` beside
them, the reading, is appended to the Markdown when it exists.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import throughput  # noqa: E402
from benchmarks.runinfo import load_average, run_info  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PHASES = [
    ("reader + batch copy", ("## next_batch", "## copy_batch_to_gpu", "## load_batch")),
    ("input dist (next batch)", ("## start_sparse_data_dist", "## wait_sparse_data_dist", "## wait_for_batch")),
    ("forward", ("## forward",)),
    ("backward", ("## backward",)),
    ("dense optimizer", ("## optimizer", "## zero_grad")),
    ("loss window", ("## fusionrec:loss_window",)),
    ("metrics update", ("## fusionrec:metrics_update",)),
    ("log (every log_every)", ("## fusionrec:log",)),
    ("stop check", ("## fusionrec:stop_check",)),
    ("checkpoint", ("## fusionrec:checkpoint",)),
]
KINDS = ["collectives", "embedding kernels", "sparse-data ops", "dense ops", "autograd nodes", "python", "other ops"]
# TorchRec's output dists are autograd Functions named All2All_*_Req / *_Wait / ReduceScatterBase_*:
# their self time is the wait inside them (forward and backward), so they count as collectives.
COLLECTIVE = ("all_to_all", "alltoall", "all2all", "reduce_scatter", "reducescatter", "allreduce", "all_reduce",
              "all_gather", "allgather", "broadcast", "gloo", "c10d", "wait_tensor", "record_param_comms", "_wait")  # fmt: skip
EMBEDDING = ("embedding", "codegen", "tbe", "lookup", "adagrad", "pooled")


def kind_of(name: str) -> str:
    low = name.lower()
    if any(k in low for k in COLLECTIVE):
        return "collectives"
    if low.startswith("fbgemm::"):
        return "embedding kernels" if any(k in low for k in EMBEDDING) else "sparse-data ops"
    if low.startswith("aten::") or low.startswith("prim::"):
        return "dense ops"
    if low.startswith("autograd::") or "backward" in low and "::" not in low:
        return "autograd nodes"
    if "::" not in low:
        return "python"  # record_function ranges (labels, module names): their self time is interpreter time
    return "other ops"


def phase_of(name: str) -> str | None:
    """The phase of a profiler range named ``name``: the first of :data:`PHASES` one of whose
    prefixes it starts with (None: not a phase range)."""
    for phase, prefixes in PHASES:
        if any(name.startswith(p) for p in prefixes):
            return phase
    return None


def account(events, steps: int, step_wall_ms: float) -> dict:
    """ms per step of each (phase, kind) on the thread that ran the steps.

    Args:
        events: ``torch.profiler.profile.events()`` of ``steps`` whole steps.
        steps: how many steps the profile spans.
        step_wall_ms: the wall time of one step (the profiled span / steps).

    Returns:
        ``{"phases": {phase: {"wall": ms, kind: ms, ..., "unprofiled": ms}}, "step_wall": ms}``:
        a phase's kinds sum to its wall time up to what no event covered (``unprofiled``), and
        phase ``other`` is the step's time outside every labelled phase.
    """
    evs = list(events)
    main = next((e.thread for e in evs if e.name.startswith("## forward")), None)
    evs = [e for e in evs if e.thread == main]
    phased = [(e, phase_of(e.name)) for e in evs]
    ranges = sorted((e.time_range.start, e.time_range.end, phase) for e, phase in phased if phase)
    top, last_end = [], -1
    for start, end, phase in ranges:
        if start >= last_end:
            top.append((start, end, phase))
            last_end = end
    starts = [r[0] for r in top]

    def phase_at(t: float) -> str:
        i = bisect.bisect_right(starts, t) - 1
        return top[i][2] if i >= 0 and top[i][0] <= t < top[i][1] else "other"

    wall: dict[str, float] = defaultdict(float)
    for start, end, phase in top:
        wall[phase] += (end - start) / 1000.0
    wall["other"] = steps * step_wall_ms - sum(wall.values())
    kinds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in evs:
        kinds[phase_at(e.time_range.start)][kind_of(e.name)] += e.self_cpu_time_total / 1000.0
    out = {}
    for phase in [p for p, _ in PHASES] + ["other"]:
        if phase not in wall and phase not in kinds:
            continue
        row = {"wall": round(wall.get(phase, 0.0) / steps, 3)}
        for kind in KINDS:
            row[kind] = round(kinds[phase].get(kind, 0.0) / steps, 3)
        row["unprofiled"] = round(row["wall"] - sum(row[k] for k in KINDS), 3)
        out[phase] = row
    return {"phases": out, "step_wall": round(step_wall_ms, 3)}


def run_config(name: str, warmup: int, steps: int, profile_steps: int, extra: list[str]) -> dict:
    cfg_path = throughput.CONFIGS[name]
    sets = [f"data.train={throughput.ensure_data(name, cfg_path)}", *extra]
    load = load_average()
    fr = throughput.run_fusionrec(name, cfg_path, sets, warmup, steps, 2, profile_steps=profile_steps, mallopt=True,
                                  tag="_breakdown")  # fmt: skip
    batch = fr["global_batch"]
    base = throughput.run_baseline(name, cfg_path, sets, batch, warmup, steps, 1)
    return {"config": cfg_path, "load_at_start": load, "global_batch": batch, "fusionrec": fr, "plain_1thread": base}


LEVERS = {
    "as configured": ([], ()),
    "stop check every 10 steps": (["checkpoint.stop_check_every_n_steps=10"], ()),
    "torchrec.metrics off": ([], ("--no-metrics",)),
}


def run_levers(name: str, rounds: int, warmup: int, steps: int, extra: list[str]) -> dict:
    """Each lever once per round, the order rotated between rounds; un-profiled step time and CPU."""
    cfg_path = throughput.CONFIGS[name]
    sets = [f"data.train={throughput.ensure_data(name, cfg_path)}", *extra]
    out: dict[str, list] = {lever: [] for lever in LEVERS}
    for r in range(rounds):
        for lever in throughput.rotated(list(LEVERS), r):
            extra, flags = LEVERS[lever]
            load = load_average()[0]
            res = throughput.run_fusionrec(name, cfg_path, sets + extra, warmup, steps, 2, mallopt=True, tag="_lever",
                                           worker_flags=flags)  # fmt: skip
            out[lever].append({"round": r, "step_ms": round(res["step_ms_median"], 2), "load_1min": load,
                               "cpu_ms_per_1k_samples": round(res["cpu_ms_per_1k_samples"], 1)})  # fmt: skip
    return {"config": cfg_path, "rounds": rounds, "levers": out}


def run_single_process(name: str, rounds: int, warmup: int, steps: int, extra: list[str]) -> dict:
    """World size 1 with 2 intra-op threads against the plain trainer on 2 threads, the same
    batch (the config's rows per rank), alternating which goes first; un-profiled."""
    cfg_path = throughput.CONFIGS[name]
    sets = [f"data.train={throughput.ensure_data(name, cfg_path)}", *extra]
    runs: dict[str, list] = {"fusionrec, 1 rank x 2 threads": [], "plain trainer, 2 threads": []}
    batch = None
    for r in range(rounds):
        for arm in throughput.rotated(list(runs), r):
            load = load_average()[0]
            if arm.startswith("fusionrec"):
                res = throughput.run_fusionrec(name, cfg_path, sets, warmup, steps, 1, mallopt=True, tag="_1rank", threads=2)
                batch = res["global_batch"]
            else:
                res = throughput.run_baseline(name, cfg_path, sets, batch or 256, warmup, steps, 2)
            runs[arm].append({"round": r, "step_ms": round(res["step_ms_median"], 2), "load_1min": load,
                              "samples_per_s": round(res["samples_per_s"], 1),
                              "cpu_ms_per_1k_samples": round(res["cpu_ms_per_1k_samples"], 1)})  # fmt: skip
    return {"config": cfg_path, "rounds": rounds, "batch": batch, "arms": runs}


def render_single(single: dict) -> list[str]:
    lines = ["", f"## One process, 2 threads: {single['config']}, batch {single['batch']} ({single['rounds']} rounds, "
             "order alternated)", "",
             "| arm | samples/s (median) | CPU-ms / 1k samples (median) | runs (samples/s @ load) |",
             "|---|---:|---:|---|"]  # fmt: skip
    cpu = {}
    for arm, runs in single["arms"].items():
        sps = statistics.median(r["samples_per_s"] for r in runs)
        cpu[arm] = statistics.median(r["cpu_ms_per_1k_samples"] for r in runs)
        each = "; ".join(f"{r['samples_per_s']:.0f} @ {r['load_1min']}" for r in runs)
        lines.append(f"| {arm} | {sps:.0f} | {cpu[arm]:.1f} | {each} |")
    fr, plain = cpu.values()
    lines += ["", f"CPU time per sample, fusionrec / plain: {fr / plain:.2f}× (aim: within 1.15×)."]
    return lines


def render_levers(levers: dict) -> list[str]:
    lines = ["", f"## Levers on {levers['config']} (un-profiled, {levers['rounds']} rounds, order rotated)", "",
             "| lever | step ms (median) | CPU-ms / 1k samples (median) | runs (ms @ load) |", "|---|---:|---:|---|"]  # fmt: skip
    for lever, runs in levers["levers"].items():
        ms = statistics.median(r["step_ms"] for r in runs)
        cpu = statistics.median(r["cpu_ms_per_1k_samples"] for r in runs)
        each = "; ".join(f"{r['step_ms']} @ {r['load_1min']}" for r in runs)
        lines.append(f"| {lever} | {ms:.2f} | {cpu:.1f} | {each} |")
    return lines


def render(result: dict) -> str:
    lines = [
        "# Where a sharded step's time goes (issue 21)",
        "",
        f"- date: {result['date']}; machine: {result['machine']}",
        f"- config overrides on every run: {', '.join(f'`{x}`' for x in result.get('sets', [])) or 'none'}",
        f"- command: `{result['command']}`; load average at start {result['load_at_start']}, at end {result['load_at_end']}",
        "- the real trainer on 2 CPU ranks (torchrun, gloo, 1 thread per rank, 256 rows per rank, DataLoader "
        "workers: none, so the reader runs in the step), torch.profiler on every rank over "
        f"{result['profile_steps']} steady-state steps after {result['warmup']} warm-up steps. ms per step; "
        "a phase's kinds are the self CPU time of its ops (benchmarks/step_breakdown.py's docstring).",
    ]
    for name, run in result["configs"].items():
        fr, base = run["fusionrec"], run["plain_1thread"]
        per_rank_plain = base["step_ms_median"] / 2
        lines += ["", f"## {name} (`{run['config']}`), global batch {run['global_batch']}", "",
                  f"Un-profiled: fusionrec step {fr['step_ms_median']:.1f} ms (median over {fr['steps']} steps), "
                  f"{fr['cpu_ms_per_1k_samples']:.1f} CPU-ms per 1,000 samples; the plain 1-thread trainer "
                  f"{base['step_ms_median']:.1f} ms for the whole global batch, {base['cpu_ms_per_1k_samples']:.1f} "
                  f"CPU-ms per 1,000 samples, i.e. {per_rank_plain:.1f} ms for one rank's half. "
                  f"Load at start {run['load_at_start']}."]  # fmt: skip
        for rank, acc in enumerate(fr["accounts_by_rank"]):
            lines += ["", f"### rank {rank}: profiled step {acc['step_wall']:.2f} ms", "",
                      "| phase | wall | " + " | ".join(KINDS) + " | unprofiled |",
                      "|---|---:|" + "---:|" * (len(KINDS) + 1)]  # fmt: skip
            for phase, row in acc["phases"].items():
                cells = " | ".join(f"{row[k]:.2f}" for k in KINDS)
                lines.append(f"| {phase} | **{row['wall']:.2f}** | {cells} | {row['unprofiled']:.2f} |")
            totals = {k: sum(r[k] for r in acc["phases"].values()) for k in KINDS}
            lines.append("| **all** | **" + f"{acc['step_wall']:.2f}" + "** | "
                         + " | ".join(f"**{totals[k]:.2f}**" for k in KINDS) + " | |")  # fmt: skip
        top = fr["accounts_by_rank"][0].get("top_ops", "")
        lines += ["", "<details><summary>rank 0: top ops by self CPU time (torch.profiler)</summary>", "", "```",
                  top.strip(), "```", "</details>"]  # fmt: skip
    if "levers" in result:
        lines += render_levers(result["levers"])
    if "single_process_command" in result:
        lines += ["", f"The single-process runs below: {result['single_process_date']}, "
                  f"`{result['single_process_command']}`, load at end {result['single_process_load_at_end']}."]
    for single in result.get("single_process", []):
        lines += render_single(single)
    notes = RESULTS / "step_breakdown_notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,demo")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run (the profile spans the first ones)")
    parser.add_argument("--profile-steps", type=int, default=30)
    parser.add_argument("--lever-rounds", type=int, default=3, help="rounds of the lever runs on tiny (0: none)")
    parser.add_argument("--single-rounds", type=int, default=3,
                        help="rounds of world size 1 x 2 threads against the plain 2-thread trainer (0: none)")
    parser.add_argument("--only-single", action="store_true",
                        help="run only the single-process comparison and add it to the existing JSON")
    parser.add_argument("--render", action="store_true", help="rewrite the Markdown from the JSON only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="a config override for every run (e.g. sharding.constraints={})")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.step_breakdown " + " ".join(sys.argv[1:])
    names = args.configs.split(",")

    def single_process() -> list[dict]:
        return [run_single_process(name, args.single_rounds, args.warmup, args.steps, args.set) for name in names]

    if args.render or args.only_single:
        result = json.loads((RESULTS / "step_breakdown.json").read_text())
        if args.only_single:
            result["single_process"] = single_process()
            result["single_process_command"] = command
            result["single_process_date"], result["single_process_load_at_end"] = run_info()["date"], load_average()
    else:
        configs = {name: run_config(name, args.warmup, args.steps, args.profile_steps, args.set) for name in names}
        result = {**run_info(), "command": command, "warmup": args.warmup, "profile_steps": args.profile_steps,
                  "sets": args.set, "configs": configs}  # fmt: skip
        if args.lever_rounds:
            result["levers"] = run_levers("tiny", args.lever_rounds, args.warmup, args.steps, args.set)
        if args.single_rounds:
            result["single_process"] = single_process()
        result["load_at_end"] = load_average()
    if not args.render:
        (RESULTS / "step_breakdown.json").write_text(json.dumps(result, indent=1) + "\n")
    markdown = render(result)
    (RESULTS / "step_breakdown.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
