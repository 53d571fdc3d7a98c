"""Optimizers named in the config, as TorchRec wants them: sparse ones as a class plus kwargs
for ``apply_optimizer_in_backward``, dense ones as a factory for ``KeyedOptimizerWrapper``."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torchrec.optim import RowWiseAdagrad

from pipeline.config import OptimizerConfig

_DENSE = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def _kwargs(cfg: OptimizerConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.type != "sgd":
        kwargs["eps"] = cfg.eps
    return kwargs


def sparse_optimizer(cfg: OptimizerConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """(optimizer class, kwargs) to fuse into the embedding kernels' backward."""
    cls = RowWiseAdagrad if cfg.type == "rowwise_adagrad" else _DENSE[cfg.type]
    return cls, _kwargs(cfg)


def dense_optimizer_factory(cfg: OptimizerConfig) -> Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]:
    cls, kwargs = _DENSE[cfg.type], _kwargs(cfg)
    return lambda params: cls(params, **kwargs)
