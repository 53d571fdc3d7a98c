"""Model hyperparameters, as declared under ``model:`` in the experiment YAML.

``model.bottom`` and ``model.fusion`` are tagged unions, chosen by their ``type`` key:

* bottom: ``shared`` (every task reads the same concatenated embeddings) or ``dtrn``.
* fusion: ``shared_bottom``, ``mmoe``, ``ml_mmoe``, ``ple``, ``cross_stitch``, ``adatt``,
  ``adatt_sp``.

Fusion levels are given by ``expert_dims``, one entry per level: an int (each expert of that
level is one ``Linear → activation`` layer of that width) or a list of ints (each expert is an
MLP with those widths, the activation after every layer). ``[128, 64]`` is two levels of
one-layer experts; ``[[128, 64]]`` is one level of two-layer experts. docs/models.md shows a
YAML example per fusion type and how one expert budget maps onto each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

Activation = Literal["relu", "gelu", "silu"]
LevelDims = Union[int, list[int]]


def level_dims(expert_dims: list[LevelDims]) -> list[list[int]]:
    """``expert_dims`` with every level as a list of layer widths (``64`` → ``[64]``)."""
    return [[d] if isinstance(d, int) else list(d) for d in expert_dims]


def _check_levels(expert_dims: list[LevelDims], what: str = "expert_dims") -> None:
    if not expert_dims:
        raise ValueError(f"{what} needs at least one fusion level")
    for i, dims in enumerate(level_dims(expert_dims)):
        if not dims or min(dims) < 1:
            raise ValueError(f"{what}[{i}] must be a positive width or a non-empty list of them, got {dims}")


def _check_counts(counts: Union[int, list[int]], what: str) -> None:
    values = [counts] if isinstance(counts, int) else counts
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be >= 1 (one int, or one count per task), got {counts}")


# --------------------------------------------------------------------------------- bottoms


@dataclass
class SharedBottomConfig:
    """Every task reads the same concatenation of field embeddings (no task-specific bottom)."""

    type: Literal["shared"] = "shared"  #: selects this bottom


@dataclass
class DTRNConfig:
    """DTRN task-specific bottom (Liu et al., CIKM 2023): TIM + TRM.

    All tables read by DTRN must share one embedding dim D.
    """

    #: selects this bottom
    type: Literal["dtrn"] = "dtrn"
    #: size of each task and behaviour-type embedding fed to the hypernetwork (>= 1)
    condition_dim: int = 8
    #: hidden width of the hypernetwork that emits conditional-LN γ/β (>= 1)
    hyper_hidden: int = 32
    #: Transformer encoder layers, their attention/FFN weights shared by all tasks and types (>= 0)
    num_layers: int = 1
    #: attention heads (>= 1); must divide the embedding dim
    num_heads: int = 2
    #: hidden width of the Transformer's feed-forward layer (>= 1)
    ffn_dim: int = 64
    #: target: attention against the candidate item; mean: masked mean of the sequence
    pooling: Literal["target", "mean"] = "target"
    #: the candidate-item feature for target pooling (a sparse feature on a sequence table)
    target_feature: Optional[str] = None
    #: TRM: senet squeezes each field to its mean, excites over the F scalars; context excites over all F·D values
    trm_form: Literal["senet", "context"] = "senet"
    #: hidden width of each task's TRM excitation MLP (>= 1)
    trm_hidden: int = 64
    # TRM field weights are s · sigmoid(·). senet: s = 1, SENet's sigmoid; context: s = 2 centres
    # an untrained TRM at weight 1 (fields pass at their own scale, amplified or damped).
    #: the scale s of TRM's field weights s · sigmoid(·) (> 0); null: 1 for senet, 2 for context
    trm_gate_scale: Optional[float] = None
    #: add a learned recency-position embedding to sequence items
    position_embedding: bool = True

    def __post_init__(self) -> None:
        if self.pooling == "target" and self.target_feature is None:
            raise ValueError("pooling 'target' needs target_feature (the candidate item feature)")
        if min(self.condition_dim, self.hyper_hidden, self.num_heads, self.ffn_dim, self.trm_hidden) < 1:
            raise ValueError("condition_dim, hyper_hidden, num_heads, ffn_dim and trm_hidden must be >= 1")
        if self.num_layers < 0:
            raise ValueError("num_layers must be >= 0")
        if self.trm_gate_scale is not None and self.trm_gate_scale <= 0:
            raise ValueError("trm_gate_scale must be > 0")

    @property
    def trm_scale(self) -> float:
        """The TRM weight scale s: ``trm_gate_scale``, or the form's default (senet 1, context 2)."""
        if self.trm_gate_scale is not None:
            return float(self.trm_gate_scale)
        return 1.0 if self.trm_form == "senet" else 2.0


BottomConfig = Union[DTRNConfig, SharedBottomConfig]


# --------------------------------------------------------------------------------- fusions


@dataclass
class SharedBottomFusionConfig:
    """Shared-Bottom MTL (Caruana 1997): one MLP, shared by all tasks, below the towers.

    Each task's input row goes through the same MLP (with a shared bottom the rows are equal
    and the MLP runs once). ``hidden_dims: []`` makes it the identity.
    """

    #: selects this fusion
    type: Literal["shared_bottom"] = "shared_bottom"
    #: layer widths of the shared MLP ([]: the identity)
    hidden_dims: list[int] = field(default_factory=lambda: [64, 32])
    #: activation after every layer
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        if self.hidden_dims and min(self.hidden_dims) < 1:
            raise ValueError(f"hidden_dims must be positive, got {self.hidden_dims}")


@dataclass
class MMoEConfig:
    """MMoE (Ma et al., KDD 2018) and its multi-level form ML-MMoE.

    ``mmoe``: one level (``expert_dims`` has exactly one entry, e.g. ``[[128, 64]]``).
    ``ml_mmoe``: several levels; below the last one, every expert of the next level has its own
    gate over this level's experts. ``num_experts``: per level, one int for all levels or one
    per level.
    """

    #: mmoe: exactly one fusion level; ml_mmoe: one or more
    type: Literal["mmoe", "ml_mmoe"] = "mmoe"
    #: one entry per fusion level: an expert's width, or a list of its layer widths
    expert_dims: list[LevelDims] = field(default_factory=lambda: [[64, 32]])
    #: experts per level: one count for every level, or one per level
    num_experts: Union[int, list[int]] = 4
    #: activation after every expert layer
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        _check_levels(self.expert_dims)
        if self.type == "mmoe" and len(self.expert_dims) != 1:
            raise ValueError(
                f"mmoe has one fusion level, got {len(self.expert_dims)} in expert_dims; give its experts "
                "several layers as one entry (e.g. [[128, 64]]) or use type ml_mmoe"
            )
        _check_counts(self.num_experts, "num_experts")
        if isinstance(self.num_experts, list) and len(self.num_experts) != len(self.expert_dims):
            raise ValueError(f"num_experts lists {len(self.num_experts)} counts for {len(self.expert_dims)} levels")

    def experts_at(self, level: int) -> int:
        return self.num_experts if isinstance(self.num_experts, int) else self.num_experts[level]


@dataclass
class PLEConfig:
    """PLE (Tang et al., RecSys 2020): per level, ``experts_per_task`` task experts per task
    (one int, or one per task) and ``shared_experts`` shared ones; one level is CGC."""

    #: selects this fusion
    type: Literal["ple"] = "ple"
    #: one entry per fusion level: an expert's width, or a list of its layer widths
    expert_dims: list[LevelDims] = field(default_factory=lambda: [64, 32])
    #: task experts per task at every level: one count, or one per task
    experts_per_task: Union[int, list[int]] = 1
    #: shared experts per level (>= 1)
    shared_experts: int = 1
    #: activation after every expert layer
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        _check_levels(self.expert_dims)
        _check_counts(self.experts_per_task, "experts_per_task")
        if self.shared_experts < 1:
            raise ValueError("ple needs shared_experts >= 1 (without them the tasks would not share anything)")


@dataclass
class CrossStitchConfig:
    """Cross-stitch (Misra et al., CVPR 2016): one column per task per level, mixed by a
    learned T×T stitch matrix after every level, initialised to ``self_weight`` on the
    diagonal and ``(1 - self_weight) / (T - 1)`` elsewhere (the paper's 0.9 / 0.1 for T = 2)."""

    #: selects this fusion
    type: Literal["cross_stitch"] = "cross_stitch"
    #: one entry per fusion level: a column's width, or a list of its layer widths
    expert_dims: list[LevelDims] = field(default_factory=lambda: [64, 32])
    #: initial diagonal of every stitch matrix
    self_weight: float = 0.9
    #: activation after every column layer
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        _check_levels(self.expert_dims)


@dataclass
class AdaTTConfig:
    """AdaTT fusion (Li et al., KDD 2023).

    ``adatt_sp``: task experts only. ``adatt``: plus ``shared_experts`` (default 1) in a shared
    fusion unit; ``adatt_sp`` takes no shared experts. ``experts_per_task``: m_t, one int or
    one per task. ``native_residual``: the task units add NativeExpertLF (eq. 8) over their own
    experts; false is the paper's Table 6 ablation (AllExpertGF only). ``shared_residual``: the
    shared unit adds NativeExpertLF over its own experts like the task units (as in the
    authors' release); false makes it gate-only. The NativeExpertLF weights v are learned
    unless every unit (tasks and shared) has exactly one expert, where v ≡ 1 (eq. 8).
    """

    #: adatt: task experts plus a shared fusion unit; adatt_sp: task experts only
    type: Literal["adatt", "adatt_sp"] = "adatt"
    #: one entry per fusion level: an expert's width, or a list of its layer widths
    expert_dims: list[LevelDims] = field(default_factory=lambda: [64, 32])
    #: task experts per task (m_t) at every level: one count, or one per task
    experts_per_task: Union[int, list[int]] = 2
    #: experts of the shared unit (adatt only, >= 1); null: 1 for adatt, none for adatt_sp
    shared_experts: Optional[int] = None
    #: the task units add NativeExpertLF over their own experts (eq. 8); false: the paper's Table 6 ablation
    native_residual: bool = True
    #: the shared unit adds NativeExpertLF over its own experts; false: gate only
    shared_residual: bool = True
    #: activation after every expert layer
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        _check_levels(self.expert_dims)
        _check_counts(self.experts_per_task, "experts_per_task")
        if self.type == "adatt_sp" and self.shared_experts:
            raise ValueError("adatt_sp has no shared experts; use type adatt for a shared fusion unit")
        if self.type == "adatt" and self.shared_experts is not None and self.shared_experts < 1:
            raise ValueError("adatt needs shared_experts >= 1 (use adatt_sp for task experts only)")

    @property
    def num_shared(self) -> int:
        if self.type == "adatt_sp":
            return 0
        return 1 if self.shared_experts is None else self.shared_experts


FusionConfig = Union[
    AdaTTConfig, PLEConfig, MMoEConfig, CrossStitchConfig, SharedBottomFusionConfig
]


@dataclass
class ModelConfig:
    """A bottom, a fusion module and per-task towers."""

    #: what every task reads from the embeddings: shared or dtrn
    bottom: BottomConfig = field(default_factory=SharedBottomConfig)
    #: the multi-task fusion between the bottom and the towers
    fusion: FusionConfig = field(default_factory=AdaTTConfig)
    #: hidden widths of each task's tower; a linear logit layer follows
    tower_dims: list[int] = field(default_factory=lambda: [32])
    #: activation of the towers and of DTRN (each fusion has its own)
    activation: Activation = "relu"

    @property
    def name(self) -> str:
        return f"{self.bottom.type}+{self.fusion.type}"
