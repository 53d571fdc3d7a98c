"""Throughput benchmark: fusionrec (TorchRec, CPU ranks under torchrun) against a plain PyTorch
trainer of the same model (benchmarks/baseline_trainer.py, one process).

    python benchmarks/throughput.py --json benchmarks/results/throughput.json \
        --md benchmarks/results/throughput.md --notes benchmarks/results/throughput_notes.md

Configs: ``tiny`` (``configs/bench_tiny.yaml``: the demo with a trivially small dense model,
which isolates the fixed per-step cost), ``demo`` (``configs/demo.yaml``), ``demo_b2048`` (the
demo at 2,048 rows per rank, both arms: the fixed cost amortised as production batch sizes
amortise it) and ``large`` (``configs/bench_large.yaml``). For each:

1. Synthetic logs under ``data/bench_<name>`` (``datasets.synthetic``) unless already there.
2. ``--repeats`` rounds; each runs every arm of :func:`arms_for` once, one after the other
   (never at the same time), in an order that rotates between rounds so that drifts in the
   machine's load hit every arm alike, then measures the single-thread GEMM rate (for dense
   MFU). The 1-minute load average before each arm is recorded.
   * fusionrec: ``torchrun`` on this file's ``--worker`` mode, which builds the real
     :class:`pipeline.train.Trainer` (planner, DMP, fused row-wise Adagrad,
     TrainPipelineSparseDist, torchrec.metrics, the JSONL log, the stop check) and runs ``warmup
     + steps`` steps with 1 intra-op thread per rank; only the checkpoint save is switched off.
     The arms: the config as written; where it pins sharding types, the same without the
     constraints (the planner's ``sharding.proposals: auto`` choice); on tiny and demo, one
     process with 2 intra-op threads reading the global batch;
   * the plain trainer on 2 threads and on 1 thread, the same global batch, the same reader;
   samples/s = ``steps x global batch / wall time of the last `steps` steps`` (rank 0's clock,
   logging included), CPU time = user + system of every process over the same steps.
   Every process runs with the real trainer's malloc setting (``job.keep_freed_memory``).
3. Ratios are taken per round (same round = same neighbours), then the median over rounds.

Global batch is equal in every arm (fusionrec ``ranks x B`` against the plain trainer's
``ranks x B`` in one process), so all make the same number of optimizer updates per sample.
The per-phase account of a step is ``benchmarks/step_breakdown.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.runinfo import run_info  # noqa: E402
CONFIGS = {"demo": "configs/demo.yaml", "large": "configs/bench_large.yaml", "tiny": "configs/bench_tiny.yaml"}
SYNTH_ROWS = {"demo": 200_000, "large": 250_000}
DATA_OF = {"demo": "demo", "large": "large", "tiny": "demo"}  # the tiny config reads the demo's logs

# --------------------------------------------------------------------------- rounds
def rotated(items: list[str], r: int) -> list[str]:
    """Round ``r``'s order: each item goes first once every len(items) rounds."""
    return items[r % len(items) :] + items[: r % len(items)]


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (gloo's included)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> int:
    """Runs under torchrun: the real Trainer, instrumented, no checkpoint save."""
    from fusionrec.pipeline.job import keep_freed_memory, load_job_config, process_group
    from fusionrec.pipeline.logs import quiet_third_party

    if args.mallopt:
        keep_freed_memory()
    quiet_third_party()
    # --profile profiles after the timed steps, so the timing is of unprofiled steps.
    total = args.warmup + args.steps + (args.profile_steps if args.profile else 0)
    overrides = list(args.set or []) + [f"train.max_steps={total}", "checkpoint.every_n_steps=0"]
    cfg = load_job_config(args.config, overrides)
    with process_group(cfg.train.device, cfg.train.process_group_timeout_s) as info:
        instrumented_run(args, cfg, info)
    return 0


def instrumented_run(args: argparse.Namespace, cfg, info) -> None:
    """The real Trainer with timing and profiling hooks, on this rank of the running group;
    rank 0 writes ``args.out``. Nothing of the trainer outlives this call (``job.process_group``)."""
    import fusionrec.pipeline.train as train_mod
    import torch

    from fusionrec.pipeline.logs import TRAIN_LOG, read_jsonl

    torch.set_num_threads(args.threads)
    if args.cold_cache:  # an empty inductor cache of this rank's own: compile times are cold ones
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"inductor_rank{info.rank}_")
    compiling = cfg.train.compile.enabled
    if compiling and args.tim_layers:  # benchmarks/compile.py's rejected arm
        from benchmarks.compile import also_compile_tim_layers

        train_mod.compile_dense = also_compile_tim_layers()
    stamps: list[float] = []
    cpu_marks: list[float] = []
    prof_holder: dict = {}
    profile_from = args.warmup + args.steps
    profile_to = profile_from + args.profile_steps

    base = train_mod.TrainPipelineSparseDist

    class TimedPipeline(base):  # type: ignore[misc, valid-type]
        def progress(self, it):
            out = super().progress(it)
            stamps.append(time.perf_counter())
            n = len(stamps)
            if n == args.warmup or n == args.warmup + args.steps:
                cpu_marks.append(cpu_seconds())
            if compiling and n == args.warmup:
                from fusionrec.pipeline.compiled import compile_stats

                prof_holder["compile_at_warmup"] = compile_stats(self._model, info.device)
            if args.profile:
                if n == profile_from:
                    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False)
                    prof.__enter__()
                    prof_holder["prof"], prof_holder["t0"] = prof, time.perf_counter()
                elif n == profile_to and "prof" in prof_holder:
                    prof_holder["t1"] = time.perf_counter()
                    prof_holder["prof"].__exit__(None, None, None)
            return out

    train_mod.TrainPipelineSparseDist = TimedPipeline
    if args.no_metrics:
        train_mod.TrainMetrics.update = lambda self, *a, **k: None
        train_mod.TrainMetrics.compute = lambda self: {}
    train_mod.Trainer.save = lambda self: None
    trainer = train_mod.Trainer(cfg, Path(args.run_dir), info)
    run_start = time.perf_counter()
    trainer.run()
    import torch.distributed as dist

    mine = cpu_marks[1] - cpu_marks[0] if len(cpu_marks) == 2 else float("nan")
    every = [None] * info.world_size
    dist.all_gather_object(every, mine)
    compiled_by_rank = [None] * info.world_size
    if compiling:  # every rank's own compiles: ranks read different batches, so variants may differ
        from fusionrec.pipeline.compiled import compile_stats

        mine = {"at_warmup": prof_holder.get("compile_at_warmup"), "at_end": compile_stats(trainer.model, info.device)}
        dist.all_gather_object(compiled_by_rank, mine)
    accounts = [None] * info.world_size
    if args.profile:  # every rank's own step, phase by phase (benchmarks/step_breakdown.py)
        from benchmarks.step_breakdown import account

        wall = 1000 * (prof_holder["t1"] - prof_holder["t0"]) / args.profile_steps
        mine = account(prof_holder["prof"].events(), args.profile_steps, wall)
        mine["top_ops"] = prof_holder["prof"].key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        dist.all_gather_object(accounts, mine)
    if info.rank == 0:
        w, n = args.warmup, args.steps
        elapsed = stamps[w + n - 1] - stamps[w - 1]
        gb = trainer.global_batch
        result = {
            "samples_per_s": n * gb / elapsed,
            "elapsed_s": elapsed,
            "steps": n,
            "warmup": w,
            "global_batch": gb,
            "world_size": info.world_size,
            "threads_per_rank": torch.get_num_threads(),
        }
        step_ms = sorted(1000 * (b - a) for a, b in zip(stamps[w - 1 : w + n - 1], stamps[w : w + n]))
        result["step_ms_median"] = step_ms[len(step_ms) // 2]
        # From Trainer.run to the end of the first / the warm-up steps: pipeline fill, and the
        # compiles under train.compile (compile time ~ this minus an eager run's).
        result["first_step_s"] = stamps[0] - run_start
        result["warmup_s"] = stamps[w - 1] - run_start
        if compiling:
            from torch._dynamo.utils import calculate_time_spent

            result["compile"] = {
                **compiled_by_rank[0],
                "by_rank": compiled_by_rank,
                "dynamo_time_s_rank0": {k: round(v, 2) for k, v in calculate_time_spent().items()},
            }
        result["cpu_s_per_rank"] = every
        result["plan"] = {row["table"]: row["sharding_type"] for row in trainer.plan_rows}
        result["cpu_ms_per_1k_samples"] = 1e6 * sum(every) / (n * gb)
        recs = [r for r in read_jsonl(Path(args.run_dir) / TRAIN_LOG) if "samples_per_s" in r]
        result["trainer_log_samples_per_s"] = [r["samples_per_s"] for r in recs if r["step"] > w]
        if args.profile:
            result["accounts_by_rank"] = accounts
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


# --------------------------------------------------------------------------- driver
def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = f"{REPO}{os.pathsep}{e.get('PYTHONPATH', '')}"
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONWARNINGS"] = "ignore"
    return e


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_fusionrec(
    name: str,
    cfg_path: str,
    sets: list[str],
    warmup: int,
    steps: int,
    nproc: int,
    profile_steps: int = 0,
    tag: str = "",
    mallopt: bool = False,
    cold_cache: bool = False,
    worker_flags: tuple[str, ...] = (),
    threads: int = 1,
) -> dict:
    run_dir = REPO / "runs" / f"bench_{name}_fusionrec{tag}"
    if run_dir.exists():
        for p in run_dir.glob("*.jsonl"):
            p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "result.json"
    if out.exists():
        out.unlink()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(Path(__file__).resolve()),
        "--worker",
        "--config",
        cfg_path,
        "--run-dir",
        str(run_dir),
        "--out",
        str(out),
        "--warmup",
        str(warmup),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
    ]
    for s in sets:
        cmd += ["--set", s]
    if profile_steps:
        cmd += ["--profile", "--profile-steps", str(profile_steps)]
    if mallopt:
        cmd += ["--mallopt"]
    if cold_cache:
        cmd += ["--cold-cache"]
    cmd += list(worker_flags)
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"fusionrec run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


def run_baseline(name: str, cfg_path: str, sets: list[str], batch: int, warmup: int, steps: int, threads: int,
                 tag: str = "") -> dict:  # fmt: skip
    """The plain trainer, with the same malloc setting as fusionrec's trainer (its best configuration)."""
    out = REPO / "runs" / f"bench_{name}_baseline_{threads}t{tag}.json"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "baseline_trainer.py"),
        "--config",
        cfg_path,
        "--batch-size",
        str(batch),
        "--warmup",
        str(warmup),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
        "--json",
        str(out),
        "--mallopt",
    ]
    for s in sets:
        cmd += ["--set", s]
    e = env()
    e["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"baseline failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


def ensure_data(name: str, cfg_path: str) -> str:
    name = DATA_OF[name]
    cfg_path = CONFIGS[name]
    out = REPO / "data" / f"bench_{name}"
    if not (out / "train").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fusionrec.datasets.synthetic",
                "--config",
                cfg_path,
                "--out",
                str(out),
                "--rows",
                str(SYNTH_ROWS[name]),
            ],
            cwd=REPO,
            env=env(),
            check=True,
        )
    return str(out / "train")


def spread(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "runs": [round(v, 1) for v in values],
    }


def dense_work(cfg_path: str) -> dict:
    """Dense FLOPs per sample of one fwd+bwd (the useful work: per-length TIM counts only real
    positions) and the matmul shapes that carry them, counted in this process on 1 thread."""
    from benchmarks.dense_step import DenseModel, count, make_inputs, schema_and_model

    schema, model_data, batch = schema_and_model(cfg_path)
    model = DenseModel("fusionrec.models", schema, model_data)
    flops, _, shapes = count(model, make_inputs(schema, batch, seed=0), batch)
    return {"flops_per_sample": flops, "top_matmul_shapes": [list(k) for k, _ in shapes[:3]]}


def gemm_peak(shapes: list[list[int]]) -> dict:
    """Single-thread fp32 GEMM rate now (FLOP/s): torch.mm at 2048³ and at the model's largest
    matmul shapes; ``peak`` is the best of them (the rate MFU is measured against)."""
    import torch

    from benchmarks.dense_step import gemm_rate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = {"2048^3": gemm_rate(2048, 2048, 2048)}
        for m, k, n, batch in shapes:
            rates[f"{m}x{k}x{n}" + (f"x{batch}" if batch > 1 else "")] = gemm_rate(m, k, n, batch)
    finally:
        torch.set_num_threads(threads)
    return {"peak": max(rates.values()), "rates": {k: round(v / 1e9, 1) for k, v in rates.items()}}


@dataclass(frozen=True)
class Arm:
    """One contestant of a round: fusionrec (``nproc`` ranks of ``threads`` intra-op threads,
    ``sets`` on top of the config's) or the plain trainer (``baseline``: one process of
    ``threads`` threads, the same global batch)."""

    baseline: bool = False
    threads: int = 1
    nproc: int = 2
    sets: tuple[str, ...] = ()
    rank_batch: bool = False  # plain trainer only: one rank's batch, not the global one (a reference)


def arms_for(name: str, cfg, nproc: int) -> dict[str, Arm]:
    """The arms of ``name``'s rounds. ``fusionrec`` runs the config as written; where the config
    pins sharding types (``sharding.constraints``), ``fusionrec_planner`` drops them so that the
    planner's own choice (``sharding.proposals: auto``) is measured too; on the small configs
    ``fusionrec_1rank_2threads`` is the single-process path (world size 1, 2 intra-op threads) and
    ``baseline_1thread_rank_batch`` the plain 1-thread trainer on one rank's batch: what the
    dense model alone costs per sample at the batch each rank runs (not a competitor: another
    batch size)."""
    arms = {"fusionrec": Arm(nproc=nproc)}
    if cfg.sharding.constraints:
        arms["fusionrec_planner"] = Arm(nproc=nproc, sets=("sharding.constraints={}",))
    if name in ("tiny", "demo"):
        arms["fusionrec_1rank_2threads"] = Arm(nproc=1, threads=2)
    arms["baseline_2thread"] = Arm(baseline=True, threads=2)
    arms["baseline_1thread"] = Arm(baseline=True, threads=1)
    if name in ("tiny", "demo") and cfg.data.batch_size < 2048:
        arms["baseline_1thread_rank_batch"] = Arm(baseline=True, threads=1, rank_batch=True)
    return arms


def summarise(name: str, arms: dict[str, Arm], runs: dict[str, list[dict]], rounds: list[dict], nproc: int,
              flops: float) -> dict:  # fmt: skip
    """Per fusionrec arm: medians over rounds of samples/s, CPU time per 1,000 samples, the
    per-round ratios against the best plain trainer of the round and against the physical limit
    (``nproc`` x the plain 1-thread trainer's samples/s), CPU time against the plain 1-thread
    trainer's, and (tiny) the fixed cost per step."""
    med = lambda xs: round(statistics.median(xs), 4 if max(map(abs, xs)) < 10 else 1)  # noqa: E731
    base1 = runs["baseline_1thread"]
    best = [max(b2["samples_per_s"], b1["samples_per_s"]) for b2, b1 in zip(runs["baseline_2thread"], base1)]
    out = {
        "baseline_2thread_samples_per_s": med([x["samples_per_s"] for x in runs["baseline_2thread"]]),
        "baseline_1thread_samples_per_s": med([x["samples_per_s"] for x in runs["baseline_1thread"]]),
        "baseline_best_samples_per_s": med(best),
        "baseline_cpu_ms_per_1k_samples": {
            who: med([x["cpu_ms_per_1k_samples"] for x in runs[who]]) for who in ("baseline_2thread", "baseline_1thread")
        },
        "baseline_step_ms_median": {who: med([x["step_ms_median"] for x in runs[who]])
                                    for who in ("baseline_2thread", "baseline_1thread")},  # fmt: skip
        "arms": {},
    }
    if "baseline_1thread_rank_batch" in runs:
        out["baseline_1thread_rank_batch_cpu_ms_per_1k_samples"] = med(
            [x["cpu_ms_per_1k_samples"] for x in runs["baseline_1thread_rank_batch"]])
    for who, arm in arms.items():
        if arm.baseline:
            continue
        mine = runs[who]
        vs_best = [f["samples_per_s"] / b for f, b in zip(mine, best)]
        vs_limit = [f["samples_per_s"] / (nproc * b["samples_per_s"]) for f, b in zip(mine, base1)]
        cpu_vs_1t = [f["cpu_ms_per_1k_samples"] / b["cpu_ms_per_1k_samples"] for f, b in zip(mine, base1)]
        entry = {
            "world_size": arm.nproc,
            "threads_per_rank": arm.threads,
            "sets": list(arm.sets),
            "samples_per_s": med([x["samples_per_s"] for x in mine]),
            "cpu_ms_per_1k_samples": med([x["cpu_ms_per_1k_samples"] for x in mine]),
            "step_ms_median": med([x["step_ms_median"] for x in mine]),
            "ratio_vs_best_baseline": med(vs_best),
            "ratio_vs_best_baseline_runs": [round(x, 3) for x in vs_best],
            "of_physical_limit": med(vs_limit),
            "of_physical_limit_runs": [round(x, 3) for x in vs_limit],
            "cpu_vs_baseline_1thread": med(cpu_vs_1t),
            "cpu_vs_baseline_1thread_runs": [round(x, 3) for x in cpu_vs_1t],
            "dense_mfu": med([x["samples_per_s"] * flops / (arm.nproc * arm.threads * r["gemm_peak"])
                              for x, r in zip(mine, rounds)]),  # fmt: skip
        }
        if arm.nproc > 1:
            entry["plan"] = mine[-1].get("plan")
        if name == "tiny" and arm.nproc > 1:
            # What a step costs beyond a perfect split of the plain 1-thread work over the ranks.
            entry["fixed_step_overhead_ms"] = med(
                [f["step_ms_median"] - b["step_ms_median"] / arm.nproc for f, b in zip(mine, base1)]
            )
        out["arms"][who] = entry
    if "fusionrec_1rank_2threads" in out["arms"]:
        one = runs["fusionrec_1rank_2threads"]
        out["arms"]["fusionrec_1rank_2threads"]["cpu_vs_baseline_2thread"] = med(
            [f["cpu_ms_per_1k_samples"] / b["cpu_ms_per_1k_samples"] for f, b in zip(one, runs["baseline_2thread"])]
        )
    return out


#: extra rows: a config of CONFIGS run with more settings (both arms), and its own step counts
VARIANT_CONFIGS = {"demo_b2048": ("demo", ["data.batch_size=2048"])}


def driver(args: argparse.Namespace) -> int:
    """Alternating rounds per config: every arm of :func:`arms_for` once per round, in an order
    that rotates between rounds, then a single-thread GEMM-rate probe; ratios are taken per round
    (the same neighbours), then the median over rounds."""
    results = {**run_info(), "configs": {}}
    for name in args.configs.split(","):
        base_name, extra = VARIANT_CONFIGS.get(name, (name, []))
        cfg_path = CONFIGS[base_name]
        from fusionrec.pipeline.config import load_config

        train = ensure_data(base_name, cfg_path)
        sets = [f"data.train={train}", *extra]
        cfg = load_config(cfg_path, sets)
        per_rank = cfg.data.batch_size
        gb = per_rank * args.nproc
        if base_name == "large":
            warmup, steps = args.warmup_large, args.steps_large
        elif per_rank >= 2048:
            warmup, steps = args.warmup_large, max(args.steps // 4, 1)
        else:
            warmup, steps = args.warmup, args.steps
        work = dense_work(cfg_path)
        arms = arms_for(base_name, cfg, args.nproc)
        names = list(arms)
        runs: dict[str, list[dict]] = defaultdict(list)
        rounds = []
        for r in range(args.repeats):
            order = rotated(names, r)
            load = {}
            for who in order:
                arm = arms[who]
                load[who] = round(os.getloadavg()[0], 2)
                t = time.time()
                if arm.baseline:
                    got = run_baseline(base_name, cfg_path, sets, per_rank if arm.rank_batch else gb, warmup, steps,
                                       arm.threads, tag="_rank_batch" if arm.rank_batch else "")  # fmt: skip
                else:
                    # one rank reads the global batch: same samples per optimizer step as the others
                    run_sets = [*sets, *arm.sets] + ([f"data.batch_size={gb}"] if arm.nproc == 1 else [])
                    got = run_fusionrec(name, cfg_path, run_sets, warmup, steps, arm.nproc, mallopt=True,
                                        tag=f"_{who}", threads=arm.threads)  # fmt: skip
                runs[who].append(got)
                print(f"[{name} round {r}] {who}: {got['samples_per_s']:.0f} samples/s, "
                      f"{got['cpu_ms_per_1k_samples']:.1f} CPU-ms/1k, load {load[who]} ({time.time() - t:.0f}s)", flush=True)
            gemm = gemm_peak(work["top_matmul_shapes"])
            rounds.append({
                "order": order,
                "load_1min": load,
                "samples_per_s": {k: round(runs[k][-1]["samples_per_s"], 1) for k in order},
                "cpu_ms_per_1k_samples": {k: round(runs[k][-1]["cpu_ms_per_1k_samples"], 1) for k in order},
                "gemm_gflops_1thread": gemm["rates"],
                "gemm_peak": gemm["peak"],
            })
        entry = {
            "config": cfg_path,
            "sets": extra,
            "world_size": args.nproc,
            "batch_per_rank": per_rank,
            "global_batch": gb,
            "warmup_steps": warmup,
            "timed_steps": steps,
            "dense_flops_per_sample": round(work["flops_per_sample"]),
            **summarise(base_name, arms, runs, rounds, args.nproc, work["flops_per_sample"]),
            "rounds": rounds,
        }
        results["configs"][name] = entry
        results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps({k: v for k, v in entry.items() if k != "rounds"}, indent=1), flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")  # after each config
        if args.md:
            Path(args.md).write_text(render_md(results, Path(args.notes).read_text() if args.notes else ""))
    return 0


def render_md(results: dict, notes: str = "") -> str:
    """Markdown tables of ``results`` (the --json document)."""
    lines = [
        "# Throughput: fusionrec vs the plain PyTorch trainer (CPU)",
        "",
        f"Date {results['date']}; machine: {results['machine']}; load average at start "
        f"{results.get('load_at_start')}, at end {results.get('load_at_end')}.",
        f"Command: `{results['command']}`.",
        "",
        "| config | global batch | arm | samples/s | vs best plain (2t / 1t) | of the physical limit "
        "| CPU ms / 1k samples | CPU vs plain 1t | dense MFU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rng = lambda xs, fmt=".2f": f"{min(xs):{fmt}}–{max(xs):{fmt}}"  # noqa: E731
    for name, e in results["configs"].items():
        label = f"{name} (`{e['config']}`{', ' + ', '.join(e['sets']) if e.get('sets') else ''})"
        cpu = e["baseline_cpu_ms_per_1k_samples"]
        for who, a in e["arms"].items():
            lines.append(
                f"| {label} | {e['global_batch']} | {who} ({a['world_size']} × {a['threads_per_rank']}t) "
                f"| {a['samples_per_s']:.0f} | **{a['ratio_vs_best_baseline']:.2f}** ({rng(a['ratio_vs_best_baseline_runs'])}) "
                f"| {a['of_physical_limit']:.0%} ({rng(a['of_physical_limit_runs'], '.0%')}) | {a['cpu_ms_per_1k_samples']:.1f} "
                f"| **{a['cpu_vs_baseline_1thread']:.2f}** ({rng(a['cpu_vs_baseline_1thread_runs'])}) | {a['dense_mfu']:.1%} |"
            )
            label = ""
        lines.append(
            f"| | | plain trainer 2t · 1t | {e['baseline_2thread_samples_per_s']:.0f} · "
            f"{e['baseline_1thread_samples_per_s']:.0f} | | | {cpu['baseline_2thread']} · {cpu['baseline_1thread']} | | |"
        )
        if "baseline_1thread_rank_batch_cpu_ms_per_1k_samples" in e:
            lines.append(f"| | {e['batch_per_rank']} | plain trainer 1t, one rank's batch (reference) | | | "
                         f"| {e['baseline_1thread_rank_batch_cpu_ms_per_1k_samples']} | | |")
    lines += [
        "",
        "Medians over rounds, (min–max) over rounds in brackets; every ratio is taken within one round (the same "
        "neighbours) before the median. *vs best plain*: samples/s over the faster of the plain trainer on 2 threads "
        "and on 1 thread in that round. *Of the physical limit*: samples/s over world size × the plain 1-thread "
        "trainer's samples/s. *CPU vs plain 1t*: CPU time per sample (all processes, user + system) over the plain "
        "1-thread trainer's. Dense MFU = samples/s × dense FLOPs per sample ÷ (cores used × the single-thread GEMM "
        "rate measured after the round). The plain trainer is `benchmarks/baseline_trainer.py` (the same dense "
        "modules, `nn.EmbeddingBag` tables, the same Parquet reader decoding the same files in the step, the same "
        "global batch and malloc setting); fusionrec runs the real Trainer (planner, DMP, TrainPipelineSparseDist, "
        "fused row-wise Adagrad, torchrec.metrics, the JSONL log, the stop check), without checkpoint saves. "
        "Both arms decode Parquet in the timed step; neither reads tensors from memory.",
        "",
    ]
    for name, e in results["configs"].items():
        for who, a in e["arms"].items():
            if "fixed_step_overhead_ms" in a:
                lines += [
                    f"Fixed cost per step ({name}, {who}): **{a['fixed_step_overhead_ms']} ms** per rank = its step "
                    f"{a['step_ms_median']:.1f} ms − (plain 1-thread step "
                    f"{e['baseline_step_ms_median']['baseline_1thread']:.1f} ms ÷ {a['world_size']} ranks).",
                    "",
                ]
            if a.get("plan"):
                lines += [f"Plan of {name} / {who}: " + ", ".join(f"{t} {k}" for t, k in a["plan"].items()) + ".", ""]
    for name, e in results["configs"].items():
        lines += [f"Rounds ({name}):", "", "| round | order | load (1 min) | samples/s | CPU ms / 1k samples |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for i, r in enumerate(e["rounds"]):
            sps = " · ".join(f"{k} {v}" for k, v in r["samples_per_s"].items())
            cpu = " · ".join(str(v) for v in r["cpu_ms_per_1k_samples"].values())
            load = " · ".join(str(r["load_1min"][k]) for k in r["order"])
            lines.append(f"| {i} | {' → '.join(r['order'])} | {load} | {sps} | {cpu} |")
        lines.append("")
    if notes:
        lines += [notes, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "throughput.json"))
    p.add_argument("--md", help="also write a markdown summary here")
    p.add_argument("--render", help="only render this --json document to --md (no runs)")
    p.add_argument("--notes", help="a markdown file appended to --md (analysis)")
    p.add_argument("--configs", default="tiny,demo,demo_b2048,large")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=100, help="timed steps (demo)")
    p.add_argument("--steps-large", type=int, default=15, help="timed steps (large)")
    p.add_argument("--warmup-large", type=int, default=5)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--profile-steps", type=int, default=20, help="worker: profiled steps (benchmarks/step_breakdown.py)")
    # worker mode (under torchrun)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--run-dir")
    p.add_argument("--out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true",
                   help="worker: profile every rank after the timed steps and account for its step "
                        "(benchmarks/step_breakdown.py)")
    p.add_argument("--no-metrics", action="store_true", help="worker: torchrec.metrics updates switched off (a lever)")
    p.add_argument("--mallopt", action="store_true", help="worker: call job.keep_freed_memory() first (the real trainer does)")
    p.add_argument("--cold-cache", action="store_true", help="worker: an empty inductor cache per rank (cold compiles)")
    p.add_argument("--tim-layers", action="store_true", help="worker: also compile DTRN's per-length TIM encoder layers")
    args = p.parse_args(argv)
    if args.render:
        notes = Path(args.notes).read_text() if args.notes else ""
        Path(args.md).write_text(render_md(json.loads(Path(args.render).read_text()), notes))
        return 0
    return worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    sys.exit(main())
