"""Every bottom x every fusion through every job, on small real logs: train (with periodic
evaluation) -> evaluate (default flags, with --bootstrap and --predictions) -> export -> predict.

The tasks cover each kind: ``click`` binary, ``convert`` binary inside click's space, and
``user_activity`` a regression (taken out of the dense inputs). Each job runs through its own
``main`` in this process (a world of one, real Parquet files, a real DCP checkpoint, a real
TorchScript export), a few steps each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fusionrec.pipeline import evaluate as evaluate_job
from fusionrec.pipeline import export as export_job
from fusionrec.pipeline import predict as predict_job
from fusionrec.pipeline import train as train_job
from tests.jobs import CONFIG, FUSIONS

BOTTOMS = {"dtrn": [], "shared": ["model.bottom={type: shared}"]}
ALL_FUSIONS = {"adatt": [], **{name: [f"model.fusion={spec}"] for name, spec in FUSIONS.items()}}
#: the fusions whose experts belong to tasks, which report task-to-task matrices
WITH_MATRICES = {"adatt", "adatt_sp", "ple", "cross_stitch"}
TASKS = [
    "tasks=[{name: click}, {name: convert, space: click}, {name: user_activity, type: regression, weight: 0.5}]",
    "features.dense=[user_age, item_price, hour_of_day]",
]


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _ok(main, args: list[str]) -> None:
    try:
        code = main(args)
    except SystemExit as done:
        code = done.code
    assert code in (0, None), f"{main.__module__} {args} exited {code}"


@pytest.mark.parametrize("fusion", list(ALL_FUSIONS))
@pytest.mark.parametrize("bottom", list(BOTTOMS))
def test_every_model_through_every_job(small_logs: Path, tmp_path: Path, bottom: str, fusion: str, capsys):
    sets = _sets([*TASKS, *BOTTOMS[bottom], *ALL_FUSIONS[fusion], "data.batch_size=32"])
    run_dir, eval_data = tmp_path / "run", str(small_logs / "eval")
    _ok(train_job.main, ["--config", CONFIG, "--train-data", str(small_logs / "train"), "--eval-data", eval_data,
                         "--run-dir", str(run_dir), "--max-steps", "4", *sets,
                         "--set", "train.eval_every_n_steps=2", "--set", "train.log_every=2"])  # fmt: skip
    out = capsys.readouterr().out
    evals = [line for line in out.splitlines() if line.startswith("eval @ step")]
    assert len(evals) == 2, out
    for line in evals:  # each task by its own metric, none nan
        assert "click:auc=" in line and "convert:auc=" in line and "user_activity:mse=" in line, line
        assert "nan" not in line, line

    report, predictions = tmp_path / "eval.json", tmp_path / "eval.parquet"
    _ok(evaluate_job.main, ["--config", CONFIG, "--checkpoint", str(run_dir), "--data", eval_data, "--out", str(report),
                            "--no-plots", "--bootstrap", "5", "--predictions", str(predictions), *sets])  # fmt: skip
    result = json.loads(report.read_text())
    tasks = result["tasks"]
    for task in ("click", "convert"):
        assert 0.0 < tasks[task]["auc"] < 1.0, tasks[task]
    assert math.isfinite(tasks["user_activity"]["mse"]) and "auc" not in tasks["user_activity"]
    assert ("fusion" in result) == (fusion in WITH_MATRICES), result.keys()
    scored = pq.read_table(predictions)
    assert scored.num_rows == result["samples"] == 800

    artifact, served = tmp_path / "export", tmp_path / "served.parquet"
    _ok(export_job.main, ["--config", CONFIG, "--checkpoint", str(run_dir), "--out", str(artifact), "--quantize", "none",
                          *sets])  # fmt: skip
    _ok(predict_job.main, ["--model", str(artifact), "--data", eval_data, "--out", str(served)])
    served_table = pq.read_table(served)
    assert served_table.num_rows == 800
    for task in ("click", "convert", "user_activity"):  # the fp32 export predicts what evaluate scored
        a = served_table.column(f"prediction_{task}").to_numpy()
        b = scored.column(f"prediction_{task}").to_numpy()
        assert abs(a - b).max() <= 1e-5, task
