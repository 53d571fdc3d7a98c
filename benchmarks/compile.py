"""``train.compile`` (torch.compile of the dense part) against eager, on this machine.

    python benchmarks/compile.py --json benchmarks/results/compile.json --md benchmarks/results/compile.md

Three parts, each comparing eager and compiled in alternating rounds (the machine is shared:
ratios are taken per round, medians reported, the 1-minute load recorded before each arm):

1. **Dense step** (``--dense``), one process per (config, mode), 1 intra-op thread (one
   trainer rank's), the trainer's malloc setting: forward + backward of the dense part of a
   ``MultiTaskModel`` (bottom, fusion, towers, loss; tables on the meta device) on inputs shaped
   like the embedding outputs (``dense_step.make_inputs``; ``--inputs`` sets of them, cycled,
   so DTRN's per-length buckets change every step as in training), the compiled copy with
   the same weights. Compile time: the first pass over the input sets, compiled, minus the
   same pass eager, with an empty inductor cache (cold) and again after ``torch._dynamo.reset``
   with the cache just filled (warm, what a second run of a job pays). MFU = FLOPs per sample
   (``FlopCounterMode`` on the eager model) × samples/s ÷ the single-thread GEMM rate measured
   in the same round. Recompiles and variants from :func:`pipeline.compiled.compile_stats`,
   after the first pass and after the timed rounds (growth there = recompiles in steady state).
2. **Trainer** (``--trainer``): the real 2-rank job (``throughput.py``'s worker: Trainer, DMP,
   TrainPipelineSparseDist, metrics; 1 thread per rank) with and without
   ``train.compile.enabled=true``, each compiled run with empty per-rank inductor caches.
   samples/s over the timed steps after the warm-up; compile time ≈ the compiled run's
   warm-up wall time minus the eager run's in the same round; dense MFU = samples/s × dense
   FLOPs per sample ÷ (2 ranks × the GEMM rate measured after the round).
3. **Probe** (``--probe``): eager against compiled for a kernel that writes a bool mask (what
   a ReLU saves for its backward), a float output of the same size, and ReLU forward +
   backward: it shows where the compiled CPU step loses time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.runinfo import load_average, run_info  # noqa: E402

CONFIGS = {"demo": "configs/demo.yaml", "large": "configs/bench_large.yaml"}


# --------------------------------------------------------------------------- the rejected arm
def also_compile_tim_layers():
    """Make :mod:`pipeline.compiled` also compile DTRN's per-length TIM encoder layers, with
    symbolic shapes (the module's first version did; ``--tim-layers`` measures it). Returns
    the patched ``compile_dense``, for callers that imported the name."""
    from fusionrec.pipeline import compiled as c

    plain_modules, plain_compile = c.dense_modules, c.compile_dense

    def dense_modules(model, device):
        out = plain_modules(model, device)
        if c.tim_runs_per_length(model.bottom, device):
            out = out[:1] + [(f"bottom.tim.layers.{i}", m) for i, m in enumerate(model.bottom.tim.layers)] + out[1:]
        return out

    def compile_dense(model, cfg, device):
        line = plain_compile(model, cfg, device)
        tim = c.multitask_model(model).bottom.tim
        for layer in tim.layers:  # N and L change every batch: symbolic from the start
            layer.compile(backend=cfg.backend, mode=cfg.mode if cfg.backend == "inductor" else None, dynamic=True)
        return line + " (+ TIM encoder layers, dynamic=True: benchmark arm)"

    c.dense_modules, c.compile_dense = dense_modules, compile_dense
    return compile_dense


# --------------------------------------------------------------------------- 1. dense step
def dense_worker(name: str, mode: str, args: argparse.Namespace) -> dict:
    """One (config, mode): compile times, alternating timed rounds, recompiles. Runs in its own
    process (``--dense-worker``) so that every compile starts from an empty inductor cache."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_bench_")
    import torch
    from torch import nn

    from benchmarks.dense_step import count, gemm_rate, make_inputs, schema_and_model, step
    from fusionrec.models.config import ModelConfig
    from fusionrec.models.multitask import MultiTaskModel, build_model
    from fusionrec.pipeline import compiled as compiled_mod
    from fusionrec.pipeline.config import CompileConfig
    from fusionrec.pipeline.job import keep_freed_memory
    from fusionrec.typedconfig import from_dict

    if args.tim_layers:
        also_compile_tim_layers()
    compile_dense, compile_stats = compiled_mod.compile_dense, compiled_mod.compile_stats
    keep_freed_memory()
    torch.set_num_threads(1)
    cpu = torch.device("cpu")

    class DenseHead(nn.Module):
        """The dense part of ``model``: bottom → fusion → towers → loss, as the forward runs it."""

        def __init__(self, model: MultiTaskModel) -> None:
            super().__init__()
            self.model = model

        def forward(self, dense, fields, sequences, lengths, labels, weights) -> torch.Tensor:
            m = self.model
            return m.loss_fn(m.towers(m.fusion(m.bottom(dense, fields, sequences, lengths))), labels, weights)[0]

    schema, model_data, batch = schema_and_model(CONFIGS[name])
    cfg = from_dict(ModelConfig, model_data, key="model")

    def build() -> MultiTaskModel:
        torch.manual_seed(0)
        return build_model(schema, cfg, device=torch.device("meta"), dense_device="cpu")

    eager, compiled = DenseHead(build()), DenseHead(build())
    inputs = [make_inputs(schema, batch, seed=s) for s in range(args.inputs)]
    loss_eager, loss_compiled_before = eager(*inputs[0]).item(), compiled(*inputs[0]).item()
    flops, _, shapes = count(eager, inputs[0], batch)
    gemms = {"mm 2048^3": (2048, 2048, 2048, 1)}
    for m, k, n, b in [s for s, _ in shapes[:3]]:
        gemms[f"bmm {b}x{m}x{k}x{n}" if b > 1 else f"mm {m}x{k}x{n}"] = (m, k, n, b)

    def one_pass(model) -> float:
        t0 = time.perf_counter()
        for x in inputs:
            step(model, x)
        return time.perf_counter() - t0

    one_pass(eager)  # warm eager too, so the difference below is the compile
    eager_pass = one_pass(eager)
    compile_dense(compiled.model, CompileConfig(enabled=True, mode=mode), cpu)
    cold = one_pass(compiled) - eager_pass
    stats_first = compile_stats(compiled.model, cpu)
    loss_compiled = compiled(*inputs[0]).item()  # with grad: the training graphs, no new variant

    rounds = []
    for r in range(args.rounds):
        order = [("eager", eager), ("compiled", compiled)] if r % 2 == 0 else [("compiled", compiled), ("eager", eager)]
        row = {"order": [o for o, _ in order], "load": {}}
        for label, model in order:
            row["load"][label] = load_average()[0]
            times = []
            for i in range(args.steps):
                t0 = time.perf_counter()
                step(model, inputs[i % len(inputs)])
                times.append(time.perf_counter() - t0)
            row[f"{label}_ms"] = 1e3 * statistics.median(times)
        peak = max(gemm_rate(*g, seconds=args.gemm_seconds) for g in gemms.values())
        row["gemm_gflops"] = peak / 1e9
        row["speedup"] = row["eager_ms"] / row["compiled_ms"]
        for label in ("eager", "compiled"):
            row[f"{label}_mfu"] = flops * batch / (row[f"{label}_ms"] / 1e3) / peak
        rounds.append(row)
        print(f"  dense {name} {mode} round {r}: load {row['load']}, eager {row['eager_ms']:.1f} ms, compiled "
              f"{row['compiled_ms']:.1f} ms, x{row['speedup']:.2f}", flush=True)
    stats_end = compile_stats(compiled.model, cpu)

    torch._dynamo.reset()  # drop the compiled code; the inductor cache on disk stays
    warm = one_pass(compiled) - one_pass(eager)
    med = statistics.median
    return {
        "name": name,
        "config": CONFIGS[name],
        "mode": mode,
        "batch": batch,
        "inputs": args.inputs,
        "flops_per_sample": flops,
        "loss_eager": loss_eager,
        "loss_compiled_before_compile": loss_compiled_before,  # same weights
        "loss_compiled": loss_compiled,
        "compile_s_cold": round(cold, 1),
        "compile_s_warm": round(warm, 1),
        "compile_stats_after_first_pass": stats_first,
        "compile_stats_after_rounds": stats_end,
        "eager_ms": round(med(r["eager_ms"] for r in rounds), 2),
        "compiled_ms": round(med(r["compiled_ms"] for r in rounds), 2),
        "speedup": round(med(r["speedup"] for r in rounds), 3),
        "speedup_range": [round(min(r["speedup"] for r in rounds), 3), round(max(r["speedup"] for r in rounds), 3)],
        "eager_mfu": med(r["eager_mfu"] for r in rounds),
        "compiled_mfu": med(r["compiled_mfu"] for r in rounds),
        "rounds": rounds,
    }


def run_dense(name: str, mode: str, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix="compile_dense_")) / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--dense-worker", name, mode, "--worker-out", str(out),
           "--rounds", str(args.rounds), "--steps", str(args.steps), "--inputs", str(args.inputs),
           "--gemm-seconds", str(args.gemm_seconds), *(["--tim-layers"] if args.tim_layers else [])]
    from benchmarks.throughput import env

    proc = subprocess.run(cmd, cwd=REPO, env=env(), text=True, capture_output=True, check=False)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"dense worker {name} {mode} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- 2. trainer
def run_trainer(name: str, args: argparse.Namespace) -> dict:
    """Alternating eager / compiled rounds of the real 2-rank job on one config."""
    from benchmarks.throughput import dense_work, ensure_data, gemm_peak, run_fusionrec

    cfg_path = CONFIGS[name]
    sets = [f"data.train={ensure_data(name, cfg_path)}"]
    warmup, steps = (args.trainer_warmup_large, args.trainer_steps_large) if name == "large" else (
        args.trainer_warmup, args.trainer_steps)
    work = dense_work(cfg_path)
    rounds = []
    for r in range(args.trainer_rounds):
        order = ["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]
        got, load = {}, {}
        for arm in order:
            load[arm] = load_average()[0]
            extra = ["train.compile.enabled=true"] if arm == "compiled" else []
            t = time.time()
            flags = ("--tim-layers",) if args.tim_layers and arm == "compiled" else ()
            got[arm] = run_fusionrec(name, cfg_path, sets + extra, warmup, steps, args.nproc, tag=f"_{arm}",
                                     mallopt=True, cold_cache=arm == "compiled", worker_flags=flags)
            print(f"  trainer {name} round {r} {arm}: {got[arm]['samples_per_s']:.0f} samples/s, warm-up "
                  f"{got[arm]['warmup_s']:.1f} s, load {load[arm]} ({time.time() - t:.0f} s)", flush=True)
        peak = gemm_peak(work["top_matmul_shapes"])["peak"]
        row = {
            "order": order,
            "load_1min": load,
            "samples_per_s": {a: round(got[a]["samples_per_s"], 1) for a in order},
            "step_ms_median": {a: round(got[a]["step_ms_median"], 1) for a in order},
            "warmup_s": {a: round(got[a]["warmup_s"], 1) for a in order},
            "first_step_s": {a: round(got[a]["first_step_s"], 1) for a in order},
            "ratio": round(got["compiled"]["samples_per_s"] / got["eager"]["samples_per_s"], 3),
            "compile_s": round(got["compiled"]["warmup_s"] - got["eager"]["warmup_s"], 1),
            "gemm_gflops_1thread": round(peak / 1e9, 1),
            "mfu": {a: round(got[a]["samples_per_s"] * work["flops_per_sample"] / (args.nproc * peak), 4) for a in order},
            "compile": got["compiled"]["compile"],
        }
        rounds.append(row)
    med = statistics.median
    return {
        "config": cfg_path,
        "world_size": args.nproc,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "dense_flops_per_sample": round(work["flops_per_sample"]),
        "eager_samples_per_s": round(med(r["samples_per_s"]["eager"] for r in rounds), 1),
        "compiled_samples_per_s": round(med(r["samples_per_s"]["compiled"] for r in rounds), 1),
        "ratio": round(med(r["ratio"] for r in rounds), 3),
        "ratio_range": [min(r["ratio"] for r in rounds), max(r["ratio"] for r in rounds)],
        "compile_s": round(med(r["compile_s"] for r in rounds), 1),
        "eager_mfu": med(r["mfu"]["eager"] for r in rounds),
        "compiled_mfu": med(r["mfu"]["compiled"] for r in rounds),
        "rounds": rounds,
    }


# --------------------------------------------------------------------------- 3. probe
def probe(args: argparse.Namespace) -> dict:
    """µs per call, eager and compiled (1 thread): x + b → bool mask, x + b → float, and
    relu(x + b) forward + backward, at x [256, 3, 64] (a GroupedLinear's output in the demo)."""
    import torch

    torch.set_num_threads(1)
    x = torch.randn(256, 3, 64)
    b = torch.randn(3, 64)
    xg = x.clone().requires_grad_()

    def per_call(fn, n: int = 200) -> float:
        for _ in range(10):
            fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return 1e6 * (time.perf_counter() - t0) / n

    cases = {
        "x + b > 0 (bool out)": (lambda v: v + b > 0, x, False),
        "x + b (float out)": (lambda v: v + b, x, False),
        "relu(x + b) fwd+bwd": (lambda v: torch.relu(v + b), xg, True),
    }
    out = {}
    for label, (fn, v, backward) in cases.items():
        compiled = torch.compile(fn)
        row = {}
        for arm, f in (("eager", fn), ("compiled", compiled)):
            if backward:
                row[arm] = per_call(lambda f=f: f(v).sum().backward())
            else:
                with torch.no_grad():
                    row[arm] = per_call(lambda f=f: f(v))
        row = {k: round(val, 1) for k, val in row.items()}
        row["compiled/eager"] = round(row["compiled"] / row["eager"], 2)
        out[label] = row
        print(f"  probe {label}: {row}", flush=True)
    return out


# --------------------------------------------------------------------------- report
def _name(entry: dict) -> str:
    return entry.get("name") or {path: name for name, path in CONFIGS.items()}[entry["config"]]


def _run_of(res: dict) -> dict:
    return {k: res.get(k) for k in ("date", "command", "load_at_start", "uptime_at_start")}


def render_md(res: dict, notes: str = "") -> str:
    lines = [
        "# torch.compile of the dense part (`train.compile`) against eager (CPU)",
        "",
        f"Date {res['date']}; machine: {res['machine']}; load average at start {res['load_at_start']}, at end "
        f"{res.get('load_at_end')}.",
        f"Command: `{res['command']}`.",
        "",
    ]
    for run in res.get("runs", [])[1:]:
        lines += [f"Rerun on {run['date']} (load at start {run['load_at_start']}): `{run['command']}`.", ""]
    for key, title in (("dense", "Dense step (one process, 1 thread: one trainer rank's forward + backward of the "
                                    "dense part)"),
                       ("dense_tim_layers", "Rejected arm, dense step: DTRN's per-length TIM encoder layers compiled too")):
        if not res.get(key):
            continue
        lines += [
            f"## {title}",
            "",
            "| config | mode | batch | step ms eager → compiled | speed-up median (range) | dense MFU eager → compiled "
            "| compile s cold · warm | graphs · recompiles after first pass | recompiles in timed rounds |",
            "| --- | --- | ---: | --- | --- | --- | --- | --- | --- |",
        ]
        for d in res[key]:
            first, end = d["compile_stats_after_first_pass"], d["compile_stats_after_rounds"]
            lines.append(
                f"| {_name(d)} | {d['mode']} | {d['batch']} | {d['eager_ms']} → {d['compiled_ms']} "
                f"| **{d['speedup']}×** ({d['speedup_range'][0]}–{d['speedup_range'][1]}) "
                f"| {d['eager_mfu']:.1%} → {d['compiled_mfu']:.1%} | {d['compile_s_cold']} · {d['compile_s_warm']} "
                f"| {first['graphs']} · {first['recompiles']} | {end['recompiles'] - first['recompiles']} |"
            )
        lines += ["", "Speed-up = eager step time ÷ compiled step time, per round (below 1: compiled is slower).", ""]
        for d in res[key]:
            lines += [
                f"Rounds ({_name(d)}, {d['mode']}; loss eager {d['loss_eager']:.6f}, compiled "
                f"{d['loss_compiled']:.6f}; variants per module {d['compile_stats_after_rounds']['variants']}):",
                "",
                "| round | order | load (1 min) before each | eager ms | compiled ms | speed-up | GEMM GFLOP/s |",
                "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
            ]
            for i, r in enumerate(d["rounds"]):
                load = " · ".join(str(r["load"][a]) for a in r["order"])
                lines.append(f"| {i} | {' → '.join(r['order'])} | {load} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} "
                             f"| {r['speedup']:.2f} | {r['gemm_gflops']:.0f} |")
            lines.append("")
    for key, title in (("trainer", "Trainer (2 gloo ranks under torchrun, 1 thread each, the real job without "
                                      "checkpoint saves)"),
                       ("trainer_tim_layers", "Rejected arm, trainer: DTRN's per-length TIM encoder layers compiled too")):
        if not res.get(key):
            continue
        lines += [
            f"## {title}",
            "",
            "| config | eager samples/s | compiled samples/s | ratio median (range) | dense MFU eager → compiled "
            "| compile s (cold, both ranks at once) | graphs · recompiles by warm-up end, per rank | recompiles in timed steps |",
            "| --- | ---: | ---: | --- | --- | ---: | --- | ---: |",
        ]
        for name, t in res[key].items():
            by_rank = [r["compile"].get("by_rank") or [r["compile"]] for r in t["rounds"]]
            warm = " / ".join(f"{c['at_warmup']['graphs']} · {c['at_warmup']['recompiles']}" for c in by_rank[0])
            late = max(c["at_end"]["recompiles"] - c["at_warmup"]["recompiles"] for ranks in by_rank for c in ranks)
            lines.append(
                f"| {name} (`{t['config']}`) | {t['eager_samples_per_s']} | {t['compiled_samples_per_s']} "
                f"| **{t['ratio']}×** ({t['ratio_range'][0]}–{t['ratio_range'][1]}) "
                f"| {t['eager_mfu']:.1%} → {t['compiled_mfu']:.1%} | {t['compile_s']} | {warm} | {late} |"
            )
        lines += ["", "Ratio = compiled samples/s ÷ eager samples/s in the same round.", ""]
        for name, t in res[key].items():
            lines += [
                f"Rounds ({name}; {t['warmup_steps']} warm-up + {t['timed_steps']} timed steps):",
                "",
                "| round | order | load (1 min) before each | samples/s eager · compiled | ratio | warm-up s eager · "
                "compiled | compile s | dense MFU eager · compiled |",
                "| ---: | --- | --- | --- | ---: | --- | ---: | --- |",
            ]
            for i, r in enumerate(t["rounds"]):
                load = " · ".join(str(r["load_1min"][a]) for a in r["order"])
                lines.append(
                    f"| {i} | {' → '.join(r['order'])} | {load} | {r['samples_per_s']['eager']} · "
                    f"{r['samples_per_s']['compiled']} | {r['ratio']} | {r['warmup_s']['eager']} · "
                    f"{r['warmup_s']['compiled']} | {r['compile_s']} | {r['mfu']['eager']:.1%} · {r['mfu']['compiled']:.1%} |"
                )
            lines.append("")
    if res.get("probe"):
        lines += ["## Probe: single kernels at [256, 3, 64] (µs per call, 1 thread)", "",
                  "| case | eager | compiled | compiled ÷ eager |", "| --- | ---: | ---: | ---: |"]
        for label, row in res["probe"].items():
            lines.append(f"| {label} | {row['eager']} | {row['compiled']} | {row['compiled/eager']} |")
        lines.append("")
    if notes:
        lines += [notes, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "compile.json"))
    p.add_argument("--md", help="also write a Markdown page here")
    p.add_argument("--notes", help="a Markdown file appended to --md (analysis)")
    p.add_argument("--render", help="only render this --json document to --md (no runs)")
    p.add_argument("--parts", default="dense,trainer,probe", help="any of dense, trainer, probe")
    p.add_argument("--configs", default="demo,large")
    p.add_argument("--modes", default="default", help="inductor modes of the dense-step part, comma-separated")
    p.add_argument("--rounds", type=int, default=6, help="dense step: alternating rounds")
    p.add_argument("--steps", type=int, default=12, help="dense step: timed steps per variant and round")
    p.add_argument("--inputs", type=int, default=6, help="dense step: input sets cycled (lengths differ)")
    p.add_argument("--gemm-seconds", type=float, default=0.3)
    p.add_argument("--trainer-rounds", type=int, default=3)
    p.add_argument("--trainer-warmup", type=int, default=20)
    p.add_argument("--trainer-steps", type=int, default=100)
    p.add_argument("--trainer-warmup-large", type=int, default=15, help="enough for every rank's compiles")
    p.add_argument("--trainer-steps-large", type=int, default=15)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--tim-layers", action="store_true",
                   help="the rejected arm: also compile DTRN's per-length TIM encoder layers (results under *_tim_layers)")
    p.add_argument("--update", action="store_true", help="keep the other entries of --json, replace what runs")
    p.add_argument("--dense-worker", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dense_worker:
        Path(args.worker_out).write_text(json.dumps(dense_worker(*args.dense_worker, args), indent=1) + "\n")
        return 0
    if args.render:
        res = json.loads(Path(args.render).read_text())
        Path(args.md).write_text(render_md(res, Path(args.notes).read_text() if args.notes else ""))
        return 0
    parts = args.parts.split(",")
    res: dict = {**run_info(), "uptime_at_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    if args.update:  # rerun some parts / configs into an earlier result: its other entries stay
        earlier = json.loads(Path(args.json).read_text())
        res = {**earlier, "runs": [*earlier.get("runs", [_run_of(earlier)]), _run_of(res)]}
    configs = args.configs.split(",")

    def save() -> None:
        res["load_at_end"] = load_average()
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        if args.md:
            Path(args.md).write_text(render_md(res, Path(args.notes).read_text() if args.notes else ""))

    if "probe" in parts:
        before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_probe_")
        res["probe"] = probe(args)
        if before is None:  # the jobs started later choose their own caches
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
        save()
    suffix = "_tim_layers" if args.tim_layers else ""
    if "dense" in parts:
        key = "dense" + suffix
        modes = args.modes.split(",")
        res[key] = [d for d in res.get(key, []) if (_name(d), d["mode"]) not in
                    {(c, m) for c in configs for m in modes}] if args.update else []
        for name in configs:
            for mode in modes:
                res[key].append(run_dense(name, mode, args))
                save()
    if "trainer" in parts:
        key = "trainer" + suffix
        res[key] = res.get(key, {}) if args.update else {}
        for name in configs:
            res[key][name] = run_trainer(name, args)
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
