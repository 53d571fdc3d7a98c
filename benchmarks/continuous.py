"""Drift benchmark (issue 23): a model that keeps training on every new partition against the
same model stopped after the first K partitions, scored partition by partition.

    .venv/bin/python -m benchmarks.continuous --seeds 0 1 2

For each drift (``synthetic.drift_per_partition``: configs/stream.yaml's 0.15 rad per hourly
partition, and 0 as the control) it writes a ``--partitions`` P partition log of ``--rows``
rows each (``datasets.synthetic``), then for each seed (``train.seed`` and ``data.seed``):

* **continuous**: ``pipeline.train`` in follow mode on 2 ranks (torchrun), the whole log; a
  partition's score is its progressive evaluation, taken before the model trained on it;
* **stopped**: the same job with ``data.partitioning.last`` at partition K-1, so it trains on
  partitions 0..K-1 as the continuous run does, then stops; its last checkpoint scores each
  partition K..P-1 (``pipeline.evaluate.evaluate``, one process).

Both arms score the same rows: every row of partitions K..P-1, each by a model that has not
trained on it. The control isolates the drift: without it, continuous still gains from seeing
more data, so the gain the drift causes is the drifting gap less the control's. Exports are
off (``train.follow.export_every_n_partitions: 0``); everything else is configs/stream.yaml.

Writes ``benchmarks/results/continuous.{json,md}``; run dirs and logs go under
``runs/continuous/`` and are kept (``--keep`` off: deleted after each arm).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.runinfo import load_average, run_info  # noqa: E402
from benchmarks.stats import fmt  # noqa: E402

CONFIG = ROOT / "configs" / "stream.yaml"
RUNS = ROOT / "runs" / "continuous"
RESULTS = ROOT / "benchmarks" / "results"
TASKS = ("click", "like", "convert")


def settings(seed: int) -> list[str]:
    return [f"train.seed={seed}", f"data.seed={seed}", "train.follow.export_every_n_partitions=0",
            "train.follow.idle_timeout_s=1", "train.follow.poll_interval_s=0.5",
            "checkpoint.every_n_steps=100000", "checkpoint.keep_last=1"]  # fmt: skip


def write_log(root: Path, drift: float, partitions: int, rows: int) -> None:
    from fusionrec.datasets.synthetic import generate_partitions, load_config  # noqa: PLC0415

    if (root / ".done").is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    schema, synthetic_cfg = load_config(str(CONFIG), [f"synthetic.drift_per_partition={drift}"])
    generate_partitions(schema, synthetic_cfg, rows, root, partitions)
    (root / ".done").touch()


def train(root: Path, run_dir: Path, seed: int, extra: list[str]) -> float:
    """One follow-mode job on 2 ranks; returns its wall seconds."""
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["--config", str(CONFIG), "--train-data", str(root), "--run-dir", str(run_dir)]
    for s in settings(seed) + extra:
        args += ["--set", s]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fusionrec.pipeline.train", *args]  # fmt: skip
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"training failed (exit {proc.returncode}); see {run_dir.parent / (run_dir.name + '.log')}")
    return time.perf_counter() - started


def progressive_aucs(run_dir: Path) -> dict[str, dict[str, float]]:
    from fusionrec.pipeline.progressive import progressive_curve  # noqa: PLC0415

    return {p["partition"]: {t: p["tasks"][t]["auc"] for t in TASKS} for p in progressive_curve(run_dir)}


def frozen_aucs(run_dir: Path, root: Path, names: list[str], seed: int) -> dict[str, dict[str, float]]:
    """The stopped run's last checkpoint on each partition of ``names``."""
    from fusionrec.pipeline import job  # noqa: PLC0415
    from fusionrec.pipeline.evaluate import evaluate  # noqa: PLC0415
    from fusionrec.pipeline.scoring import ScoreOptions  # noqa: PLC0415

    cfg = job.load_job_config(str(CONFIG), settings(seed))
    checkpoint = job.resolve_checkpoint(run_dir, announce=False)
    out = {}
    with job.process_group("cpu") as info:
        for name in names:
            result, _ = evaluate(cfg, checkpoint, str(root / name), cfg.eval.batch_size or 4096, info, ScoreOptions())
            out[name] = {t: result["tasks"][t]["auc"] for t in TASKS}
    return out


def cmd_run(args: argparse.Namespace) -> None:
    from fusionrec.datasets.synthetic import partition_name  # noqa: PLC0415

    names = [partition_name(i) for i in range(args.partitions)]
    scored = names[args.stop_after :]
    info = {**run_info(), "command": "python -m benchmarks.continuous " + " ".join(sys.argv[1:])}
    runs = []
    for drift in args.drifts:
        root = RUNS / f"log-drift{drift:g}-p{args.partitions}-r{args.rows}"
        write_log(root, drift, args.partitions, args.rows)
        for seed in args.seeds:
            load = load_average()
            cont_dir, stop_dir = RUNS / f"drift{drift:g}-s{seed}-continuous", RUNS / f"drift{drift:g}-s{seed}-stopped"
            cont_s = train(root, cont_dir, seed, [])
            stop_s = train(root, stop_dir, seed, [f"data.partitioning.last={names[args.stop_after - 1]}"])
            continuous = progressive_aucs(cont_dir)
            stopped = frozen_aucs(stop_dir, root, scored, seed)
            missing = [n for n in names if n not in continuous]
            if missing:
                raise SystemExit(f"{cont_dir}: no progressive evaluation of {missing}")
            run = {"drift": drift, "seed": seed, "continuous": {n: continuous[n] for n in names}, "stopped": stopped,
                   "train_s": {"continuous": round(cont_s, 1), "stopped": round(stop_s, 1)}, "load_at_start": load}  # fmt: skip
            runs.append(run)
            gap = statistics.fmean(continuous[n][t] - stopped[n][t] for n in scored for t in TASKS)
            print(f"drift {drift:g} seed {seed}: continuous - stopped mean AUC {gap:+.4f} "
                  f"({cont_s:.0f} s + {stop_s:.0f} s, load {load})", flush=True)  # fmt: skip
            if not args.keep:
                shutil.rmtree(cont_dir, ignore_errors=True)
                shutil.rmtree(stop_dir, ignore_errors=True)
    result = {**info, "load_at_end": load_average(), "config": str(CONFIG.relative_to(ROOT)),
              "partitions": args.partitions, "rows_per_partition": args.rows, "stop_after": args.stop_after,
              "ranks": 2, "runs": runs}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "continuous.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "continuous.md").write_text(report(result))
    print(f"wrote {RESULTS / 'continuous.md'}")


def report(result: dict) -> str:
    k, p = result["stop_after"], result["partitions"]
    drifts = sorted({r["drift"] for r in result["runs"]}, reverse=True)
    by_drift = {d: [r for r in result["runs"] if r["drift"] == d] for d in drifts}
    lines = [
        "# Continuous training under drift (issue 23)",
        "",
        f"- date: {result['date']}; machine: {result['machine']}",
        f"- load average (1, 5, 15 min) at start {result['load_at_start']}, at end {result['load_at_end']}",
        f"- command: `{result['command']}`",
        f"- {result['config']} (DTRN + AdaTT, 3 tasks), {p} hourly partitions of {result['rows_per_partition']:,} rows, "
        f"{result['ranks']} ranks; **continuous** trains on every partition in follow mode and is scored on each before "
        f"training on it (progressive evaluation); **stopped** is the same job stopped after partition {k - 1} "
        f"(`data.partitioning.last`), its last checkpoint scoring partitions {k}..{p - 1}. Both score every row of "
        f"those {p - k} partitions with a model that has not trained on it. Drift 0 is the control.",
        "",
        "## Mean AUC over the scored partitions (mean ± 95 % t-interval over seeds)",
        "",
        "| drift (rad / partition) | seeds | task | continuous | stopped | continuous − stopped | partition × seed pairs won |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    gaps: dict[float, list[float]] = {}
    for drift in drifts:
        runs = by_drift[drift]
        for task in (*TASKS, "mean"):
            def auc(r: dict, arm: str, name: str) -> float:
                return statistics.fmean(r[arm][name].values()) if task == "mean" else r[arm][name][task]

            cont = [statistics.fmean(auc(r, "continuous", n) for n in r["stopped"]) for r in runs]
            stop = [statistics.fmean(auc(r, "stopped", n) for n in r["stopped"]) for r in runs]
            diff = [c - s for c, s in zip(cont, stop)]
            pairs = [(auc(r, "continuous", n), auc(r, "stopped", n)) for r in runs for n in r["stopped"]]
            won = sum(c > s for c, s in pairs)
            label = f"**{task}**" if task == "mean" else task
            lines.append(f"| {drift:g} | {len(runs)} | {label} | {fmt(cont)} | {fmt(stop)} | {fmt(diff, signed=True)} | "
                         f"{won}/{len(pairs)} |")
            if task == "mean":
                gaps[drift] = diff
    if 0.0 in gaps and len(gaps) > 1:
        lines += ["", "What the drift costs a stopped model, net of the control (more data alone): "
                  + "; ".join(f"drift {d:g}: {statistics.fmean(gaps[d]) - statistics.fmean(gaps[0.0]):+.4f} mean AUC"
                              for d in drifts if d != 0.0) + "."]  # fmt: skip
    for drift in drifts:
        runs = by_drift[drift]
        names = list(runs[0]["stopped"])

        def mean_auc(arm: str, name: str) -> float:
            return statistics.fmean(statistics.fmean(r[arm][name].values()) for r in runs)

        same = max(abs(r["continuous"][names[0]][t] - r["stopped"][names[0]][t]) for r in runs for t in TASKS)

        lines += ["", f"Drift {drift:g}: the stopped model's mean AUC goes from {mean_auc('stopped', names[0]):.4f} on "
                  f"partition {k} to {mean_auc('stopped', names[-1]):.4f} on partition {p - 1}, the continuous model's "
                  f"from {mean_auc('continuous', names[0]):.4f} to {mean_auc('continuous', names[-1]):.4f}. On "
                  f"partition {k} both arms are the same model (the same job up to there), scored once by progressive "
                  f"evaluation and once by `pipeline.evaluate`: largest AUC difference {same:.1e}."]  # fmt: skip
    for drift in drifts:
        runs = by_drift[drift]
        names = set(runs[0]["stopped"])
        seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
        lines += ["", f"## Per partition, drift {drift:g}: mean AUC over the 3 tasks (mean over {seeds})", "",
                  "| partition | continuous | stopped | gap |", "|---|---:|---:|---:|"]  # fmt: skip
        for name in runs[0]["continuous"]:
            cont = statistics.fmean(statistics.fmean(r["continuous"][name].values()) for r in runs)
            if name in names:
                stop = statistics.fmean(statistics.fmean(r["stopped"][name].values()) for r in runs)
                lines.append(f"| {name} | {cont:.4f} | {stop:.4f} | {round(cont - stop, 4) + 0.0:+.4f} |")
            else:
                lines.append(f"| {name} | {cont:.4f} | (training) | |")
    seconds = [r["train_s"] for r in result["runs"]]
    lines += ["", f"Wall time per job: continuous {statistics.fmean(s['continuous'] for s in seconds):.0f} s, "
              f"stopped {statistics.fmean(s['stopped'] for s in seconds):.0f} s (2 ranks, start-up included)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.continuous", description=__doc__.split("\n\n")[0])
    parser.add_argument("--drifts", type=float, nargs="+", default=[0.15, 0.0], help="radians per partition (0: control)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--rows", type=int, default=20000, help="rows per partition")
    parser.add_argument("--stop-after", type=int, default=4, help="K: the stopped model trains on partitions 0..K-1")
    parser.add_argument("--keep", action="store_true", help="keep the run dirs under runs/continuous/")
    parser.add_argument("--report", action="store_true", help="rewrite continuous.md from continuous.json only")
    args = parser.parse_args(argv)
    if args.report:
        result = json.loads((RESULTS / "continuous.json").read_text())
        (RESULTS / "continuous.md").write_text(report(result))
        return 0
    if not 0 < args.stop_after < args.partitions:
        parser.error("--stop-after must be between 1 and --partitions - 1")
    cmd_run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
