"""Human-readable evaluation output: a Markdown summary and PNG plots (matplotlib, no display).

* ``roc.png``: one ROC panel per binary task, with its AUC;
* ``calibration.png``: one reliability diagram per binary task (observed positive rate
  against mean prediction per prediction bin; the diagonal is perfect calibration);
* ``fusion.png``: the task-to-task fusion matrix of each fusion level as a heatmap (AdaTT,
  PLE: gate mass each row unit puts on each column unit's experts; cross-stitch: α);
* ``progressive.png``: of a follow-mode run, each task's AUC, NE and calibration on every
  partition, scored before the model trained on it (``pipeline.progressive``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fusionrec.pipeline.progressive import CURVE_METRICS, curve_markdown

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown(result: dict[str, Any], plots: dict[str, str]) -> str:
    """The Markdown summary of an evaluation result (the JSON written by pipeline.evaluate);
    a result without ``tasks`` is a follow-mode run's progressive curve alone."""
    lines = [f"# Evaluation: {result['model']} at step {result['step']}", "", f"- checkpoint: `{result['checkpoint']}`"]
    if "tasks" in result:
        lines.append(f"- data: `{result['data']}` ({result['samples']} rows, {result['world_size']} rank(s))")
        lines += [""] + _task_table(result)
    for level, entry in enumerate(result.get("fusion") or []):
        rows, cols, matrix = entry["rows"], entry["columns"], entry["matrix"]
        lines += ["", f"## Fusion level {level + 1} ({entry['kind']})", "", "| from \\ to | " + " | ".join(cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        lines += [f"| {r} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for r, row in zip(rows, matrix)]
    if result.get("progressive"):
        lines += ["", "## Progressive evaluation", "",
                  "Each partition scored by the model as it was before training on it (train.follow).", ""]
        lines += curve_markdown(result["progressive"])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def _task_table(result: dict[str, Any]) -> list[str]:
    columns = ["auc", "gauc", "ne", "logloss", "calibration", "positive_rate", "mse", "mae", "count"]
    present = [c for c in columns if any(c in t for t in result["tasks"].values())]
    lines = ["| task | " + " | ".join(present) + " |", "|---|" + "---:|" * len(present)]
    for name, metrics in result["tasks"].items():
        cells = []
        for c in present:
            cell = _fmt(metrics.get(c, float("nan")))
            ci = metrics.get("ci", {}).get(c)
            if ci:
                cell += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any("ci" in t for t in result["tasks"].values()):
        lines += ["", f"Brackets: {result.get('bootstrap', {}).get('level', 0.95):.0%} bootstrap intervals "
                      f"({result.get('bootstrap', {}).get('replicates')} Poisson replicates)."]
    return lines


def _grid(n: int) -> tuple[plt.Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_roc(curves: dict[str, dict], aucs: dict[str, float], path: Path) -> None:
    fig, axes = _grid(len(curves))
    for ax, (task, curve) in zip(axes, curves.items()):
        ax.plot(curve["fpr"], curve["tpr"], lw=2, label=f"AUC {aucs[task]:.4f}")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.set(title=task, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(curves: dict[str, dict], path: Path) -> None:
    fig, axes = _grid(len(curves))
    for ax, (task, curve) in zip(axes, curves.items()):
        top = max(max(curve["mean_prediction"], default=1), max(curve["positive_rate"], default=1))
        ax.plot([0, top], [0, top], ls="--", c="grey", lw=1, label="perfect")
        sizes = [20 + 200 * w / max(curve["weight"]) for w in curve["weight"]]
        ax.scatter(curve["mean_prediction"], curve["positive_rate"], s=sizes, alpha=0.7, label="bins (size: rows)")
        ax.plot(curve["mean_prediction"], curve["positive_rate"], lw=1)
        ax.set(title=task, xlabel="mean prediction", ylabel="observed positive rate")
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fusion(levels: list[dict], path: Path) -> None:
    fig, axes = _grid(len(levels))
    for i, (ax, entry) in enumerate(zip(axes, levels)):
        image = ax.imshow(entry["matrix"], cmap="viridis", vmin=0)
        ax.set_xticks(range(len(entry["columns"])), entry["columns"], rotation=45, ha="right")
        ax.set_yticks(range(len(entry["rows"])), entry["rows"])
        for r, row in enumerate(entry["matrix"]):
            for c, value in enumerate(row):
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.5 else "black")
        ax.set(title=f"fusion level {i + 1}", xlabel="experts of", ylabel="fused by")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(levels[0]["kind"] if levels else "")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_progressive(curve: list[dict[str, Any]], path: Path) -> None:
    """One panel per metric (AUC, NE, calibration; MSE for regression tasks), one line per
    task, over the partitions in training order."""
    tasks = list(curve[0]["tasks"])
    metrics = [m for m in CURVE_METRICS if any(m in p["tasks"].get(t, {}) for p in curve for t in tasks)]
    fig, axes = _grid(len(metrics))
    x = list(range(len(curve)))
    for ax, metric in zip(axes, metrics):
        for task in tasks:
            y = [p["tasks"].get(task, {}).get(metric) for p in curve]
            y = [math.nan if v is None else v for v in y]
            if not all(math.isnan(v) for v in y):
                ax.plot(x, y, marker="o", ms=3, lw=1.5, label=task)
        if metric == "calibration":
            ax.axhline(1.0, ls="--", c="grey", lw=1)
        every = max(1, math.ceil(len(curve) / 8))
        ax.set_xticks(x[::every], [p["partition"] for p in curve[::every]], rotation=45, ha="right", fontsize=7)
        ax.set(title=f"progressive {metric}", xlabel="partition (scored before training on it)", ylabel=metric)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
