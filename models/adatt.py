"""AdaTT: Adaptive Task-to-Task fusion (Li et al., KDD 2023, arXiv 2304.04959).

Notation: T tasks, level l = 1..L, f_t^{l-1} task t's input to level l (f_t^0 = x_t, task t's
bottom row), e the experts (MLPs, activation after every layer), φ the activation.

Per level, task t owns m_t *native* experts that read only its own previous output (eq. 4):

    E_{t,j} = e_{t,j}(f_t^{l-1}),        E = [E_1; …; E_T (; E_s)] ∈ R^{N×d}  (eqs. 5–6)

and its fusion unit outputs (eq. 7)

    f_t^l = AllExpertGF_t + NativeExpertLF_t
    NativeExpertLF_t = Σ_j v_{t,j} E_{t,j}                  (eq. 8)
    AllExpertGF_t    = Σ_i g_{t,i} E_i,  g_t = softmax(W_t f_t^{l-1} + b_t) ∈ Δ^N  (eqs. 9–10)

with v_t ∈ R^{m_t} learned, except when every unit has one expert (m_1 = … = m_T (= m_s) = 1),
where the paper fixes v_t = 1 and there is no parameter. ``native_residual: false`` drops
NativeExpertLF from the task units (the paper's Table 6 ablation).

computed in the fused form of eq. 11, ``f_t = (g_t + ṽ_t)ᵀ E`` for all tasks at once, ṽ_t being
v_t placed at task t's own experts and zero elsewhere: one batched matmul per level.

``adatt_sp`` has task units only. ``adatt`` adds a shared fusion unit with m_s shared experts
reading its own previous output f_s^{l-1}; its gate spans all N experts, and (by default,
``shared_residual``) it adds NativeExpertLF over the shared experts like a task unit. At the
last level no tower reads f_s, so the shared unit does no fusion there (no gate, no residual);
its experts still feed the task gates.

Choices the paper leaves open (see docs/models.md):

* f_s^0: the mean over tasks of the per-task inputs (the paper feeds one shared bottom to every
  unit; with task-specific bottoms the mean is the task-neutral summary, and with a shared
  bottom it is that bottom).
* Learned v_t starts at 1/m_t, so at initialisation NativeExpertLF_t is the mean of task t's
  own experts and f_t = Σ_i g_{t,i} E_i + (1/m_t) Σ_j E_{t,j} (for m_t = 1: exactly the fixed
  v = 1 model). The authors' release draws v_t from U(±√(1/m_t)) instead, which for m_t = 1 is
  a scalar in (-1, 1) that may start negative and cancel part of the native expert; the
  deterministic 1/m_t keeps the residual a residual at the start, equals the fixed-1 model at
  m_t = 1, and draws nothing from the RNG (a seed gives the other parameters the same values
  whether v is learned or fixed).
* Gates have a bias; expert outputs are post-activation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fusionrec.models.config import AdaTTConfig, level_dims
from fusionrec.models.experts import (
    ExpertBank,
    FusionModule,
    GateBank,
    combine,
    expert_names,
    run_gated_levels,
    task_summary,
    unit_names,
)


class AdaTTLevel(nn.Module):
    """One fusion level.

    Input ``units`` [B, U, in]: rows 0..T-1 the task units' previous outputs, row T the shared
    unit's (``adatt``). Experts are ordered task 0's, task 1's, …, then the shared ones.
    Output [B, R, d] with R = T + 1 when the shared unit fuses here, else T.
    """

    def __init__(
        self,
        num_tasks: int,
        in_dim: int,
        dims: Sequence[int],
        experts_per_task: Sequence[int],
        shared_experts: int,
        fuse_shared: bool,
        shared_residual: bool = True,
        activation: str = "relu",
        native_residual: bool = True,
    ) -> None:
        super().__init__()
        if len(experts_per_task) != num_tasks or min(experts_per_task) < 1:
            raise ValueError(f"need one expert count >= 1 per task, got {list(experts_per_task)}")
        if fuse_shared and shared_experts < 1:
            raise ValueError("a shared fusion unit needs at least one shared expert")
        self.num_tasks, self.out_dim = num_tasks, int(dims[-1])
        self.experts_per_task, self.shared_experts = list(experts_per_task), shared_experts
        self.fuse_shared = fuse_shared
        counts = self.experts_per_task + ([shared_experts] if shared_experts else [])  # per unit
        owners = [u for u, m in enumerate(counts) for _ in range(m)]
        self.num_experts = len(owners)
        self.num_gates = num_tasks + int(fuse_shared)

        self.experts = ExpertBank(owners, in_dim, dims, activation)
        self.gates = GateBank(self.num_gates, in_dim, self.num_experts)  # AllExpertGF: every gate spans all N

        # NativeExpertLF weights ṽ [R, N] = Σ_j native[j] · placement[j] + fixed (eq. 8): learned
        # entries for every residual unit, unless every unit owns exactly one expert, where the
        # paper fixes v = 1 (no parameter).
        residual_units = (list(range(num_tasks)) if native_residual else []) + (
            [num_tasks] if fuse_shared and shared_residual else []
        )
        starts = [sum(counts[:u]) for u in range(len(counts))]
        self.unit_native = all(c == 1 for c in counts)
        learned = [] if self.unit_native else [(u, starts[u] + j) for u in residual_units for j in range(counts[u])]
        placement = torch.zeros(len(learned), self.num_gates, self.num_experts)
        for i, (u, col) in enumerate(learned):
            placement[i, u, col] = 1.0
        fixed = torch.zeros(self.num_gates, self.num_experts)
        if self.unit_native:
            for u in residual_units:
                fixed[u, starts[u]] = 1.0
        self.register_buffer("native_placement", placement, persistent=False)
        self.register_buffer("native_fixed", fixed, persistent=False)
        init = [1.0 / counts[u] for u, _ in learned]
        self.native = nn.Parameter(torch.tensor(init)) if learned else None

    def native_weights(self) -> torch.Tensor:
        """ṽ [R, N]: each fusing unit's NativeExpertLF weights on its own experts, 0 elsewhere."""
        if self.native is None:
            return self.native_fixed
        return torch.einsum("j,jrn->rn", self.native, self.native_placement) + self.native_fixed

    def forward(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """units [B, U, in] → (fused [B, R, d], AllExpertGF gates [B, R, N])."""
        experts = self.experts(units)  # eq. 4: each expert reads its own unit's row
        gates = self.gates(units[:, : self.num_gates])  # eq. 10: gate r reads unit r's row
        return combine(gates + self.native_weights(), experts), gates  # eq. 11


class AdaTT(FusionModule):
    """AdaTT / AdaTT-sp: stacked fusion levels. x [B, T, D_in] → [B, T, d_L]."""

    def __init__(self, num_tasks: int, in_dim: int, cfg: AdaTTConfig, identical_rows: bool = False) -> None:
        super().__init__()
        m = cfg.experts_per_task
        experts_per_task = [m] * num_tasks if isinstance(m, int) else list(m)
        if len(experts_per_task) != num_tasks:
            raise ValueError(f"experts_per_task lists {len(experts_per_task)} counts for {num_tasks} tasks")
        self.num_tasks, self.identical_rows = num_tasks, identical_rows
        shared = cfg.num_shared
        self.with_shared = shared > 0
        levels = level_dims(cfg.expert_dims)
        self.out_dim = levels[-1][-1]
        ins = [in_dim] + [dims[-1] for dims in levels[:-1]]
        self.levels = nn.ModuleList(
            AdaTTLevel(
                num_tasks,
                ins[i],
                dims,
                experts_per_task,
                shared,
                fuse_shared=self.with_shared and i < len(levels) - 1,
                shared_residual=cfg.shared_residual,
                activation=cfg.activation,
                native_residual=cfg.native_residual,
            )
            for i, dims in enumerate(levels)
        )

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        units = x
        if self.with_shared:
            units = torch.cat([x, task_summary(x, self.identical_rows).unsqueeze(1)], dim=1)
        return run_gated_levels(self.levels, units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def gate_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per level, the AllExpertGF gates [B, R_l, N] (rows: tasks, then the shared unit
        where it fuses; columns: experts in unit order). Each row sums to 1."""
        return self._run(x)[1]

    def fusion_matrices(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per level, the batch-mean gate mass [R_l, U] that unit r (row: tasks, then shared where
        it fuses) puts on the experts of unit u (column: tasks, then shared). Rows sum to 1.
        AllExpertGF mass only; NativeExpertLF is input-independent (``native_weights()``)."""
        return [g.mean(dim=0) @ level.experts.owner_onehot for g, level in zip(self.gate_weights(x), self.levels)]

    def gate_labels(self, tasks: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        out = []
        for level in self.levels:
            owners = unit_names(tasks, level.experts.num_units)
            out.append((unit_names(tasks, level.num_gates), expert_names(owners, level.experts)))
        return out

    def fusion_labels(self, tasks: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        return [
            (unit_names(tasks, level.num_gates), unit_names(tasks, level.experts.num_units)) for level in self.levels
        ]

    def native_weights(self) -> list[torch.Tensor]:
        """Per level, ṽ [R_l, N]: the NativeExpertLF weights (fixed 1 when every unit has one
        expert; 0 for a unit without the residual)."""
        return [level.native_weights().detach() for level in self.levels]

