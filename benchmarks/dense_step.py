"""Dense-step microbenchmark: forward + backward of the dense model (DTRN bottom, fusion,
towers, loss) of a config, the current code against an earlier revision, in one process.

    .venv/bin/python benchmarks/dense_step.py --before 6021115 --json benchmarks/results/dense_step.json \
        --md benchmarks/results/dense_step.md

For each config (``configs/demo.yaml``, ``configs/bench_large.yaml``) at its ``batch_size``
(the per-rank batch of the real trainer, which runs 1 intra-op thread per rank):

* inputs are what the embedding lookups hand the dense model: random dense features, pooled
  fields and right-padded behaviour sequences that require grad; sequence lengths follow the
  synthetic logs (uniform in 0 .. ceil(1.5 max_len), cut at max_len: a third of the rows full,
  a few empty);
* ``before``: the working tree's model with DTRN's TIM taken from the ``--before`` revision
  (its ``TaskInterestModule`` and ``models/transformer.py``, fed as that revision's DTRN fed
  it), loaded as a separate package and given the same weights; ``after``: the working tree.
  Everything else (TRM, fusion, towers, loss) is the same code in both;
* ``--rounds`` alternating rounds (``before`` first in even rounds), each timing ``--steps``
  steps of each variant after one warm-up step; the ratio is taken per round and its median
  reported, with the 1-minute load average of every round;
* FLOPs per sample of each variant with ``torch.utils.flop_counter.FlopCounterMode`` (plus a
  formula for SDPA's CPU kernels, which it lacks), its matmul shapes recorded on the side;
* the GEMM rate, measured in every round right after the timed steps (``torch.mm`` at 2048³
  and ``torch.mm`` / ``torch.bmm`` at the model's three largest matmul shapes; the best of
  them is the round's peak); MFU = ``after``'s FLOPs per sample × samples/s ÷ that peak, per
  round, median over rounds. ``after`` executes only the real positions, so its count is the
  model's useful work (``before``'s larger count includes the padded positions), and both
  variants' MFU use it.

The machine is shared: besides the per-round medians, the fastest step of each variant and the
best GEMM rate over the run give a less loaded estimate (``best_*``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import (  # noqa: E402
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from benchmarks.runinfo import run_info  # noqa: E402
from fusionrec.datasets.schema import FeatureSchema, Schema, TaskConfig  # noqa: E402
from fusionrec.typedconfig import from_dict, load_yaml  # noqa: E402

CONFIGS = {"demo": "configs/demo.yaml", "large": "configs/bench_large.yaml"}
BEFORE_PACKAGE = "fusionrec_before"


# FlopCounterMode has no formula for SDPA's CPU kernels (torch 2.13): count them like the
# CUDA ones, Q·Kᵀ and P·V forward, twice that backward.
_SDPA_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_SDPA_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
if _SDPA_CPU not in flop_registry:

    @register_flop_formula(_SDPA_CPU)
    def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(_SDPA_CPU_BACKWARD)
    def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# Appended to the working tree's dtrn.py in the baseline package: the name DTRN builds its TIM
# from is rebound to the revision's TIM, fed as that revision's DTRN fed it (every sequence
# padded to the longest max_len, stacked).
_BEFORE_TIM_SHIM = """

from {package}._before_dtrn import TaskInterestModule as _RevisionTIM


class TaskInterestModule(_RevisionTIM):
    def __init__(self, num_tasks, behaviors, max_len, dim, cfg, activation="relu", per_length=None):
        super().__init__(num_tasks, behaviors, max_len, dim, cfg, activation)

    def forward(self, sequences, lengths, target=None):
        padded = [F.pad(s, (0, 0, 0, self.max_len - s.shape[1])) for s in sequences]
        return super().forward(torch.stack(padded, dim=1), torch.stack(lengths, dim=1), target)
"""


def _at(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True).stdout


def load_before(rev: str, root: Path) -> str:
    """Write package ``fusionrec_before.models`` under ``root``: the working tree's models/,
    except that DTRN's TIM is ``rev``'s (its ``TaskInterestModule`` and transformer.py, loaded
    as ``_before_dtrn`` / ``_before_transformer``). Returns the package name."""
    package = f"{BEFORE_PACKAGE}.models"
    models = root / BEFORE_PACKAGE / "models"
    models.mkdir(parents=True)
    (root / BEFORE_PACKAGE / "__init__.py").write_text("")
    files = {path.name: path.read_text() for path in (REPO / "models").glob("*.py")}
    files["_before_dtrn.py"] = _at(rev, "models/dtrn.py")
    files["_before_transformer.py"] = _at(rev, "models/transformer.py")
    files["dtrn.py"] += _BEFORE_TIM_SHIM.format(package=package)
    for name, text in files.items():
        for old in ("fusionrec.models.", "from models.", "import models."):
            text = text.replace(old, old.replace("fusionrec.models.", "models.").replace("models.", f"{package}."))
        if name == "_before_dtrn.py":
            text = text.replace(f"{package}.transformer ", f"{package}._before_transformer ")
        (models / name).write_text(text)
    sys.path.insert(0, str(root))
    return package


def schema_and_model(config: str):
    data = load_yaml(REPO / config)
    schema = Schema(
        features=from_dict(FeatureSchema, data["features"], key="features"),
        tasks=[from_dict(TaskConfig, t, key="tasks") for t in data["tasks"]],
    )
    return schema, data["model"], int(data["data"]["batch_size"])


class DenseModel(torch.nn.Module):
    """bottom → fusion → towers → loss, built from one ``models`` package."""

    def __init__(self, package: str, schema: Schema, model_data: dict) -> None:
        super().__init__()
        config = importlib.import_module(f"{package}.config")
        bottoms = importlib.import_module(f"{package}.bottoms")
        fusion = importlib.import_module(f"{package}.fusion")
        towers = importlib.import_module(f"{package}.towers")
        losses = importlib.import_module(f"{package}.losses")
        cfg = from_dict(config.ModelConfig, model_data, key="model")
        K = len(schema.tasks)
        self.bottom = bottoms.build_bottom(schema, cfg)
        self.fusion = fusion.build_fusion(K, self.bottom.out_dim, cfg.fusion, identical_rows=not self.bottom.task_specific)
        self.towers = towers.TaskTowers(K, self.fusion.out_dim, cfg.tower_dims, cfg.activation)
        self.loss_fn = losses.MultiTaskLoss(schema.tasks)

    def forward(self, dense, fields, sequences, lengths, labels, weights) -> torch.Tensor:
        out = self.loss_fn(self.towers(self.fusion(self.bottom(dense, fields, sequences, lengths))), labels, weights)
        return out[0] if isinstance(out, tuple) else getattr(out, "loss", out)


def make_inputs(schema: Schema, batch: int, seed: int):
    """Embedding outputs as the dense model sees them (leaves that require grad), labels, weights."""
    g = torch.Generator().manual_seed(seed)
    f = schema.features
    dim = {t.name: t.dim for t in f.tables}
    dense = torch.randn(batch, len(f.dense), generator=g).requires_grad_()
    fields = [torch.randn(batch, dim[s.table], generator=g).requires_grad_() for s in f.sparse]
    sequences, lengths = [], []
    for s in f.sequences:
        cap = math.ceil(1.5 * s.max_len)
        n = torch.randint(0, cap + 1, (batch,), generator=g).clamp(max=s.max_len)
        x = torch.randn(batch, s.max_len, dim[s.table], generator=g)
        x = x * (torch.arange(s.max_len) < n.unsqueeze(1)).unsqueeze(-1)
        sequences.append(x.requires_grad_())
        lengths.append(n)
    labels = torch.randint(0, 2, (batch, len(schema.tasks)), generator=g).float()
    return dense, fields, sequences, lengths, labels, torch.ones(batch)


def step(model: DenseModel, inputs) -> None:
    model.zero_grad(set_to_none=True)
    model(*inputs).backward()


class MatmulShapes(TorchDispatchMode):
    """Records (m, k, n, batch) of every mm / addmm / bmm / baddbmm call."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[tuple[int, int, int, int], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            batch = a.shape[0] if a.dim() == 3 else 1
            key = (a.shape[-2], a.shape[-1], b.shape[-1], batch)
            self.shapes[key] = self.shapes.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def count(model: DenseModel, inputs, batch: int) -> tuple[float, dict, list]:
    """(FLOPs per sample, FLOPs by operator, matmul shapes by total FLOPs) of one fwd+bwd."""
    counter = FlopCounterMode(display=False)
    shapes = MatmulShapes()
    with counter, shapes:
        step(model, inputs)
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    ranked = sorted(shapes.shapes.items(), key=lambda kv: -2 * kv[0][0] * kv[0][1] * kv[0][2] * kv[0][3] * kv[1])
    return counter.get_total_flops() / batch, by_op, ranked


def gemm_rate(m: int, k: int, n: int, batch: int = 1, seconds: float = 0.5) -> float:
    """FLOP/s of torch.mm (torch.bmm for batch > 1) at [m, k] × [k, n]."""
    a = torch.randn(batch, m, k).squeeze(0)
    b = torch.randn(batch, k, n).squeeze(0)
    op = torch.bmm if batch > 1 else torch.mm
    op(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        op(a, b)
        reps += 1
    return 2 * m * k * n * batch * reps / (time.perf_counter() - t0)


def time_steps(model: DenseModel, inputs, steps: int) -> list[float]:
    """Seconds of each of ``steps`` fwd+bwd steps, after one warm-up step."""
    step(model, inputs)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(model, inputs)
        times.append(time.perf_counter() - t0)
    return times


def bench_config(name: str, before_pkg: str, args) -> dict:
    schema, model_data, batch = schema_and_model(CONFIGS[name])
    torch.manual_seed(0)
    after = DenseModel("fusionrec.models", schema, model_data)
    before = DenseModel(before_pkg, schema, model_data)
    before.load_state_dict(after.state_dict())
    inputs = make_inputs(schema, batch, seed=1)

    with torch.no_grad():
        loss_after, loss_before = after(*inputs).item(), before(*inputs).item()
    flops = {}
    for label, model in (("before", before), ("after", after)):
        per_sample, by_op, shapes = count(model, inputs, batch)
        flops[label] = {"per_sample": per_sample, "by_op": by_op, "top_matmuls": [list(s) + [c] for s, c in shapes[:5]]}
    shapes = [s for s, _ in count(after, inputs, batch)[2][:3]]
    gemms = {"mm 2048x2048x2048": (2048, 2048, 2048, 1)}
    for m, k, n, b in shapes:
        gemms[f"bmm {b}x{m}x{k}x{n}" if b > 1 else f"mm {m}x{k}x{n}"] = (m, k, n, b)
    useful = flops["after"]["per_sample"]
    rounds = []
    for r in range(args.rounds):
        order = [("before", before), ("after", after)] if r % 2 == 0 else [("after", after), ("before", before)]
        row = {"load": [round(x, 2) for x in os.getloadavg()]}
        for label, model in order:
            row[f"{label}_steps_s"] = time_steps(model, inputs, args.steps)
            row[f"{label}_s"] = statistics.median(row[f"{label}_steps_s"])
        row["gemm_flop_per_s"] = {key: gemm_rate(*shape, seconds=args.gemm_seconds) for key, shape in gemms.items()}
        peak = max(row["gemm_flop_per_s"].values())
        row["speedup"] = row["before_s"] / row["after_s"]
        for label in ("before", "after"):
            row[f"{label}_mfu"] = useful * batch / row[f"{label}_s"] / peak
        rounds.append(row)
        print(
            f"{name} round {r}: load {row['load'][0]}, before {1e3 * row['before_s']:.1f} ms, after "
            f"{1e3 * row['after_s']:.1f} ms, x{row['speedup']:.2f}, GEMM peak {peak / 1e9:.0f} GFLOP/s, "
            f"MFU {row['before_mfu']:.1%} -> {row['after_mfu']:.1%}",
            flush=True,
        )

    result = {"batch": batch, "loss_before": loss_before, "loss_after": loss_after, "flops": flops, "rounds": rounds}
    best_peak = max(max(r["gemm_flop_per_s"].values()) for r in rounds)
    for label in ("before", "after"):
        step_s = statistics.median(r[f"{label}_s"] for r in rounds)
        best_s = min(min(r[f"{label}_steps_s"]) for r in rounds)
        result[label] = {
            "step_ms": 1e3 * step_s,
            "samples_per_s": batch / step_s,
            "mfu": statistics.median(r[f"{label}_mfu"] for r in rounds),
            "executed_flop_per_s": flops[label]["per_sample"] * batch / step_s,
            "best_step_ms": 1e3 * best_s,
            "best_mfu": useful * batch / best_s / best_peak,
        }
    result["best_speedup"] = result["before"]["best_step_ms"] / result["after"]["best_step_ms"]
    result["speedup_median"] = statistics.median(r["speedup"] for r in rounds)
    result["speedup_range"] = [min(r["speedup"] for r in rounds), max(r["speedup"] for r in rounds)]
    result["gemm_flop_per_s_median"] = {
        key: statistics.median(r["gemm_flop_per_s"][key] for r in rounds) for key in gemms
    }
    return result


def markdown(out: dict) -> str:
    """The results page: run facts, then per config the medians, the best steps and every round."""
    lines = [
        "# Dense step: per-length TIM against the padded one",
        "",
        f"* date: {out['date']}",
        f"* machine: {out['machine']}",
        f"* command: `{out['command']}`",
        f"* before: DTRN's TIM (`TaskInterestModule`, `models/transformer.py`) at `{out['before_rev']}`, the rest of "
        "the model from the working tree; after: the working tree",
        f"* {out['threads']} intra-op thread(s); `uptime` at start: `{out['uptime_at_start']}`; at end: `{out['uptime_at_end']}`",
        "",
        "Forward + backward of the dense model (DTRN bottom, AdaTT, towers, loss) on inputs shaped like the",
        "embedding outputs, at the config's per-rank batch. Ratios are per round (both variants back to back,",
        "alternating which goes first), so a neighbour's load hits both alike; absolute times are not comparable",
        "across runs. MFU = the after variant's FLOPs per sample (its useful work: real positions only) ×",
        "samples/s ÷ the best GEMM rate measured in the same round.",
        "",
        "| config | batch | FLOPs/sample before → after | step ms before → after (median) | speed-up median (range) "
        "| MFU before → after | best step ms before → after | best MFU before → after |",
        "| --- | ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in out["configs"].items():
        b, a = r["before"], r["after"]
        lines.append(
            f"| {name} | {r['batch']} | {r['flops']['before']['per_sample'] / 1e6:.2f} M → "
            f"{r['flops']['after']['per_sample'] / 1e6:.2f} M | {b['step_ms']:.1f} → {a['step_ms']:.1f} | "
            f"{r['speedup_median']:.2f}× ({r['speedup_range'][0]:.2f}–{r['speedup_range'][1]:.2f}) | "
            f"{b['mfu']:.1%} → {a['mfu']:.1%} | {b['best_step_ms']:.1f} → {a['best_step_ms']:.1f} "
            f"({r['best_speedup']:.2f}×) | {b['best_mfu']:.1%} → {a['best_mfu']:.1%} |"
        )
    for name, r in out["configs"].items():
        gemm = ", ".join(f"{k}: {v / 1e9:.0f}" for k, v in r["gemm_flop_per_s_median"].items())
        lines += [
            "",
            f"## {name}",
            "",
            f"GEMM rate, median over rounds (GFLOP/s): {gemm}. Loss before {r['loss_before']:.6f}, after {r['loss_after']:.6f}.",
            "",
            "| round | load (1, 5, 15 min) | before ms | after ms | speed-up | GEMM peak GFLOP/s | MFU before → after |",
            "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for i, row in enumerate(r["rounds"]):
            peak = max(row["gemm_flop_per_s"].values())
            lines.append(
                f"| {i} | {', '.join(str(x) for x in row['load'])} | {1e3 * row['before_s']:.1f} | {1e3 * row['after_s']:.1f} | "
                f"{row['speedup']:.2f} | {peak / 1e9:.0f} | {row['before_mfu']:.1%} → {row['after_mfu']:.1%} |"
            )
        ops = r["flops"]["after"]["by_op"]
        lines += ["", "FLOPs per sample by operator, after: " + ", ".join(
            f"{k.replace('aten.', '')} {v / r['batch'] / 1e6:.3f} M" for k, v in ops.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD", help="git revision whose TIM forms the baseline")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the trainer runs 1 per rank)")
    parser.add_argument("--gemm-seconds", type=float, default=0.3, help="time per GEMM-rate measurement")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--md", type=Path, help="write a Markdown page of the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = run_info()
    info["uptime_at_start"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    before_rev = subprocess.run(
        ["git", "rev-parse", "--short", args.before], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix="dense_step_"))
    try:
        before_pkg = load_before(args.before, root)
        results = {name: bench_config(name, before_pkg, args) for name in args.configs}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {
        **info,
        "before_rev": before_rev,
        "threads": args.threads,
        "uptime_at_end": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "configs": results,
    }
    for name, r in results.items():
        print(
            f"{name}: B={r['batch']} step {r['before']['step_ms']:.1f} -> {r['after']['step_ms']:.1f} ms, "
            f"speedup {r['speedup_median']:.2f}x (rounds {r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f}), "
            f"FLOPs/sample {r['flops']['before']['per_sample'] / 1e6:.2f}M -> {r['flops']['after']['per_sample'] / 1e6:.2f}M, "
            f"MFU {r['before']['mfu']:.1%} -> {r['after']['mfu']:.1%}; best steps {r['before']['best_step_ms']:.1f} -> "
            f"{r['after']['best_step_ms']:.1f} ms (x{r['best_speedup']:.2f}), best MFU {r['before']['best_mfu']:.1%} -> "
            f"{r['after']['best_mfu']:.1%}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown(out))


if __name__ == "__main__":
    main()
