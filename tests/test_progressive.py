"""The progressive curve of a follow-mode run as evaluate reads it back from train_log.jsonl:
in training order, the last score of a partition scored twice, nothing past the checkpoint's
step, a torn last line left out; the Markdown table's means computed by hand; the plot."""

from __future__ import annotations

import json

import pytest

from fusionrec.errors import UserError
from fusionrec.pipeline import report
from fusionrec.pipeline.logs import TRAIN_LOG
from fusionrec.pipeline.progressive import curve_markdown, progressive_curve


def scored(partition: str, step: int, click: float, like: float, lag: int = 0) -> dict:
    tasks = {"click": {"auc": click, "ne": 0.9, "calibration": 1.1}, "like": {"auc": like, "ne": 0.95, "calibration": 0.9}}
    return {"event": "progressive_eval", "step": step, "partition": partition, "rows": 100, "lag_partitions": lag,
            "progressive": tasks}  # fmt: skip


def write_log(run_dir, records, tail: str = "") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    (run_dir / TRAIN_LOG).write_text("\n".join(lines) + "\n" + tail)


def test_the_curve_is_in_training_order_with_the_last_score_of_a_partition_and_stops_at_the_step(tmp_path):
    write_log(tmp_path, [
        scored("hour=0", 0, 0.50, 0.60, lag=2),
        {"step": 5, "loss": 1.0, "partition": "hour=0"},
        scored("hour=1", 10, 0.55, 0.62),  # killed before a checkpoint in hour=1 ...
        scored("hour=1", 10, 0.56, 0.63),  # ... and scored again by the resumed run
        scored("hour=3", 20, 0.58, 0.64),
        scored("hour=2", 30, 0.60, 0.66),  # landed late: trained after hour=3
    ], tail='{"event": "progressive_eval", "st')  # fmt: skip
    curve = progressive_curve(tmp_path)
    assert [(p["partition"], p["tasks"]["click"]["auc"]) for p in curve] == [
        ("hour=0", 0.50), ("hour=1", 0.56), ("hour=3", 0.58), ("hour=2", 0.60)]  # fmt: skip
    assert curve[0]["lag_partitions"] == 2 and curve[0]["rows"] == 100
    assert [p["partition"] for p in progressive_curve(tmp_path, up_to_step=20)] == ["hour=0", "hour=1", "hour=3"]
    assert progressive_curve(tmp_path / "no-run") == []


def test_the_table_gives_each_partition_and_the_mean_per_task(tmp_path):
    curve = [{"partition": p, "step": s, "rows": 100, "lag_partitions": 0, "tasks": {"click": {"auc": a}, "like": {"auc": b}}}
             for p, s, a, b in [("hour=0", 0, 0.50, 0.70), ("hour=1", 10, 0.60, 0.80), ("hour=2", 20, 0.55, 0.60)]]  # fmt: skip
    lines = curve_markdown(curve)
    assert lines[0] == "| partition | step | rows | lag | click auc | like auc |"
    assert lines[3] == "| hour=1 | 10 | 100 | 0 | 0.6000 | 0.8000 |"
    assert lines[-1] == "| mean of 3 | | | | 0.5500 | 0.7000 |"  # (0.5+0.6+0.55)/3, (0.7+0.8+0.6)/3


def test_a_damaged_line_inside_the_log_is_named(tmp_path):
    write_log(tmp_path, [scored("hour=0", 0, 0.5, 0.6)], tail="not json\n" + json.dumps(scored("hour=1", 5, 0.5, 0.6)) + "\n")
    with pytest.raises(UserError, match=rf"{TRAIN_LOG}:2: not a JSON record"):
        progressive_curve(tmp_path)


def test_the_plot_is_written(tmp_path):
    write_log(tmp_path, [scored(f"hour={h}", 10 * h, 0.5 + h / 100, 0.6) for h in range(12)])
    report.plot_progressive(progressive_curve(tmp_path), tmp_path / "progressive.png")
    assert (tmp_path / "progressive.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
