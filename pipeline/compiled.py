"""``train.compile``: the dense part of the model under ``torch.compile``; the sparse part eager.

The dense part is what runs on the embedding outputs: the bottom (DTRN or shared), the fusion,
the towers and the loss. Each of those submodules of :class:`~fusionrec.models.multitask.
MultiTaskModel` is compiled in place with ``nn.Module.compile``, which compiles the module's
call and leaves its attributes alone, so ``state_dict`` keys carry no ``_orig_mod.`` prefix and
checkpoints move freely between compiled and eager runs. Everything else stays eager:
``MultiTaskModel.forward`` and ``embed`` (the KJT lookups, padding and pooling of the sharded
collections), and the forward that ``TrainPipelineSparseDist`` rewrites around the sharded
modules: only the modules below run compiled, each called from the eager forward.

What is compiled:

* ``bottom``, whole: the shared bottom, or DTRN when its TIM runs the padded pass (every
  sequence at ``max_len``; the default off CPU).
* DTRN whose TIM encodes each sequence at its own length (``per_length``; the default on CPU):
  its hypernetwork and its TRM; TIM's encoding stays eager. Its length-bucket plan reads the
  lengths on the host (``.tolist()``) and gathers a different number of rows per bucket in
  every batch: compiled whole, that is a graph break per bucket and a recompile per bucket
  layout, past dynamo's recompile limit within a few batches. Compiling only its encoder
  layers (inputs [1, 1, N, L, D], N and L new every batch) with symbolic shapes was tried:
  dynamo still specialises N = 1 and L = 1 (in the backward too, also with size-oblivious
  shapes; unbacked sizes fail in the layer), so a layer reached 6 variants on
  ``configs/bench_large.yaml``, three of them compiled mid-run, and the trainer ran at 0.23x
  eager (benchmarks/results/compile.md).
* ``fusion``, ``towers``, ``loss_fn``, whole.

A module compiles at its first call, again for every variant of its guards (train / eval mode,
grad / no-grad, under autocast or not; a new batch size, such as an eval set's last batch:
symbolic from then on under ``dynamic: null``), and at most
``torch._dynamo.config.recompile_limit`` times per code object, after which dynamo runs it
eagerly. Under DistributedModelParallel the dense parameters sit in a DDP wrapper around the
whole model; the compiled modules run inside DDP's forward, where dynamo's DDPOptimizer splits
their graphs at DDP's gradient-bucket boundaries (one bucket for these model sizes) and DDP's
C++ reducer all-reduces the gradients as in eager training.

Nothing here knows about ranks or files; the trainer calls :func:`compile_dense` once, after
the model is wrapped and before the first step.
"""

from __future__ import annotations


import torch
from torch import nn

from fusionrec.models.dtrn import DTRN
from fusionrec.models.multitask import MultiTaskModel
from fusionrec.pipeline.config import CompileConfig


def multitask_model(model: nn.Module) -> MultiTaskModel:
    """The MultiTaskModel inside ``model`` (itself, or under DistributedModelParallel / DDP)."""
    inner = model
    while not isinstance(inner, MultiTaskModel):
        if not hasattr(inner, "module"):
            raise TypeError(f"no MultiTaskModel inside {type(model).__name__}")
        inner = inner.module
    return inner


def tim_runs_per_length(bottom: nn.Module, device: torch.device) -> bool:
    """Whether ``bottom`` is a DTRN whose TIM takes the per-length path on ``device`` (the rule
    of ``TaskInterestModule.encode``: its ``per_length``, or CPU when that is None)."""
    if not isinstance(bottom, DTRN) or bottom.tim is None:
        return False
    per_length = bottom.tim.per_length
    return device.type == "cpu" if per_length is None else bool(per_length)


def dense_modules(model: MultiTaskModel, device: torch.device) -> list[tuple[str, nn.Module]]:
    """(name in the model, module) of every module :func:`compile_dense` compiles, in call order."""
    bottom = model.bottom
    if tim_runs_per_length(bottom, device):
        out = [("bottom.tim.hyper", bottom.tim.hyper), ("bottom.trm", bottom.trm)]
    else:
        out = [("bottom", bottom)]
    return out + [("fusion", model.fusion), ("towers", model.towers), ("loss_fn", model.loss_fn)]


def compile_dense(model: nn.Module, cfg: CompileConfig, device: torch.device) -> str:
    """Compile the dense submodules of the MultiTaskModel in ``model`` in place (lazily: each
    compiles at its first call). Returns a one-line summary for the job's log.

    Args:
        model: a MultiTaskModel, or DistributedModelParallel / DDP around one.
        cfg: ``train.compile`` (``enabled`` is the caller's test; this compiles regardless).
        device: where the dense part runs (decides DTRN's per-length path).
    """
    inner = multitask_model(model)
    modules = dense_modules(inner, device)
    mode = cfg.mode if cfg.backend == "inductor" else None
    for _, module in modules:
        module.compile(backend=cfg.backend, mode=mode, dynamic=cfg.dynamic)
    names = ", ".join(name for name, _ in modules)
    how = f"{cfg.backend}" + (f" mode={cfg.mode}" if mode else "") + f" dynamic={cfg.dynamic}"
    return f"torch.compile ({how}) of the dense part: {names}; embeddings and the pipeline stay eager"


def compile_stats(model: nn.Module, device: torch.device) -> dict:
    """What dynamo compiled in this process so far: ``frames`` (every compile, recompiles
    included), ``graphs`` (graphs handed to the backend), ``graph_breaks``, and per compiled
    module the number of compiled ``variants`` of its forward (one per guard set; modules of one
    class would share them). ``recompiles`` = Σ (variants − 1)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list  # noqa: PLC0415
    from torch._dynamo.utils import counters  # noqa: PLC0415

    modules = dense_modules(multitask_model(model), device)
    variants = {name: len(_debug_get_cache_entry_list(type(m).forward.__code__)) for name, m in modules}
    by_code = {type(m).forward.__code__: variants[name] for name, m in modules}
    return {
        "frames": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "variants": variants,
        "recompiles": sum(max(n - 1, 0) for n in by_code.values()),
    }
