"""Serving benchmark: exported artifacts (TorchScript, fp32 / fp16 / int8 tables) against the
eager model that fusionrec loads from the checkpoint.

    python benchmarks/serving.py --json benchmarks/results/serving.json --md benchmarks/results/serving.md

For each config (``configs/demo.yaml``; ``configs/bench_large.yaml`` with ``--large-rows`` rows
per table, see below):

1. Synthetic logs under ``data/bench_<name>`` unless already there, and a real 2-rank
   checkpoint: the demo trains its full epoch (as ``make demo`` does); the large model trains
   ``--large-steps`` steps (its latency and bytes do not depend on how well it is trained).
2. ``pipeline.export`` with ``--quantize none``, ``fp16`` and ``int8`` (separate processes):
   table and dense bytes from the manifests, the size of ``model.pt`` on disk, export time.
3. Quality (demo only): ``evaluate --predictions`` on the checkpoint and ``pipeline.predict``
   with every export on the eval logs; per-task AUC (the evaluator's own streaming AUC, inside
   each task's space) and the mean / max absolute prediction difference against evaluate's
   fp32 predictions, row by row; predict's rows/s.
4. Latency (one worker process per config, ``torch.set_num_threads(1)``): load time of the eager
   model (build + DCP load of the checkpoint) and of each export (``torch.jit.load``); then for
   batch 1, 64 and 512 real eval batches, ``--rounds`` rounds in which eager, fp32 export and
   int8 export take turns (order rotated per round), each timing ``iters`` forward calls after
   a warm-up; p50 / p99 over all timed calls, throughput at 512 = rows / summed call time.
   Ratios are computed in the same run, so a neighbour's load hits every variant alike.

The large config's 26 tables have 1 M rows each (6.7 GB of fp32 weights); on the 23 GB,
2-core development machine the benchmark scales them to ``--large-rows`` rows (default
250,000: 1.66 GB) so that the eager model, the fp32 export and the int8 export fit in one
process together. Bytes per row, and so every bytes ratio, do not depend on the row count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.runinfo import load_average, run_info  # noqa: E402

CONFIGS = {"demo": "configs/demo.yaml", "large": "configs/bench_large.yaml"}
SYNTH_ROWS = {"demo": 200_000, "large": 250_000}
QUANTS = ("none", "fp16", "int8")
LATENCY_VARIANTS = ("eager", "export-none", "export-int8")
BATCHES = {1: 200, 64: 60, 512: 12}  # batch size -> timed calls per variant per round
TASKS = ("click", "like", "convert")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = f"{REPO}{os.pathsep}{e.get('PYTHONPATH', '')}"
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def sh(cmd: list[str], timeout: int = 3600) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def overrides(name: str, large_rows: int) -> list[str]:
    """``--set`` arguments: the large config's tables scaled to ``large_rows`` rows."""
    if name != "large":
        return []
    import yaml  # noqa: PLC0415

    tables = yaml.safe_load((REPO / CONFIGS[name]).read_text())["features"]["tables"]
    return [f"features.tables.{t['name']}.num_embeddings={large_rows}" for t in tables]


def set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def prepare(name: str, args, work: Path) -> tuple[Path, Path, list[str]]:
    """Data and a trained 2-rank checkpoint for config ``name``: (data dir, run dir, --set list)."""
    sets = overrides(name, args.large_rows)
    data = REPO / "data" / f"bench_{name}"
    if not (data / "eval").is_dir():
        sh([sys.executable, "-m", "fusionrec.datasets.synthetic", "--config", CONFIGS[name], "--out", str(data),
            "--rows", str(SYNTH_ROWS[name])])
    run_dir = work / f"run_{name}"
    if not (run_dir / "checkpoints").is_dir():
        steps = [] if name == "demo" else ["--max-steps", str(args.large_steps)]
        sh([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(29500 + os.getpid() % 1000), "-m", "fusionrec.pipeline.train", "--config", CONFIGS[name],
            *set_args(sets), "--set", "checkpoint.every_n_steps=0", "--set", "train.progress_bar=false",
            "--train-data", str(data / "train"), "--run-dir", str(run_dir), *steps])
    return data, run_dir, sets


def export_all(name: str, run_dir: Path, sets: list[str], work: Path) -> dict:
    out = {}
    for q in QUANTS:
        folder = work / f"export_{name}_{q}"
        started = time.perf_counter()
        sh([sys.executable, "-m", "fusionrec.pipeline.export", "--config", CONFIGS[name], *set_args(sets),
            "--checkpoint", str(run_dir), "--out", str(folder), "--quantize", q, "--force"])
        manifest = json.loads((folder / "manifest.json").read_text())
        out[q] = {
            "dir": str(folder),
            "embedding_bytes": manifest["embedding_bytes"],
            "dense_bytes": manifest["dense_bytes"],
            "fp32_embedding_bytes": manifest["fp32_embedding_bytes"],
            "model_file_bytes": (folder / manifest["file"]).stat().st_size,
            "embedding_ratio_vs_fp32": round(manifest["embedding_bytes"] / manifest["fp32_embedding_bytes"], 4),
            "example_max_abs_diff_vs_eager": manifest["example_max_abs_diff_vs_eager"],
            "export_s": round(time.perf_counter() - started, 1),
        }
    return out


def quality(name: str, data: Path, run_dir: Path, sets: list[str], exports: dict, work: Path) -> dict:
    """Per-task AUC and prediction differences of every export against evaluate's predictions."""
    import numpy as np  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from fusionrec.pipeline.metrics import TaskMetrics  # noqa: PLC0415

    eval_glob = str(data / "eval" / "*.parquet")
    ref_path = work / f"eval_{name}.parquet"
    sh([sys.executable, "-m", "fusionrec.pipeline.evaluate", "--config", CONFIGS[name], *set_args(sets),
        "--checkpoint", str(run_dir), "--data", eval_glob, "--out", str(work / f"eval_{name}.json"),
        "--predictions", str(ref_path), "--no-plots"])
    ref = pq.read_table(ref_path)

    def col(t, c):
        return t.column(c).to_numpy()

    def auc(t, task):
        w = col(t, "weight").astype(np.float32)
        if task == "convert":
            w = w * (col(t, "label_click") > 0.5)
        m = TaskMetrics("binary")
        m.update(torch.from_numpy(col(t, f"prediction_{task}")), torch.from_numpy(col(t, f"label_{task}")), torch.from_numpy(w))
        return m.compute()["auc"]

    result = {"rows": ref.num_rows, "evaluate_auc": {t: round(auc(ref, t), 5) for t in TASKS}, "exports": {}}
    for q, info in exports.items():
        out = work / f"pred_{name}_{q}.parquet"
        proc = sh([sys.executable, "-m", "fusionrec.pipeline.predict", "--model", info["dir"], "--data", eval_glob,
                   "--out", str(out), "--batch-size", "512"])
        got = pq.read_table(out)
        assert (col(got, "row_id") == col(ref, "row_id")).all()
        per_task = {}
        for t in TASKS:
            d = np.abs(col(got, f"prediction_{t}") - col(ref, f"prediction_{t}"))
            a = auc(got, t)
            per_task[t] = {"auc": round(a, 5), "auc_diff": round(a - result["evaluate_auc"][t], 5),
                           "mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max())}
        line = [x for x in proc.stdout.splitlines() if "rows/s" in x][-1]
        rows_per_s = float(line.split("(")[1].split(" rows/s")[0].replace(",", ""))
        result["exports"][q] = {"tasks": per_task, "predict_rows_per_s": rows_per_s}
    return result


# --------------------------------------------------------------------------- latency worker


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def latency_worker(args) -> None:
    """Runs in its own process with one intra-op thread; writes its result to ``args.out``."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    from fusionrec.datasets.reader import ParquetReader, resolve_paths  # noqa: PLC0415
    from fusionrec.pipeline import artifact  # noqa: PLC0415
    from fusionrec.pipeline.exporting import eager_predictions  # noqa: PLC0415
    from fusionrec.models import build_model  # noqa: PLC0415
    from fusionrec.pipeline.job import load_job_config, load_model_weights, resolve_checkpoint  # noqa: PLC0415

    cfg = load_job_config(CONFIGS[args.worker], json.loads(args.sets))
    exports = json.loads(args.exports)
    load_s = {}
    started = time.perf_counter()
    eager = build_model(cfg.schema, cfg.model, device="cpu")
    load_model_weights(eager, resolve_checkpoint(args.run_dir))
    eager.eval()
    load_s["eager"] = time.perf_counter() - started
    models = {}
    for q in ("none", "int8"):
        started = time.perf_counter()
        models[f"export-{q}"] = artifact.load_model(exports[q])[0]
        load_s[f"export-{q}"] = time.perf_counter() - started
    names = [i["name"] for i in artifact.read_manifest(exports["none"])["inputs"]]
    files = resolve_paths(str(Path(args.data) / "eval"))

    calls = {
        "eager": lambda b: eager_predictions(eager, b[0]),
        "export-none": lambda b: models["export-none"](*b[1]),
        "export-int8": lambda b: models["export-int8"](*b[1]),
    }
    times: dict[str, dict[int, list[float]]] = {v: {bs: [] for bs in BATCHES} for v in LATENCY_VARIANTS}
    round_sums: dict[str, list[float]] = {v: [0.0] * args.rounds for v in LATENCY_VARIANTS}  # batch 512 only
    load_before = load_average()
    with torch.no_grad():
        for bs, iters in BATCHES.items():
            reader = ParquetReader(files, cfg.schema, bs, drop_last=True)
            pool = []
            for batch in reader:
                pool.append((batch, artifact.batch_inputs(batch, names)))
                if len(pool) == 16:
                    break
            for r in range(args.rounds):
                order = LATENCY_VARIANTS[r % 3:] + LATENCY_VARIANTS[: r % 3]
                for variant in order:
                    fn = calls[variant]
                    for i in range(3):  # warm-up
                        fn(pool[i % len(pool)])
                    for i in range(iters):
                        b = pool[i % len(pool)]
                        t0 = time.perf_counter()
                        fn(b)
                        elapsed = time.perf_counter() - t0
                        times[variant][bs].append(elapsed)
                        if bs == 512:
                            round_sums[variant][r] += elapsed
    result = {"load_s": {k: round(v, 3) for k, v in load_s.items()}, "latency_ms": {}, "throughput_rows_per_s": {},
              "load_average_before": load_before, "load_average_after": load_average(), "threads": torch.get_num_threads()}
    for variant in LATENCY_VARIANTS:
        result["latency_ms"][variant] = {
            str(bs): {"p50": round(1000 * percentile(ts, 0.5), 3), "p99": round(1000 * percentile(ts, 0.99), 3), "calls": len(ts)}
            for bs, ts in times[variant].items()
        }
        result["throughput_rows_per_s"][variant] = round(512 * len(times[variant][512]) / sum(times[variant][512]), 1)
    # Throughput ratios at batch 512 per round (the variants run back to back inside a round,
    # so a round's ratio compares them under the same neighbours), then the median.
    per_round = {v: [round(e / x, 3) for e, x in zip(round_sums["eager"], round_sums[v])] for v in LATENCY_VARIANTS}
    result["throughput_ratio_per_round"] = per_round
    result["throughput_ratio_vs_eager"] = {v: statistics.median(r) for v, r in per_round.items()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def latency(name: str, data: Path, run_dir: Path, sets: list[str], exports: dict, work: Path, rounds: int) -> dict:
    out = work / f"latency_{name}.json"
    sh([sys.executable, str(Path(__file__).resolve()), "--worker", name, "--sets", json.dumps(sets), "--run-dir", str(run_dir),
        "--data", str(data), "--exports", json.dumps({q: e["dir"] for q, e in exports.items()}), "--out", str(out),
        "--rounds", str(rounds)])
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- report


def mib(n: int) -> str:
    return f"{n / 2**20:,.2f}"


def render_md(doc: dict) -> str:
    info = doc["run"]
    lines = [
        "# Serving: exported TorchScript models against the eager model (CPU)",
        "",
        f"Date {info['date']}; machine: {info['machine']}.",
        f"Command: `{info['command']}`; load average at start {info['load_at_start']}.",
        "No GPU was available: GPU export and GPU latency are not measured.",
        "",
        "## Artifact bytes",
        "",
        "| config | tables | quantize | table bytes (MiB) | × fp32 | dense (MiB) | model.pt on disk (MiB) | export s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in doc["configs"].items():
        for q, e in r["exports"].items():
            lines.append(f"| {name} | {r['tables']} | {q} | {mib(e['embedding_bytes'])} | {e['embedding_ratio_vs_fp32']:.3f} | "
                         f"{mib(e['dense_bytes'])} | {mib(e['model_file_bytes'])} | {e['export_s']} |")
    lines += ["", "## Latency and throughput (1 intra-op thread, real eval batches)"]
    for name, r in doc["configs"].items():
        lat = r["latency"]
        lines += ["", f"**{name}** ({r['tables']}); load average before / after the timing "
                      f"{lat['load_average_before']} / {lat['load_average_after']}", "",
                  "| model | load s | p50 / p99 ms @1 | p50 / p99 ms @64 | p50 / p99 ms @512 | rows/s @512 "
                  "| × eager @512 (per round) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for v in LATENCY_VARIANTS:
            ms = lat["latency_ms"][v]
            cells = " | ".join(f"{ms[str(b)]['p50']:.2f} / {ms[str(b)]['p99']:.2f}" for b in BATCHES)
            rounds = lat.get("throughput_ratio_per_round", {}).get(v, [])
            lines.append(f"| {v} | {lat['load_s'][v]:.2f} | {cells} | {lat['throughput_rows_per_s'][v]:,.0f} | "
                         f"{lat['throughput_ratio_vs_eager'][v]:.3f} ({', '.join(f'{x:.2f}' for x in rounds)}) |")
    for name, r in doc["configs"].items():
        if "quality" not in r:
            continue
        qd = r["quality"]
        lines += ["", f"## Predictions against evaluate ({name}, {qd['rows']:,} eval rows)", "",
                  "| export | task | AUC | AUC − evaluate's | mean abs diff | max abs diff | predict rows/s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for q, e in qd["exports"].items():
            for t, m in e["tasks"].items():
                lines.append(f"| {q} | {t} | {m['auc']:.4f} | {m['auc_diff']:+.5f} | {m['mean_abs_diff']:.2e} | "
                             f"{m['max_abs_diff']:.2e} | {e['predict_rows_per_s']:,.0f} |")
        lines.append(f"\nevaluate's AUC: {qd['evaluate_auc']}")
    lines += ["", doc.get("notes", "")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "serving.json"))
    p.add_argument("--md", default=str(REPO / "benchmarks" / "results" / "serving.md"))
    p.add_argument("--configs", default="demo,large")
    p.add_argument("--work", default=str(REPO / "runs" / "bench_serving"))
    p.add_argument("--large-rows", type=int, default=250_000, help="rows per table of the large config")
    p.add_argument("--large-steps", type=int, default=20, help="training steps of the large config's checkpoint")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--render", help="only render this --json document to --md")
    # worker mode
    p.add_argument("--worker")
    p.add_argument("--sets")
    p.add_argument("--run-dir")
    p.add_argument("--data")
    p.add_argument("--exports")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.worker:
        latency_worker(args)
        return 0
    if args.render:
        Path(args.md).write_text(render_md(json.loads(Path(args.render).read_text())))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    doc = {"run": run_info(), "configs": {}}
    for name in args.configs.split(","):
        data, run_dir, sets = prepare(name, args, work)
        exports = export_all(name, run_dir, sets, work)
        import yaml  # noqa: PLC0415

        tables = yaml.safe_load((REPO / CONFIGS[name]).read_text())["features"]["tables"]
        rows = args.large_rows if name == "large" else None
        desc = f"{len(tables)} × " + ("mixed rows" if rows is None else f"{rows:,} rows") + f" × dim {tables[0]['dim']}"
        entry = {"config": CONFIGS[name], "set": sets, "tables": desc, "exports": exports}
        if name == "demo":
            entry["quality"] = quality(name, data, run_dir, sets, exports, work)
        entry["latency"] = latency(name, data, run_dir, sets, exports, work, args.rounds)
        doc["configs"][name] = entry
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    doc["run"]["load_at_end"] = load_average()
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    Path(args.md).write_text(render_md(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
