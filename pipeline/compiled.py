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
  its hypernetwork, each encoder layer and its TRM. The length-bucket plan between them reads
  the lengths on the host (``.tolist()``) and gathers a different number of rows per bucket in
  every batch; compiled, that is a graph break per bucket, a resume function per break and a
  recompile per bucket layout, past dynamo's recompile limit within a few batches. So the plan,
  the gathers, the pooling and the scatter stay eager, and the encoder layers, whose inputs
  [1, 1, N, L, D] change N and L every batch, are compiled with symbolic shapes from the start
  (``dynamic: null``; ``dynamic: false`` forces static ones).
* ``fusion``, ``towers``, ``loss_fn``, whole.

A module compiles at its first call, again for every variant of its guards (train / eval mode,
grad / no-grad, a key mask or none, under autocast or not), and at most
``torch._dynamo.config.recompile_limit`` times per code object, after which dynamo runs it
eagerly. Under DistributedModelParallel the dense parameters sit in a DDP wrapper around the
whole model; the compiled modules run inside DDP's forward, where dynamo's DDPOptimizer splits
their graphs at DDP's gradient-bucket boundaries (one bucket for these model sizes) and DDP's
C++ reducer all-reduces the gradients as in eager training.

Nothing here knows about ranks or files; the trainer calls :func:`compile_dense` once, after
the model is wrapped and before the first step.
"""

from __future__ import annotations

from typing import Optional

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


def dense_modules(
    model: MultiTaskModel, device: torch.device, dynamic: Optional[bool]
) -> list[tuple[str, nn.Module, Optional[bool]]]:
    """(name in the model, module, ``dynamic`` for it) of every module :func:`compile_dense`
    compiles, in call order."""
    out: list[tuple[str, nn.Module, Optional[bool]]] = []
    bottom = model.bottom
    if tim_runs_per_length(bottom, device):
        tim = bottom.tim
        out.append(("bottom.tim.hyper", tim.hyper, dynamic))
        layer_dynamic = True if dynamic is None else dynamic
        out += [(f"bottom.tim.layers.{i}", layer, layer_dynamic) for i, layer in enumerate(tim.layers)]
        out.append(("bottom.trm", bottom.trm, dynamic))
    else:
        out.append(("bottom", bottom, dynamic))
    out += [("fusion", model.fusion, dynamic), ("towers", model.towers, dynamic), ("loss_fn", model.loss_fn, dynamic)]
    return out


def compile_dense(model: nn.Module, cfg: CompileConfig, device: torch.device) -> str:
    """Compile the dense submodules of the MultiTaskModel in ``model`` in place (lazily: each
    compiles at its first call). Returns a one-line summary for the job's log.

    Args:
        model: a MultiTaskModel, or DistributedModelParallel / DDP around one.
        cfg: ``train.compile`` (``enabled`` is the caller's test; this compiles regardless).
        device: where the dense part runs (decides DTRN's per-length path).
    """
    inner = multitask_model(model)
    modules = dense_modules(inner, device, cfg.dynamic)
    mode = cfg.mode if cfg.backend == "inductor" else None
    for _, module, dynamic in modules:
        module.compile(backend=cfg.backend, mode=mode, dynamic=dynamic)
    names = ", ".join(name for name, _, _ in modules)
    how = f"{cfg.backend}" + (f" mode={cfg.mode}" if mode else "") + f" dynamic={cfg.dynamic}"
    return f"torch.compile ({how}) of the dense part: {names}; embeddings and the pipeline stay eager"


def compile_stats(model: nn.Module, device: torch.device) -> dict:
    """What dynamo compiled in this process so far: ``frames`` (every compile, recompiles
    included), ``graphs`` (graphs handed to the backend), ``graph_breaks``, and per compiled
    module the number of compiled ``variants`` of its forward (one per guard set; modules of one
    class, such as the encoder layers, share them). ``recompiles`` = Σ (variants − 1)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list  # noqa: PLC0415
    from torch._dynamo.utils import counters  # noqa: PLC0415

    modules = dense_modules(multitask_model(model), device, None)
    variants = {name: len(_debug_get_cache_entry_list(type(m).forward.__code__)) for name, m, _ in modules}
    by_code = {type(m).forward.__code__: variants[name] for name, m, _ in modules}
    return {
        "frames": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "variants": variants,
        "recompiles": sum(max(n - 1, 0) for n in by_code.values()),
    }
