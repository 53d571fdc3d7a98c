"""Model hyperparameters, as declared under ``model:`` in the experiment YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

Activation = Literal["relu", "gelu", "silu"]


@dataclass
class SharedBottomConfig:
    """Every task reads the same concatenation of field embeddings (no task-specific bottom)."""

    type: Literal["shared"] = "shared"


@dataclass
class DTRNConfig:
    """DTRN task-specific bottom (Liu et al., CIKM 2023): TIM + TRM.

    All tables read by DTRN must share one embedding dim D.
    """

    type: Literal["dtrn"] = "dtrn"
    condition_dim: int = 8  # size of each task and behaviour-type embedding fed to the hypernetwork
    hyper_hidden: int = 32  # hidden width of the hypernetwork that emits conditional-LN γ/β
    num_layers: int = 1  # Transformer encoder layers (attention/FFN weights shared by all tasks/types)
    num_heads: int = 2
    ffn_dim: int = 64
    pooling: Literal["target", "mean"] = "target"
    target_feature: Optional[str] = None  # candidate-item feature for target attention
    trm_hidden: int = 64  # hidden width of each task's SENet-like refinement network
    position_embedding: bool = True  # add a learned recency-position embedding to sequence items

    def __post_init__(self) -> None:
        if self.pooling == "target" and self.target_feature is None:
            raise ValueError("pooling 'target' needs target_feature (the candidate item feature)")


@dataclass
class AdaTTConfig:
    """AdaTT fusion (Li et al., KDD 2023). ``adatt_sp``: task experts only;
    ``adatt``: plus ``shared_experts`` in a shared fusion unit."""

    type: Literal["adatt", "adatt_sp"] = "adatt"
    expert_dims: list[int] = field(default_factory=lambda: [64, 32])  # one entry per fusion level
    experts_per_task: Union[int, list[int]] = 2  # m_t, one int for all tasks or one per task
    shared_experts: int = 1  # m_s (ignored by adatt_sp)
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        if not self.expert_dims:
            raise ValueError("expert_dims needs at least one fusion level")


FusionConfig = AdaTTConfig
BottomConfig = Union[DTRNConfig, SharedBottomConfig]


@dataclass
class ModelConfig:
    """A bottom, a fusion module and per-task towers."""

    bottom: BottomConfig = field(default_factory=SharedBottomConfig)
    fusion: FusionConfig = field(default_factory=AdaTTConfig)
    tower_dims: list[int] = field(default_factory=lambda: [32])
    activation: Activation = "relu"

    @property
    def name(self) -> str:
        return f"{self.bottom.type}+{self.fusion.type}"
