"""``train.compile``: the dense part under torch.compile (inductor) computes what eager computes,
the sparse part stays eager, and checkpoints of compiled runs load into eager models.

Tolerances, from what the compiled kernels change:

* fp32: inductor fuses elementwise chains and reorders reductions, so each fused op may round
  differently by about one float32 ulp (6e-8 relative). Measured over 40 demo steps in one
  process: loss differences up to 2.9e-7 relative; the tests allow 1e-5, which a real
  difference in the math (a lost mask, a missing term, another batch) exceeds by orders of
  magnitude (those move the loss by 1e-3 or more).
* bf16 autocast: eager rounds every op's output to bf16; inductor computes a fused chain in
  fp32 and rounds once at its end. That is a few bf16 ulps (2^-8 = 0.4% relative) per
  activation. Measured on the tiny config: first-step loss 2.8e-5 relative, gradients up to 0.7%
  of their tensor's largest entry; the test allows 1e-3 and 5%.

* checkpoints after 12 steps: rounding-level gradient differences grow in the optimizers'
  state and, most, in embedding rows whose gradients are nearly cancelling sums (row-wise
  Adagrad steps every row by about its learning rate whatever the gradient's size). Two eager
  runs that differ only in the intra-op thread count (1 vs 2) differ by as much: relative norm
  6.9e-4 on the item table, at most 1.1e-4 on every other tensor; compiled vs eager measured
  the same. The test allows 5e-3 on tables and 1e-3 on the rest; a wrong kernel moves the
  logged losses first (compared at 1e-5).

Compiling costs tens of seconds on the 2-core machine (about 70 s for the demo model's ~20
graphs on each of 2 ranks, cold). The module keeps inductor's cache in pytest's cache
directory: the 2-rank run reuses the precompiled header the one-process test built, and a
rerun of the module loads every kernel from the cache, as a second run of a user's job would.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import shutil
import sysconfig
from pathlib import Path
from typing import Optional

import pytest
import torch

from fusionrec.datasets.reader import ParquetReader, make_loader
from fusionrec.models.multitask import build_model
from fusionrec.pipeline.compiled import compile_dense, compile_stats, dense_modules, multitask_model
from fusionrec.pipeline.config import CompileConfig, load_config
from tests.jobs import CONFIG, checkpoint_tensors, evaluate, read_log, train
from tests.launch import REPO

CPU = torch.device("cpu")
TINY = str(REPO / "configs/bench_tiny.yaml")


def missing_toolchain() -> Optional[str]:
    """Why inductor cannot build CPU kernels here (no C++ compiler, no Python headers), or None."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        compiler = get_cpp_compiler()
    except Exception as err:  # inductor raises its own error types when it finds no compiler
        return f"inductor finds no C++ compiler: {err}"
    if shutil.which(compiler) is None:
        return f"inductor's C++ compiler {compiler!r} is not on PATH"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").exists():
        return f"no Python.h under {include} (inductor's kernels include it)"
    return None


needs_toolchain = pytest.mark.skipif(missing_toolchain() is not None, reason=str(missing_toolchain()))


@pytest.fixture(scope="module", autouse=True)
def inductor_cache(request):
    """One inductor/AOT cache for this module's processes (this one and the jobs it starts), in
    pytest's cache directory: a rerun loads the kernels built before instead of compiling them
    again (``pytest --cache-clear`` or ``make clean`` makes the next run cold)."""
    path = request.config.cache.mkdir("torchinductor")
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def batches(config: str, logs: Path, n: int, batch_size: int, *overrides: str) -> tuple:
    cfg = load_config(config, [f"data.batch_size={batch_size}", *overrides])
    reader = ParquetReader(str(logs / "train"), cfg.schema, batch_size, drop_last=True, shuffle=False)
    return cfg, list(itertools.islice(make_loader(reader), n))


def test_only_the_dense_modules_are_compiled(small_logs):
    cfg, _ = batches(CONFIG, small_logs, 0, 64)
    model = build_model(cfg.schema, cfg.model)
    names = [name for name, _ in dense_modules(model, CPU)]
    # On CPU DTRN's TIM runs per length: its bucket plan and encoding stay eager.
    assert names == ["bottom.tim.hyper", "bottom.trm", "fusion", "towers", "loss_fn"]
    model.bottom.tim.per_length = False  # the padded pass (the default off CPU) compiles whole
    assert [name for name, _ in dense_modules(model, CPU)] == ["bottom", "fusion", "towers", "loss_fn"]
    model.bottom.tim.per_length = None
    assert [name for name, _ in dense_modules(model, torch.device("cuda"))][0] == "bottom"
    tiny = load_config(TINY)
    assert [n for n, _ in dense_modules(build_model(tiny.schema, tiny.model), CPU)][0] == "bottom"

    keys = list(model.state_dict())
    compile_dense(model, CompileConfig(enabled=True), CPU)  # lazy: nothing compiles before a call
    assert list(model.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    compiled = {name for name, m in model.named_modules() if m._compiled_call_impl is not None}
    assert compiled == set(names)
    assert multitask_model(torch.nn.ModuleDict({"module": model}).module) is model


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_toolchain
def test_compiled_bf16_steps_and_odd_eval_batch_match_eager(small_logs):
    """One process, the tiny config (few graphs: a cold compile takes seconds, not a minute):
    training steps under bf16 autocast (train.mixed_precision), then fp32 scoring in eval mode
    of a full batch and of a 16-row one (the last batch of an eval set: a new batch size)."""
    cfg, data = batches(TINY, small_logs, 3, 128)
    torch.manual_seed(0)
    eager = build_model(cfg.schema, cfg.model)
    compiled = copy.deepcopy(eager)
    compile_dense(compiled, CompileConfig(enabled=True), CPU)
    for i, batch in enumerate(data[:2]):
        got = {}
        for name, model in (("eager", eager), ("compiled", compiled)):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, out = model(batch)
            loss.backward()
            got[name] = (loss.detach(), out.task_losses, _grads(model))
        (le, te, ge), (lc, tc, gc) = got["eager"], got["compiled"]
        assert le.dtype == lc.dtype == torch.float32
        torch.testing.assert_close(lc, le, rtol=1e-3, atol=0)
        torch.testing.assert_close(tc, te, rtol=1e-3, atol=1e-5)
        assert ge.keys() == gc.keys() and ge
        for name in ge:
            scale = ge[name].abs().max().clamp(min=1e-12)
            assert (gc[name] - ge[name]).abs().max() <= 0.05 * scale, (i, name)

    _, odd = batches(TINY, small_logs, 1, 16)
    eager.eval()
    compiled.eval()
    with torch.no_grad():
        for batch in (data[2], odd[0]):
            (le, oe), (lc, oc) = eager(batch), compiled(batch)
            assert oc.predictions.shape == oe.predictions.shape == (batch.labels.shape[0], 3)
            torch.testing.assert_close(lc, le, rtol=1e-5, atol=0)
            torch.testing.assert_close(oc.predictions, oe.predictions, rtol=1e-5, atol=1e-6)
    stats = compile_stats(compiled, CPU)
    # It did compile: train and eval variants of every module, none past dynamo's limit.
    assert stats["graph_breaks"] == 0 and all(2 <= n <= 8 for n in stats["variants"].values()), stats


# Periodic evaluation every 6 steps over all 800 eval rows: 4 batches of 100 on each rank.
EVAL_BATCH = 100
TRAIN_SETS = ["--set", "train.log_every=4", "--eval-data", None, "--set", "train.eval_every_n_steps=6",
              "--set", f"eval.batch_size={EVAL_BATCH}", "--set", "train.progress_bar=false"]
STEPS = 12


def _losses(run_dir: Path) -> tuple[list[tuple[int, float, dict]], list[tuple[int, dict]]]:
    log = read_log(run_dir)
    steps = [(r["step"], r["loss"], r["task_loss"]) for r in log if "loss" in r]
    evals = [(r["step"], r["eval"]) for r in log if "eval" in r]
    return steps, evals


def _compiled_frames(stderr: str) -> set[str]:
    """The source files of the frames dynamo compiled, from ``TORCH_LOGS=dynamo`` lines."""
    return set(re.findall(r"torchdynamo start tracing \S+ (\S+?\.py):\d+", stderr))


@pytest.mark.slow
@needs_toolchain
def test_two_rank_compiled_training_matches_eager(small_logs, tmp_path, monkeypatch):
    """The real train job, 2 gloo ranks (DMP, DDP around the dense part, TrainPipelineSparseDist),
    with and without train.compile on the same batches: the same losses at every log line, the
    same periodic evaluations (compiled in eval mode), checkpoints with the same keys and
    values, and the compiled run's checkpoint, scored by the evaluate job (an eager model),
    gives the eager run's last evaluation."""
    sets = [str(small_logs / "eval" if a is None else a) for a in TRAIN_SETS]
    eager_dir, compiled_dir = tmp_path / "eager", tmp_path / "compiled"
    train(small_logs, eager_dir, STEPS, *sets)
    monkeypatch.setenv("TORCH_LOGS", "dynamo")
    proc = train(small_logs, compiled_dir, STEPS, *sets, "--set", "train.compile.enabled=true")
    monkeypatch.delenv("TORCH_LOGS")

    assert "torch.compile (inductor mode=default dynamic=None) of the dense part" in proc.stdout
    frames = _compiled_frames(proc.stderr)
    # Dynamo traced the dense modules' forwards (DTRN's hypernetwork and TRM, AdaTT, towers,
    # loss), and nothing of the sparse part, the pipeline or the per-length TIM encoding.
    assert {Path(f).name for f in frames} == {"dtrn.py", "adatt.py", "towers.py", "losses.py"}, frames

    (eager_steps, eager_evals), (comp_steps, comp_evals) = _losses(eager_dir), _losses(compiled_dir)
    assert [s for s, _, _ in comp_steps] == [s for s, _, _ in eager_steps] == [4, 8, 12]
    for (step, le, te), (_, lc, tc) in zip(eager_steps, comp_steps):
        assert lc == pytest.approx(le, rel=1e-5), step
        assert tc == pytest.approx(te, rel=1e-5), step
    assert [s for s, _ in comp_evals] == [s for s, _ in eager_evals] == [6, 12]
    for (step, eager_eval), (_, comp_eval) in zip(eager_evals, comp_evals):
        _assert_same_scores(comp_eval, eager_eval, (step,))

    ckpt = f"checkpoints/step_{STEPS:08d}"
    te, tc = checkpoint_tensors(eager_dir / ckpt, tmp_path), checkpoint_tensors(compiled_dir / ckpt, tmp_path)
    assert sorted(tc) == sorted(te) and not [k for k in tc if "_orig_mod" in k]
    assert any(k.startswith("model.fusion.") for k in tc) and any(k.startswith("model.ebc.") for k in tc)
    for key in te:
        if te[key].is_floating_point():
            err = (tc[key].double() - te[key].double()).norm() / te[key].double().norm().clamp(min=1e-12)
            assert err <= (5e-3 if ".embeddings." in key else 1e-3), (key, float(err))
        else:
            assert torch.equal(tc[key], te[key]), key

    # The evaluate job builds an eager model and loads the compiled run's checkpoint into it;
    # on the same 800 rows it scores what the eager run's step-12 evaluation scored.
    scored = evaluate(small_logs, compiled_dir / ckpt, tmp_path / "compiled.json", "--batch-size", str(EVAL_BATCH))
    assert scored["samples"] == 800 and scored["step"] == STEPS
    _assert_same_scores(scored["tasks"], eager_evals[-1][1], ("evaluate",))


def _assert_same_scores(got: dict, want: dict, where: tuple) -> None:
    assert set(got) == set(want) == {"click", "like", "convert"}
    for task, metrics in want.items():
        for name in ("logloss", "ne", "calibration"):
            assert got[task][name] == pytest.approx(metrics[name], rel=1e-5), (*where, task, name)
        # AUC ranks pairs: a rounding-level change of two near-tied predictions swaps one pair,
        # 1 / (positives x negatives) = 5e-6 to 2e-5 on these rows; 1e-4 allows a few such swaps.
        assert got[task]["auc"] == pytest.approx(metrics["auc"], abs=1e-4), (*where, task)
