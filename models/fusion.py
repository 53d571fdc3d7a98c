"""The fusion module named by ``model.fusion.type``."""

from __future__ import annotations

from fusionrec.models.adatt import AdaTT
from fusionrec.models.baselines import PLE, CrossStitch, MMoE, SharedBottomFusion
from fusionrec.models.config import (
    AdaTTConfig,
    CrossStitchConfig,
    FusionConfig,
    MMoEConfig,
    PLEConfig,
    SharedBottomFusionConfig,
)
from fusionrec.models.experts import FusionModule

_FUSIONS = {
    AdaTTConfig: AdaTT,
    PLEConfig: PLE,
    MMoEConfig: MMoE,
    CrossStitchConfig: CrossStitch,
    SharedBottomFusionConfig: SharedBottomFusion,
}


def build_fusion(num_tasks: int, in_dim: int, cfg: FusionConfig, identical_rows: bool = False) -> FusionModule:
    """Fusion for ``num_tasks`` tasks over per-task inputs [B, T, in_dim].

    ``identical_rows``: the bottom gives every task the same row (the shared bottom), so
    task-neutral parts read that row instead of averaging T copies of it.
    """
    try:
        cls = _FUSIONS[type(cfg)]
    except KeyError:
        raise ValueError(f"unknown fusion config {cfg!r}") from None
    return cls(num_tasks, in_dim, cfg, identical_rows=identical_rows)
