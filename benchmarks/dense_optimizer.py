"""The dense optimizer's step on one CPU thread: torch's for-loop, foreach and fused Adam over the
dense parameters of the tiny, demo and large configs (the shapes ``build_model`` gives them; the
values and gradients are random, which does not change the work).

    python benchmarks/dense_optimizer.py --md benchmarks/results/dense_optimizer.md

Each implementation takes 20 warm-up steps, then the best of ``--rounds`` timings of 100 steps;
the implementations alternate within each round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.runinfo import run_info  # noqa: E402
from benchmarks.throughput import CONFIGS, rotated  # noqa: E402

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def dense_parameters(cfg_path: str) -> list[torch.Tensor]:
    """Random tensors of the shapes of the config's dense parameters, each with a gradient."""
    from fusionrec.models import build_model
    from fusionrec.pipeline.config import load_config

    cfg = load_config(REPO / cfg_path)
    model = build_model(cfg.schema, cfg.model, device=torch.device("meta"))
    params = [torch.randn(p.shape, requires_grad=True) for n, p in model.named_parameters()
              if not n.startswith(("ebc.", "ec."))]  # fmt: skip
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def time_steps(opt: torch.optim.Optimizer, steps: int = 100) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--md", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    info = run_info()
    lines = [
        "# Dense optimizer step (Adam, 1 CPU thread)", "",
        f"Date {info['date']}; machine: {info['machine']}; load at start {info['load_at_start']}.",
        f"Command: `{info['command']}`.", "",
        "| config | dense tensors | parameters | " + " | ".join(f"{k} ms/step" for k in IMPLEMENTATIONS) + " | fused speed-up |",
        "| --- | ---: | ---: |" + " ---: |" * (len(IMPLEMENTATIONS) + 1),
    ]  # fmt: skip
    for name in ("tiny", "demo", "large"):
        params = dense_parameters(CONFIGS[name])
        opts = {k: torch.optim.Adam(params, lr=1e-3, **kw) for k, kw in IMPLEMENTATIONS.items()}
        for opt in opts.values():
            for _ in range(20):
                opt.step()
        best = {k: float("inf") for k in opts}
        for r in range(args.rounds):
            for k in rotated(list(opts), r):
                best[k] = min(best[k], time_steps(opts[k]))
        ms = {k: 1000 * v for k, v in best.items()}
        lines.append(f"| {name} (`{CONFIGS[name]}`) | {len(params)} | {sum(p.numel() for p in params):,} | "
                     + " | ".join(f"{ms[k]:.3f}" for k in IMPLEMENTATIONS)
                     + f" | {ms['for-loop'] / ms['fused']:.1f}× |")  # fmt: skip
        print(lines[-1], flush=True)
    lines += ["", "The trainer's dense optimizer is the fused one (`pipeline.optimizers.dense_optimizer_factory`)."]
    Path(args.md).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
