"""Export and serve, for real: a 2-rank DCP checkpoint -> export (fp32 and int8 tables) ->
load in a process where fusionrec and torchrec cannot be imported -> predict, compared row by
row with ``evaluate --predictions`` on the same checkpoint; every fusion type exports exactly;
bad arguments fail with one line; a killed export leaves nothing behind."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.jobs import CONFIG, FUSIONS, evaluate, train
from tests.launch import REPO, child_env, run

pytestmark = pytest.mark.slow

TASKS = ["click", "like", "convert"]
EXPORT = [sys.executable, "-m", "fusionrec.pipeline.export", "--config", CONFIG]
PREDICT = [sys.executable, "-m", "fusionrec.pipeline.predict"]
LOADER = str(REPO / "tests" / "workers" / "load_artifact.py")
INT8_AUC_BOUND = 0.002


@pytest.fixture(scope="module")
def served(demo_logs, tmp_path_factory):
    """A 60-step 2-rank checkpoint, its fp32 and int8 exports, and evaluate's predictions."""
    root = tmp_path_factory.mktemp("serve")
    train(demo_logs, root / "run", 60)
    exports = {}
    for q in ("none", "int8"):
        exports[q] = root / f"export-{q}"
        run([*EXPORT, "--checkpoint", str(root / "run"), "--out", str(exports[q]), "--quantize", q])
    evaluate(demo_logs, root / "run", root / "eval.json", "--predictions", str(root / "eval.parquet"), "--no-plots")
    return {"root": root, "logs": demo_logs, "exports": exports, "eval": pq.read_table(root / "eval.parquet")}


def _predict(served, q: str, name: str, *extra: str):
    out = served["root"] / f"{name}.parquet"
    proc = run([*PREDICT, "--model", str(served["exports"][q]), "--data", str(served["logs"] / "eval" / "*.parquet"),
                "--out", str(out), *extra])
    return pq.read_table(out), proc


def _col(table, name):
    return table.column(name).to_numpy()


def _auc(table, task):
    """The evaluator's own streaming AUC of one prediction column, inside the task's space."""
    from fusionrec.pipeline.metrics import TaskMetrics

    weights = _col(table, "weight")
    if task == "convert":
        weights = weights * (_col(table, "label_click") > 0.5)
    m = TaskMetrics("binary")
    m.update(torch.from_numpy(_col(table, f"prediction_{task}")), torch.from_numpy(_col(table, f"label_{task}")),
             torch.from_numpy(weights.astype(np.float32)))
    return m.compute()["auc"]


def test_manifest_describes_the_artifact(served):
    manifest = json.loads((served["exports"]["int8"] / "manifest.json").read_text())
    assert manifest["format"] == "torchscript" and manifest["file"] == "model.pt" and manifest["quantize"] == "int8"
    assert [t["name"] for t in manifest["tasks"]] == TASKS and manifest["tasks"][2]["space"] == "click"
    assert [i["name"] for i in manifest["inputs"]] == ["dense", "sparse_values", "sparse_lengths",
                                                       "sequence_values", "sequence_lengths"]  # no per-id weights
    assert manifest["inputs"][1]["kjt_keys"] == ["user_id", "item_category", "user_tags"]
    assert manifest["inputs"][3]["kjt_keys"] == ["click_seq", "like_seq", "buy_seq", "item_id"]
    assert manifest["source"]["step"] == 60 and manifest["source"]["world_size"] == 2
    ids = {f["column"]: f for f in manifest["features"]["ids"]}
    assert ids["click_seq"]["max_len"] == 20 and ids["user_tags"]["pooling"] == "mean"
    assert ids["user_id"]["num_embeddings"] == 20000 and ids["item_id"]["input"] == "sequence"
    # int8 rows of dim 16: 16 bytes + fp16 scale and bias, packed: 20 of fp32's 64 bytes.
    assert manifest["embedding_bytes"] == manifest["fp32_embedding_bytes"] * 20 // 64
    fp32 = json.loads((served["exports"]["none"] / "manifest.json").read_text())
    assert fp32["embedding_bytes"] == fp32["fp32_embedding_bytes"] == 72500 * 16 * 4
    assert fp32["dense_bytes"] == manifest["dense_bytes"] > 0
    assert sorted(p.name for p in served["exports"]["int8"].iterdir()) == [
        "config.yaml", "example_inputs.pt", "example_outputs.pt", "manifest.json", "model.pt"]


def test_fp32_predict_equals_evaluate_row_by_row(served):
    reference = served["eval"]
    for name, extra in (("pred-none", ()), ("pred-none-workers", ("--num-workers", "2", "--batch-size", "300"))):
        got, proc = _predict(served, "none", name, *extra)
        assert "rows/s" in proc.stdout
        assert got.schema == reference.schema and got.num_rows == reference.num_rows == 8000
        for column in ("row_id", "group_id", *[f"label_{t}" for t in TASKS], "weight"):
            np.testing.assert_array_equal(_col(got, column), _col(reference, column), err_msg=f"{name}: {column}")
        for task in TASKS:
            diff = np.abs(_col(got, f"prediction_{task}") - _col(reference, f"prediction_{task}")).max()
            assert diff <= 1e-5, f"{name}: {task} differs by {diff}"


def test_predict_scores_logs_without_labels(served, tmp_path):
    """Traffic to score has no label columns: predict reads it all the same, gives the same
    predictions as for the labelled logs, and writes no label columns. A file with only some
    of the labels is refused, naming the missing one."""
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for path in sorted((served["logs"] / "eval").glob("*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(TASKS), unlabelled / path.name, row_group_size=2000)
    out = tmp_path / "pred.parquet"
    run([*PREDICT, "--model", str(served["exports"]["none"]), "--data", str(unlabelled), "--out", str(out)])
    got, reference = pq.read_table(out), served["eval"]
    assert not [c for c in got.column_names if c.startswith("label_")] and got.num_rows == reference.num_rows
    for column in ("row_id", "group_id", "weight", *[f"prediction_{t}" for t in TASKS]):
        np.testing.assert_allclose(_col(got, column), _col(reference, column), rtol=0, atol=1e-5, err_msg=column)
    first = sorted(unlabelled.glob("*.parquet"))[0]
    partial = tmp_path / "partial.parquet"
    pq.write_table(pq.read_table(served["logs"] / "eval" / first.name).drop_columns(["like"]), partial)
    proc = subprocess.run([*PREDICT, "--model", str(served["exports"]["none"]), "--data", str(partial),
                           "--out", str(tmp_path / "p.parquet")], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "missing column 'like'" in proc.stderr.strip().splitlines()[-1]


def test_int8_predictions_keep_the_auc(served):
    reference = served["eval"]
    got, _ = _predict(served, "int8", "pred-int8")
    np.testing.assert_array_equal(_col(got, "row_id"), _col(reference, "row_id"))
    for task in TASKS:
        mad = np.abs(_col(got, f"prediction_{task}") - _col(reference, f"prediction_{task}")).mean()
        auc_gap = abs(_auc(got, task) - _auc(reference, task))
        assert 0 < mad < 0.01, f"{task}: mean |int8 - fp32| {mad}"  # > 0: the tables really are int8
        assert auc_gap <= INT8_AUC_BOUND, f"{task}: int8 AUC moved by {auc_gap}"


def test_loads_and_scores_without_fusionrec(served, tmp_path):
    """A process that cannot import fusionrec or torchrec loads both exports, runs the example
    inputs, and scores real reader batches of 1, 64 and 512 rows like evaluate did."""
    from fusionrec.datasets.reader import ParquetReader
    from fusionrec.pipeline import artifact

    manifest = artifact.read_manifest(served["exports"]["none"])
    schema = artifact.manifest_schema(manifest)
    names = [i["name"] for i in manifest["inputs"]]
    eval_files = sorted(str(p) for p in (served["logs"] / "eval").glob("*.parquet"))
    batches, rows = [], []
    for size in (1, 64, 512):
        batch = next(iter(ParquetReader(eval_files, schema, size, drop_last=False)))
        batches.append(artifact.batch_inputs(batch, names))
        rows.append(np.arange(size))  # each reader starts at row 0 of the eval files
    torch.save(batches, tmp_path / "batches.pt")
    reference = served["eval"]
    for q in ("none", "int8"):
        out = tmp_path / f"out-{q}.pt"
        proc = subprocess.run([sys.executable, LOADER, str(served["exports"][q]), "--batches", str(tmp_path / "batches.pt"),
                               "--out", str(out)], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["imported"] == [] and result["fusionrec_importable"] is False
        assert result["example_shape"] == [64, 3] and result["example_max_abs_diff"] == 0.0
        outputs = torch.load(out)
        for r, pred in zip(rows, outputs):
            expected = np.stack([_col(reference, f"prediction_{t}")[r] for t in TASKS], axis=1)
            tolerance = 1e-5 if q == "none" else 0.05
            assert pred.shape == expected.shape and np.abs(pred.numpy() - expected).max() <= tolerance, q


VARIANTS = {
    "demo (dtrn + adatt)": [],
    **{f"dtrn + {name}": [f"model.fusion={spec}"] for name, spec in FUSIONS.items()},
    "shared bottom + mmoe, weighted pooling": [
        "model.bottom={type: shared}", f"model.fusion={FUSIONS['mmoe']}", "features.sparse.user_tags.weight_column=tag_weights"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_model_exports_exactly(variant):
    """The fp32 export of each fusion (and of the shared bottom with weighted pooling) predicts
    what the eager model predicts, at several batch sizes, from random weights."""
    from fusionrec.models import build_model
    from fusionrec.pipeline import artifact
    from fusionrec.pipeline.exporting import compile_inference_model, eager_predictions, example_batch
    from fusionrec.pipeline.job import load_job_config

    cfg = load_job_config(CONFIG, VARIANTS[variant])
    torch.manual_seed(0)
    model = build_model(cfg.schema, cfg.model)
    with torch.no_grad():  # tables at a trained scale, so that lookups matter
        for p in model.parameters():
            p.normal_(0, 0.3)
    scripted, names, _ = compile_inference_model(model, cfg.schema, "none", example_batch(cfg.schema, 16))
    assert ("sparse_weights" in names) == cfg.schema.features.weighted_pooling
    for size, seed in ((1, 1), (37, 2), (256, 3)):
        batch = example_batch(cfg.schema, size, seed=seed)
        with torch.no_grad():
            got = scripted(*artifact.batch_inputs(batch, names))
        expected = eager_predictions(model, batch)
        assert got.shape == (size, 3)
        assert (got - expected).abs().max() <= 1e-5, f"{variant} at batch {size}"
        assert expected.std() > 1e-3  # the comparison is not between two constants


def test_scripted_bucket_plan_equals_dtrn():
    """The TorchScript port of DTRN's length-bucket plan makes the same buckets."""
    from fusionrec.models.dtrn import length_buckets
    from fusionrec.models.inference import length_buckets_script

    g = np.random.default_rng(0)
    for trial in range(200):
        counts = [int(c) if g.random() < 0.6 else 0 for c in g.integers(1, 50, size=int(g.integers(1, 25)))]
        overhead = int(g.choice([0, 8, 96, 1000]))
        assert length_buckets_script(counts, overhead) == length_buckets(counts, overhead), (counts, overhead)


def test_bad_arguments_fail_with_one_line(served, tmp_path, capsys):
    from fusionrec.pipeline import export

    ckpt = str(served["root"] / "run")
    config = yaml.safe_load(Path(CONFIG).read_text())
    config["tasks"][0], config["tasks"][1] = config["tasks"][1], config["tasks"][0]
    reordered = served["root"] / "reordered.yaml"
    reordered.write_text(yaml.safe_dump(config, sort_keys=False))
    # The real command line once: exit status 2 and one line on stderr.
    proc = subprocess.run([*EXPORT, "--checkpoint", ckpt, "--out", str(tmp_path / "a"), "--quantize", "int4"],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --quantize 'int4': unknown quantisation; choose one of none, fp16, int8"], proc.stderr
    # The other cases through the same entry point, in this process.
    cases = [
        (["--checkpoint", ckpt, "--out", str(served["exports"]["none"])], "exists and is not empty (pass --force"),
        (["--checkpoint", ckpt, "--out", str(tmp_path / "b"), "--set", "features.tables.user.num_embeddings=999"],
         "features.tables.user.num_embeddings: checkpoint 20000, config 999"),
        (["--checkpoint", str(tmp_path), "--out", str(tmp_path / "c")], "is neither a complete checkpoint"),
        # The checkpoint's config rules: tasks in another order would export the wrong towers.
        (["--config", str(reordered), "--checkpoint", ckpt, "--out", str(tmp_path / "d")],
         "tasks: checkpoint [click, like, convert], config [like, click, convert]"),
    ]
    for args, message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            export.main(["--config", CONFIG, *args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no b/, c/, no .tmp- leftovers
    assert (served["exports"]["none"] / "model.pt").is_file()  # the refused --out is untouched
    proc = subprocess.run([*PREDICT, "--model", str(tmp_path), "--data", "x", "--out", str(tmp_path / "p.parquet")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path}: not an exported model (no manifest.json)"


def test_a_killed_export_leaves_the_old_dir_and_force_replaces_it(served, tmp_path):
    ckpt = str(served["root"] / "run")
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("the previous export")
    command = [*EXPORT, "--checkpoint", ckpt, "--out", str(target), "--quantize", "fp16", "--force"]
    proc = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any(p.name.startswith(".tmp-model-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.time() < deadline, "the export never started writing"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]  # nothing half-written in --out
    run(command)  # the next export clears the dead one's leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not (target / "old.txt").exists() and json.loads((target / "manifest.json").read_text())["quantize"] == "fp16"


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and a C++ compiler")
def test_a_libtorch_program_loads_the_export(served, tmp_path):
    """examples/serving_cpp: compiled against the libtorch in torch's wheel, it dlopens FBGEMM's
    operator libraries, loads model.pt and reproduces the exporter's example outputs exactly."""
    import fbgemm_gpu

    build = tmp_path / "build"
    run(["cmake", "-S", str(REPO / "examples" / "serving_cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"], timeout=300)
    run(["cmake", "--build", str(build), "-j2"], timeout=600)
    for q in ("none", "int8"):
        proc = run([str(build / "serve_export"), str(Path(fbgemm_gpu.__file__).parent), str(served["exports"][q]), "3"])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["max_abs_diff"] == 0 and result["output_shape"] == [64, 3] and result["manifest_bytes"] > 1000


def _one_line_exit_2(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=180)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_predict_refuses_what_the_model_was_not_exported_for(served, tmp_path):
    """Wrong input at the serving side is one line and exit 2, never scored quietly: ids of
    another type, a manifest.json that is not the model's own, a truncated model file."""
    model = served["exports"]["none"]
    eval_file = sorted((served["logs"] / "eval").glob("*.parquet"))[0]
    out = str(tmp_path / "p.parquet")

    # 1. String ids for a feature trained on integer ids.
    table = pq.read_table(eval_file)
    strings = table.set_column(table.schema.get_field_index("user_id"), "user_id",
                               table.column("user_id").cast(pa.string()))  # fmt: skip
    pq.write_table(strings, tmp_path / "strings.parquet")
    line = _one_line_exit_2([*PREDICT, "--model", str(model), "--data", str(tmp_path / "strings.parquet"), "--out", out])
    assert f"the model in {model}: feature 'user_id': trained on integer ids" in line and "has string ids" in line, line

    # 2. A manifest.json edited after the export (a table 100x larger): the model's own copy rules.
    tampered = tmp_path / "tampered"
    shutil.copytree(model, tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    table0 = manifest["schema"]["features"]["tables"][0]
    table0["num_embeddings"] *= 100
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    line = _one_line_exit_2([*PREDICT, "--model", str(tampered), "--data", str(eval_file), "--out", out])
    assert f"{tampered / 'manifest.json'} differs from the manifest inside {tampered / 'model.pt'}" in line, line
    assert f"schema.features.tables.0.num_embeddings (model {table0['num_embeddings'] // 100}" in line, line

    # 3. A truncated model file names itself.
    truncated = tmp_path / "truncated"
    shutil.copytree(model, truncated)
    data = (truncated / "model.pt").read_bytes()
    (truncated / "model.pt").write_bytes(data[: len(data) // 2])
    line = _one_line_exit_2([*PREDICT, "--model", str(truncated), "--data", str(eval_file), "--out", out])
    assert f"{truncated / 'model.pt'}: not a loadable TorchScript model" in line, line
    assert not (tmp_path / "p.parquet").exists()


def test_unwritable_out_is_one_line_before_any_work(served, tmp_path):
    model, ckpt = str(served["exports"]["none"]), str(served["root"] / "run")
    eval_glob = str(served["logs"] / "eval" / "*.parquet")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_dir").mkdir()
    line = _one_line_exit_2([*PREDICT, "--model", model, "--data", eval_glob, "--out", str(tmp_path / "a_file" / "p.parquet")])
    assert line == f"error: --out {tmp_path / 'a_file' / 'p.parquet'}: {tmp_path / 'a_file'} is a file, not a directory"
    started = time.monotonic()
    line = _one_line_exit_2([*PREDICT, "--model", model, "--data", eval_glob, "--out", str(tmp_path / "a_dir")])
    assert line == f"error: --out {tmp_path / 'a_dir'}: is a directory; name the Parquet file to write"
    assert time.monotonic() - started < 60  # refused before loading the model and scoring
    line = _one_line_exit_2([*EXPORT, "--checkpoint", ckpt, "--out", str(tmp_path / "a_file" / "export")])
    assert line == f"error: --out {tmp_path / 'a_file' / 'export'}: {tmp_path / 'a_file'} is a file, not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"]  # no .tmp- leftovers
    assert list((tmp_path / "a_dir").iterdir()) == []
