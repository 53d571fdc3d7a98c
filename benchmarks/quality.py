"""Quality benchmark (issue 6): every fusion model on Census-Income and on synthetic logs.

    .venv/bin/python -m benchmarks.quality run --suite census6 --seeds 0 1 2 3 4
    .venv/bin/python -m benchmarks.quality run --suite synthetic --seeds 0 1 2
    .venv/bin/python -m benchmarks.quality report

``run`` trains with fusionrec's own trainer (``pipeline.train.train``) in this one process
(world size 1, gloo over a HashStore), scores ``valid`` after every epoch (the trainer's periodic
evaluation, logged to ``RUN/train_log.jsonl``), checkpoints every epoch, selects the epoch with
the best mean valid AUC over the tasks and scores that checkpoint on ``test`` with
``pipeline.evaluate.evaluate``. Every finished run is appended to ``runs/quality/runs.jsonl``
(a run already there is skipped, so an interrupted sweep continues where it stopped), and its
run dir is deleted. ``report`` aggregates runs.jsonl into ``benchmarks/results/quality.{md,json}``.

Suites:

* ``census6`` / ``census9``: configs/census.yaml (data/census from ``python -m fusionrec.datasets.census``),
  the AdaTT paper's Table 5 settings: 3 tasks, 2 fusion levels, 6 experts per level of dims
  [128, 64] (``census6``) or 9 of dims [96, 48] (``census9``), towers [32].
* ``synthetic``: configs/demo.yaml's schema, data from ``datasets.synthetic`` at
  ``synthetic.task_correlation`` 0.2 and 0.9 (eval file 0 = valid, eval file 1 = test), every
  model with the shared bottom (setting ``rho<R>-shared``), the DTRN bottom with the SENet TRM
  (``rho<R>-dtrn``, the default) and with the earlier no-squeeze TRM (``rho<R>-dtrnctx``).

Models: the seven fusions plus ``adatt_nores``, AdaTT without NativeExpertLF in any unit (the
AdaTT paper's Table 6 ablation: ``native_residual: false, shared_residual: false``).

The issue-15 sweep (results in benchmarks/results/quality.md; the earlier one, before AdaTT's
learned v and the SENet TRM, in quality_2026-11-22.md)::

    .venv/bin/python -m benchmarks.quality run --suite census6 --models adatt adatt_nores ple ml_mmoe adatt_sp \
        --seeds 0 1 2 3 4 --threads 1
    .venv/bin/python -m benchmarks.quality run --suite synthetic --models adatt \
        --settings rho0.2-dtrn rho0.2-dtrnctx rho0.9-dtrn rho0.9-dtrnctx --seeds 0 1 2 --threads 1

The same optimizer, batch size and epochs for every model of a suite (see ``SUITES``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.runinfo import load_average, machine, today  # noqa: E402

RUNS = ROOT / "runs" / "quality"
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ["shared_bottom", "mmoe", "ml_mmoe", "ple", "cross_stitch", "adatt_sp", "adatt_nores", "adatt"]
LABELS = {
    "shared_bottom": "Shared-Bottom",
    "mmoe": "MMoE",
    "ml_mmoe": "ML-MMoE",
    "ple": "PLE",
    "cross_stitch": "Cross-Stitch",
    "adatt_sp": "AdaTT-sp",
    "adatt_nores": "AdaTT w/o NativeExpertLF",
    "adatt": "AdaTT",
}
# Synthetic bottoms: the shared bottom, DTRN with the SENet TRM (the default), DTRN with the
# earlier no-squeeze TRM (``trm_form: context``, weights 2·sigmoid), and the SENet TRM with the
# context form's weight scale 2 (separates the squeeze from the scale).
BOTTOMS = ["shared", "dtrn", "dtrnctx", "dtrnse2"]
BOTTOM_LABELS = {"shared": "shared", "dtrn": "DTRN (SENet TRM)", "dtrnctx": "DTRN (context TRM)",
                 "dtrnse2": "DTRN (SENet TRM, s = 2)"}

# AdaTT paper, Table 5 (mean test AUC over 100 initialisations, full 199,523-row train file);
# copied from /work/shared/data/census-income-kdd/README.md. The ablation without
# NativeExpertLF is the paper's Table 6, which reports it on other data, not on Census.
PAPER = {
    "census6": {
        "ml_mmoe": {"income": 0.8729, "never_married": 0.9178, "college": 0.9731},
        "ple": {"income": 0.8683, "never_married": 0.9164, "college": 0.9697},
        "adatt": {"income": 0.8766, "never_married": 0.9202, "college": 0.9783},
    },
    "census9": {
        "ml_mmoe": {"income": 0.8688, "never_married": 0.9139, "college": 0.9730},
        "ple": {"income": 0.8645, "never_married": 0.9134, "college": 0.9680},
        "adatt": {"income": 0.8744, "never_married": 0.9174, "college": 0.9786},
    },
}


def fusion_spec(model: str, experts: int, dims: list[int]) -> str:
    """The ``model.fusion`` override for one model at a budget of ``experts`` experts per level
    (3 tasks): docs/models.md's Table 5 blocks, generalised to 9 experts per level."""
    d = f"[{', '.join(map(str, dims))}]"
    shared = 3  # AdaTT / PLE: 3 shared experts, the rest split evenly over the 3 tasks
    per_task = (experts - shared) // 3
    specs = {
        "shared_bottom": f"{{type: shared_bottom, hidden_dims: {d}}}",
        "mmoe": f"{{type: mmoe, expert_dims: [{d}], num_experts: {experts}}}",
        "ml_mmoe": f"{{type: ml_mmoe, expert_dims: {d}, num_experts: {experts}}}",
        "ple": f"{{type: ple, expert_dims: {d}, experts_per_task: {per_task}, shared_experts: {shared}}}",
        "cross_stitch": f"{{type: cross_stitch, expert_dims: {d}}}",
        "adatt_sp": f"{{type: adatt_sp, expert_dims: {d}, experts_per_task: {experts // 3}}}",
        "adatt": f"{{type: adatt, expert_dims: {d}, experts_per_task: {per_task}, shared_experts: {shared}}}",
        # Table 6's ablation: no NativeExpertLF in any unit (the release's self_exp_res_connect: false)
        "adatt_nores": f"{{type: adatt, expert_dims: {d}, experts_per_task: {per_task}, shared_experts: {shared}, "
                       "native_residual: false, shared_residual: false}",
    }
    return specs[model]


# One training recipe per suite, identical for every model in it.
CENSUS_TRAIN = [
    "data.batch_size=1024",
    "train.epochs=5",
    "train.dense_optimizer={type: adam, lr: 0.002}",
    "train.sparse_optimizer={type: adagrad, lr: 0.02}",
    "train.progress_bar=false",
    "train.log_every=1000000",
    "model.tower_dims=[32]",
    "model.bottom={type: shared}",
]
SYNTH_TRAIN = [
    "data.batch_size=512",
    "train.epochs=1",
    "train.dense_optimizer={type: adam, lr: 0.001}",
    "train.sparse_optimizer={type: rowwise_adagrad, lr: 0.05}",
    "train.progress_bar=false",
    "train.log_every=1000000",
    "model.tower_dims=[32]",
    "sharding.constraints={}",
    # demo.yaml now declares a GAUC group column (commit 20efc32); it is no model input, and the
    # logs generated before that commit lack it
    "features.group_column=null",
]
SYNTH_DTRN = ("{type: dtrn, condition_dim: 8, hyper_hidden: 32, num_layers: 1, num_heads: 2, ffn_dim: 32, "
              "pooling: target, target_feature: item_id, trm_hidden: 64}")
SYNTH_BOTTOM = {
    "shared": "{type: shared}",
    "dtrn": SYNTH_DTRN,  # trm_form: senet (the default)
    "dtrnctx": SYNTH_DTRN[:-1] + ", trm_form: context}",
    "dtrnse2": SYNTH_DTRN[:-1] + ", trm_gate_scale: 2.0}",
}
SYNTH_ROWS = 120_000
CORRELATIONS = [0.2, 0.9]

SUITES = {
    "census6": {"config": "configs/census.yaml", "experts": 6, "dims": [128, 64], "evals_per_epoch": 1},
    "census9": {"config": "configs/census.yaml", "experts": 9, "dims": [96, 48], "evals_per_epoch": 1},
    # one pass over the logs (the demo's large id tables overfit from the second epoch on),
    # scored on valid at its middle and its end
    "synthetic": {"config": "configs/demo.yaml", "experts": 6, "dims": [128, 64], "evals_per_epoch": 2},
}


def census_data() -> dict:
    root = ROOT / "data" / "census"
    if not (root / "test").is_dir():
        src = ROOT.parent / "shared" / "data" / "census-income-kdd" / "census-income.test.gz"
        subprocess.run([sys.executable, "-m", "fusionrec.datasets.census", "--src", str(src), "--out", str(root)],
                       cwd=ROOT, check=True)
    return {"train": str(root / "train"), "valid": str(root / "valid"), "test": str(root / "test")}


def synthetic_data(rho: float) -> dict:
    """demo.yaml's schema at task correlation ``rho``: SYNTH_ROWS rows, 80 % train; the two eval
    files are valid (part-00000) and test (part-00001)."""
    root = ROOT / "data" / f"quality_synth_rho{rho}"
    if not (root / "eval").is_dir():
        subprocess.run(
            [sys.executable, "-m", "fusionrec.datasets.synthetic", "--config", "configs/demo.yaml", "--out", str(root),
             "--rows", str(SYNTH_ROWS), "--set", f"synthetic.task_correlation={rho}", "--set", "synthetic.seed=0"],
            cwd=ROOT, check=True,
        )
    evals = sorted((root / "eval").glob("*.parquet"))
    assert len(evals) == 2, evals
    return {"train": str(root / "train"), "valid": str(evals[0]), "test": str(evals[1])}


def run_key(r: dict) -> tuple:
    return (r["suite"], r["setting"], r["model"], r["seed"])


def load_runs() -> list[dict]:
    path = RUNS / "runs.jsonl"
    if not path.is_file():
        return []
    runs: dict = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            runs.setdefault(run_key(r), r)  # two sweeps sharing the work may both finish a run: keep the first
    return list(runs.values())


def read_evals(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "eval" in rec:
            out.append(rec)
    return out


def _steps_per_epoch(cfg) -> int:
    from fusionrec.datasets.reader import ParquetReader, resolve_paths

    return ParquetReader(resolve_paths(cfg.data.train), cfg.schema, cfg.data.batch_size).num_batches


def train_and_test(suite: str, setting: str, model: str, seed: int, data: dict, extra: list[str], info) -> dict:
    from fusionrec.pipeline.config import load_config
    from fusionrec.pipeline.evaluate import evaluate
    from fusionrec.pipeline.scoring import ScoreOptions
    from fusionrec.pipeline.train import train

    spec = SUITES[suite]
    overrides = [
        *extra,
        f"model.fusion={fusion_spec(model, spec['experts'], spec['dims'])}",
        f"data.train={data['train']}",
        f"data.eval={data['valid']}",
        f"train.seed={seed}",
        f"data.seed={seed}",
        "train.device=cpu",
    ]
    cfg = load_config(ROOT / spec["config"], overrides)
    steps = _steps_per_epoch(cfg)
    epochs = cfg.train.epochs
    every = steps // spec["evals_per_epoch"]
    cfg = load_config(ROOT / spec["config"], overrides + [
        f"train.eval_every_n_steps={every}",
        f"checkpoint.every_n_steps={every}",
        f"checkpoint.keep_last={epochs * spec['evals_per_epoch'] + 1}",
    ])
    run_dir = RUNS / f"{suite}-{setting}-{model}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    load_start = load_average()
    t0 = time.perf_counter()
    train(cfg, run_dir, resume=False, info=info)
    train_s = time.perf_counter() - t0
    evals = read_evals(run_dir)
    names = cfg.schema.task_names
    curve = [{"step": e["step"], "epoch": round(e["step"] / steps, 2),
              "valid_auc": {t: e["eval"][t]["auc"] for t in names}} for e in evals]
    for c in curve:
        c["valid_mean_auc"] = statistics.fmean(c["valid_auc"].values())
    best = max(curve, key=lambda c: c["valid_mean_auc"])  # first of equals: the earliest epoch
    checkpoint = run_dir / "checkpoints" / f"step_{best['step']:08d}"
    t1 = time.perf_counter()
    result, _ = evaluate(cfg, checkpoint, data["test"], cfg.eval.batch_size or 4096, info, ScoreOptions())
    test_s = time.perf_counter() - t1
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "suite": suite,
        "setting": setting,
        "model": model,
        "seed": seed,
        "best_epoch": best["epoch"],
        "epochs": epochs,
        "steps_per_epoch": steps,
        "valid_mean_auc": best["valid_mean_auc"],
        "valid_auc": best["valid_auc"],
        "test_auc": {t: result["tasks"][t]["auc"] for t in names},
        "test_rows": result["samples"],
        "valid_curve": curve,
        "train_s": round(train_s, 2),
        "test_s": round(test_s, 2),
        "date": today(),
        "load_start": load_start,
        "load_end": load_average(),
        "overrides": overrides,
    }


def sweep_items(suite: str, models: list[str], seeds: list[int], settings: list[str] | None,
                extra: list[str]) -> list[tuple]:
    """(setting, model, seed, data, extra overrides), seeds in the outer loop so that a partial
    sweep has every model at the same number of seeds."""
    items = []
    if suite.startswith("census"):
        data = census_data()
        for seed in seeds:
            for m in models:
                items.append((suite[len("census"):] + "x" + "-".join(map(str, SUITES[suite]["dims"])), m, seed, data,
                              CENSUS_TRAIN + extra))
    else:
        wanted = settings or [f"rho{r}-{b}" for r in CORRELATIONS for b in BOTTOMS]
        for seed in seeds:
            for setting in wanted:
                rho, bottom = setting.split("-")
                data = synthetic_data(float(rho[3:]))
                for m in models:
                    items.append((setting, m, seed, data,
                                  SYNTH_TRAIN + [f"model.bottom={SYNTH_BOTTOM[bottom]}"] + extra))
    return items


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    from fusionrec.pipeline.job import process_group
    from fusionrec.pipeline.logs import quiet_third_party

    quiet_third_party()
    if args.threads:
        torch.set_num_threads(args.threads)
    RUNS.mkdir(parents=True, exist_ok=True)
    done = {run_key(r) for r in load_runs()}
    items = sweep_items(args.suite, args.models, args.seeds, args.settings, args.extra)
    started = time.perf_counter()
    with process_group("cpu") as info:
        for setting, model, seed, data, extra in items:
            if (args.suite, setting, model, seed) in done:
                continue
            if args.deadline_s and time.perf_counter() - started > args.deadline_s:
                print(f"deadline of {args.deadline_s}s reached, stopping", flush=True)
                break
            rec = train_and_test(args.suite, setting, model, seed, data, extra, info)
            with open(RUNS / "runs.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            aucs = " ".join(f"{t}={v:.4f}" for t, v in rec["test_auc"].items())
            print(f"[{time.perf_counter() - started:7.0f}s] {args.suite} {setting} {model} seed={seed} "
                  f"best_epoch={rec['best_epoch']} valid={rec['valid_mean_auc']:.4f} test {aucs} "
                  f"train {rec['train_s']:.0f}s", flush=True)


# ----------------------------------------------------------------------------- report

def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def aggregate(runs: list[dict]) -> dict:
    """{suite: {setting: {model: {"n", "seeds", "test_auc": {task: [mean, std]}, ...}}}}."""
    out: dict = {}
    for r in runs:
        out.setdefault(r["suite"], {}).setdefault(r["setting"], {}).setdefault(r["model"], []).append(r)
    agg: dict = {}
    for suite, settings in out.items():
        for setting, models in settings.items():
            for model, rs in models.items():
                tasks = list(rs[0]["test_auc"])
                entry = {
                    "n": len(rs),
                    "seeds": sorted(r["seed"] for r in rs),
                    "test_auc": {t: list(mean_std([r["test_auc"][t] for r in rs])) for t in tasks},
                    "test_mean_auc": list(mean_std([statistics.fmean(r["test_auc"].values()) for r in rs])),
                    "valid_mean_auc": list(mean_std([r["valid_mean_auc"] for r in rs])),
                    "best_epochs": [r["best_epoch"] for r in sorted(rs, key=lambda r: r["seed"])],
                    "train_s_mean": round(statistics.fmean(r["train_s"] for r in rs), 1),
                }
                agg.setdefault(suite, {}).setdefault(setting, {})[model] = entry
    return agg


def paired(runs: list[dict], suite: str, setting: str, a: str, b: str, task: str) -> dict | None:
    """Seed-paired difference a - b of test AUC on ``task``: mean, std, n, and the count of seeds a wins."""
    by = {(r["model"], r["seed"]): r for r in runs if r["suite"] == suite and r["setting"] == setting}
    seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
    if not seeds:
        return None
    d = [by[(a, s)]["test_auc"][task] - by[(b, s)]["test_auc"][task] for s in seeds]
    m, sd = mean_std(d)
    return {"mean": m, "std": sd, "n": len(d), "wins": sum(x > 0 for x in d)}


def tstat(mean: float, std: float, n: int) -> str:
    """The paired t statistic mean / (std / sqrt(n)); |t| > 2.78 (n = 5) or 4.30 (n = 3) is p < 0.05, two-sided."""
    if n < 2 or math.isnan(std):
        return "–"
    return "inf" if std == 0 else f"{mean / (std / n ** 0.5):.1f}"


def fmt(ms: list[float], digits: int = 4) -> str:
    m, s = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}" if not math.isnan(s) else f"{m:.{digits}f}"


def census_table(agg: dict, runs: list[dict], suite: str) -> list[str]:
    if suite not in agg:
        return [f"*({suite}: not run)*", ""]
    (setting, models), = agg[suite].items()
    tasks = list(next(iter(models.values()))["test_auc"])
    lines = ["| model | seeds | " + " | ".join(f"{t} (ours)" for t in tasks) + " | mean | "
             + " | ".join(f"{t} (paper)" for t in tasks) + " | best epochs | train s/run |",
             "| --- | ---: | " + " | ".join("---:" for _ in tasks) + " | ---: | "
             + " | ".join("---:" for _ in tasks) + " | --- | ---: |"]
    for m in MODELS:
        if m not in models:
            continue
        e = models[m]
        paper = PAPER.get(suite, {}).get(m)
        lines.append(f"| {LABELS[m]} | {e['n']} | " + " | ".join(fmt(e["test_auc"][t]) for t in tasks)
                     + f" | {fmt(e['test_mean_auc'])} | "
                     + " | ".join(f"{paper[t]:.4f}" if paper else "–" for t in tasks)
                     + f" | {','.join(map(str, e['best_epochs']))} | {e['train_s_mean']:.0f} |")
    lines.append("")
    lines.append("Seed-paired test-AUC differences (mean ± std over seeds; wins = seeds where the first is higher; "
                 "t = paired t statistic, |t| > 2.78 is p < 0.05 two-sided at 5 seeds):")
    lines.append("")
    lines.append("| comparison | " + " | ".join(tasks) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in tasks) + " |")
    for a, b in [("adatt", "ple"), ("adatt", "ml_mmoe"), ("adatt", "mmoe"), ("adatt", "adatt_sp"),
                 ("adatt", "adatt_nores"), ("ple", "ml_mmoe"), ("adatt_nores", "ple")]:
        if a not in models or b not in models:
            continue
        cells = []
        for t in tasks:
            p = paired(runs, suite, setting, a, b, t)
            if p is None:
                cells.append("–")
            else:
                t = tstat(p["mean"], p["std"], p["n"])
                cells.append(f"{p['mean']:+.4f} ± {p['std']:.4f} ({p['wins']}/{p['n']}, t={t})")
        lines.append(f"| {LABELS[a]} − {LABELS[b]} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _paired_mean(runs: list[dict], model: str, a: str, b: str) -> str:
    """Seed-paired difference of the mean test AUC over tasks, synthetic setting a minus b."""
    by = {(r["setting"], r["seed"]): r for r in runs if r["suite"] == "synthetic" and r["model"] == model}
    seeds = sorted(sd for (st, sd) in by if st == a and (b, sd) in by)
    if not seeds:
        return "–"
    d = [statistics.fmean(by[(a, sd)]["test_auc"].values()) - statistics.fmean(by[(b, sd)]["test_auc"].values())
         for sd in seeds]
    dm, ds = mean_std(d)
    if math.isnan(ds):
        return f"{dm:+.4f} ({int(dm > 0)}/1)"
    return f"{dm:+.4f} ± {ds:.4f} ({sum(x > 0 for x in d)}/{len(d)}, t={tstat(dm, ds, len(d))})"


def trm_table(agg: dict, runs: list[dict]) -> list[str]:
    """The two TRM forms under the same seeds, with the shared bottom where it was run."""
    s = agg.get("synthetic", {})
    lines = []
    for rho in CORRELATIONS:
        cols = {b: s.get(f"rho{rho}-{b}", {}) for b in BOTTOMS}
        if not cols["dtrn"] and not cols["dtrnctx"]:
            continue
        lines.append(f"**task_correlation = {rho}**: mean test AUC over the 3 tasks (mean ± std over seeds); "
                     "Δ seed-paired (wins = seeds where the first is higher; t = paired t, |t| > 4.30 is "
                     "p < 0.05 two-sided at 3 seeds)")
        lines.append("")
        lines.append("| fusion | seeds | " + " | ".join(BOTTOM_LABELS[b] for b in BOTTOMS)
                     + " | Δ SENet − context | Δ SENet (s = 2) − context | Δ SENet − shared | Δ context − shared |")
        lines.append("| --- | ---: | " + " | ".join("---:" for _ in BOTTOMS) + " | ---: | ---: | ---: | ---: |")
        for m in MODELS:
            entries = {b: cols[b].get(m) for b in BOTTOMS}
            if entries["dtrn"] is None and entries["dtrnctx"] is None:
                continue
            n = max(e["n"] for e in entries.values() if e)
            cells = [fmt(e["test_mean_auc"]) if e else "–" for e in entries.values()]
            deltas = [_paired_mean(runs, m, f"rho{rho}-{a}", f"rho{rho}-{b}")
                      for a, b in [("dtrn", "dtrnctx"), ("dtrnse2", "dtrnctx"), ("dtrn", "shared"),
                                   ("dtrnctx", "shared")]]
            lines.append(f"| {LABELS[m]} | {n} | " + " | ".join(cells) + " | " + " | ".join(deltas) + " |")
        lines.append("")
        tasks = None
        for b in ("dtrn", "dtrnctx"):
            for m, e in cols[b].items():
                tasks = tasks or list(e["test_auc"])
        lines.append("Per task (test AUC, mean ± std over seeds):")
        lines.append("")
        lines.append("| fusion | bottom | " + " | ".join(tasks) + " | best epochs | train s/run |")
        lines.append("| --- | --- | " + " | ".join("---:" for _ in tasks) + " | --- | ---: |")
        for m in MODELS:
            for b in BOTTOMS:
                e = cols[b].get(m)
                if e is None:
                    continue
                lines.append(f"| {LABELS[m]} | {BOTTOM_LABELS[b]} | " + " | ".join(fmt(e["test_auc"][t]) for t in tasks)
                             + f" | {','.join(map(str, e['best_epochs']))} | {e['train_s_mean']:.0f} |")
        lines.append("")
    return lines or ["*(synthetic: not run)*", ""]


def cmd_report(args: argparse.Namespace) -> None:
    runs = load_runs()
    agg = aggregate(runs)
    loads = [x for r in runs for x in (r.get("load_start", [None])[0], r.get("load_end", [None])[0]) if x is not None]
    meta = {
        "date": args.date,
        "machine": args.machine or machine(),
        "commands": args.command,
        "load_1min": {"min": min(loads), "max": max(loads)} if loads else None,
        "python": platform.python_version(),
        "recipes": {"census": CENSUS_TRAIN, "synthetic": SYNTH_TRAIN, "synthetic_bottoms": SYNTH_BOTTOM,
                    "synthetic_rows": SYNTH_ROWS},
        "selection": "epoch with the best mean valid AUC over tasks (valid scored after every epoch); "
                     "that checkpoint scored on test",
        "previous": "benchmarks/results/quality_2026-11-22.{md,json} (before issue 15)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    # per run: its model.fusion / model.bottom overrides instead of the full override list (the rest is the recipe)
    slim = [{**{k: v for k, v in r.items() if k != "overrides"},
             **{key: next((o.split("=", 1)[1] for o in r["overrides"] if o.startswith(f"model.{key}=")), None)
                for key in ("fusion", "bottom")}}
            for r in runs]
    (RESULTS / "quality.json").write_text(json.dumps({**meta, "paper_table5": PAPER, "aggregate": agg,
                                                      "runs": slim}, indent=1) + "\n")
    head = Path(args.headline).read_text() if args.headline else ""
    lines = [head.rstrip(), ""] if head else []
    lines += ["## Census-Income (KDD), AdaTT Table 5 setting: 6 experts per level, dims [128, 64]", ""]
    lines += census_table(agg, runs, "census6")
    if "census9" in agg:
        lines += ["## Census-Income (KDD): 9 experts per level, dims [96, 48]", ""]
        lines += census_table(agg, runs, "census9")
    lines += ["## Synthetic logs (configs/demo.yaml schema): the two TRM forms of the DTRN bottom", ""]
    lines += trm_table(agg, runs)
    tail = Path(args.notes).read_text() if args.notes else ""
    if tail:
        lines += [tail.rstrip(), ""]
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train + select on valid + score on test; appends to runs/quality/runs.jsonl")
    run.add_argument("--suite", choices=list(SUITES), required=True)
    run.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    run.add_argument("--settings", nargs="+", help="synthetic only: e.g. rho0.2-shared rho0.9-dtrn")
    run.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    run.add_argument("--extra", action="append", default=[], help="extra overrides (timing trials only)")
    run.add_argument("--deadline-s", type=float, default=0, help="start no new run after this many seconds")
    rep = sub.add_parser("report", help="aggregate runs.jsonl into benchmarks/results/quality.{md,json}")
    rep.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    rep.add_argument("--machine", default="", help="default: benchmarks.runinfo.machine()")
    rep.add_argument("--command", action="append", default=[], help="a command that produced the runs (repeatable)")
    rep.add_argument("--headline", help="Markdown file put at the top of quality.md")
    rep.add_argument("--notes", help="Markdown file appended to quality.md")
    args = parser.parse_args(argv)
    cmd_run(args) if args.cmd == "run" else cmd_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
