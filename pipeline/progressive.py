"""The progressive-validation curve of a follow-mode run (``train.follow``).

Before it trains on a partition, follow mode scores the model as it is on that partition's
rows and writes a ``progressive_eval`` record to ``RUN_DIR/train_log.jsonl``; the series over
partitions is the model's quality as a server would have seen it, hour by hour. This module
reads that series back for ``pipeline.evaluate``: a table for the Markdown summary and the
numbers behind ``progressive.png`` (``pipeline.report.plot_progressive``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from fusionrec.errors import UserError
from fusionrec.pipeline.logs import TRAIN_LOG, read_jsonl

CURVE_METRICS = ("auc", "ne", "calibration", "mse")


def progressive_curve(run_dir: Path, up_to_step: Optional[int] = None) -> list[dict[str, Any]]:
    """Each partition's progressive evaluation, in the order the run trained them.

    Returns: ``[{"partition", "step", "rows", "lag_partitions", "tasks": {task: metrics}}]``
    for the records at steps ``<= up_to_step`` (the checkpoint being evaluated; None: all).
    A partition scored twice (killed between its score and its first checkpoint, then
    resumed) keeps its last score: the one of the run that went on to train it.
    """
    try:
        records = read_jsonl(Path(run_dir) / TRAIN_LOG)
    except ValueError as err:
        raise UserError(str(err)) from None
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("event") != "progressive_eval" or (up_to_step is not None and r["step"] > up_to_step):
            continue
        latest.pop(r["partition"], None)  # re-inserted: ordered by its last score
        latest[r["partition"]] = {"partition": r["partition"], "step": r["step"], "rows": r["rows"],
                                  "lag_partitions": r.get("lag_partitions"), "tasks": r["progressive"]}  # fmt: skip
    return list(latest.values())


def curve_markdown(curve: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per partition, the AUC (or MSE) of every task, then the mean."""
    tasks = list(curve[0]["tasks"])
    metric = {t: "auc" if "auc" in curve[0]["tasks"][t] else "mse" for t in tasks}
    lines = ["| partition | step | rows | lag | " + " | ".join(f"{t} {metric[t]}" for t in tasks) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(tasks)]  # fmt: skip
    for point in curve:
        cells = [_cell(point["tasks"].get(t, {}).get(metric[t])) for t in tasks]
        lag = "" if point["lag_partitions"] is None else str(point["lag_partitions"])
        lines.append(f"| {point['partition']} | {point['step']} | {point['rows']} | {lag} | " + " | ".join(cells) + " |")
    means = []
    for t in tasks:
        values = [p["tasks"][t][metric[t]] for p in curve if p["tasks"].get(t, {}).get(metric[t]) is not None]
        means.append(_cell(sum(values) / len(values) if values else None))
    lines.append(f"| mean of {len(curve)} | | | | " + " | ".join(means) + " |")
    return lines


def _cell(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.4f}"
