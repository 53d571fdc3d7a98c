"""AdaTT: Adaptive Task-to-Task fusion (Li et al., KDD 2023, arXiv 2304.04959).

Each fusion level l holds, per task t, m_t experts that read only task t's output of the
previous level (eq. 4), and (``adatt``) m_s shared experts reading the shared unit's output.
With E the stack of all N experts of the level, task t's output is (eqs. 9–11)

    f_t = Σ_j v_{t,j} E_{t,j}  +  Σ_i g_{t,i} E_i,      g_t = softmax(W_t x_t + b_t) ∈ Δ^N
          └ NativeExpertLF ┘     └ AllExpertGF ┘

computed in the fused form f_t = (g_t + ṽ_t)ᵀ E, ṽ_t being v_t placed at task t's own experts
and zero elsewhere. When m_t = 1, v_t is fixed to 1 (a unit residual, not a parameter). The
shared unit fuses all experts by its gate only (no native term); at the last level its output
is not needed, so it has no gate there.

Notation: B batch, T tasks, N experts of a level, d expert dim.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from models.config import AdaTTConfig
from models.layers import GroupedLinear, activation_fn


class AdaTTLevel(nn.Module):
    """One fusion level.

    Experts are single ``Linear → activation`` layers. Expert columns are ordered task 0's
    experts, task 1's, …, then the shared experts. With equal m_t the task experts of all tasks
    are one grouped linear; with unequal m_t they are computed by a loop over tasks
    (one ``nn.Linear`` each) — construction-time structure, no data-dependent control flow.
    """

    def __init__(
        self,
        num_tasks: int,
        in_dim: int,
        out_dim: int,
        experts_per_task: Sequence[int],
        shared_experts: int,
        fuse_shared: bool,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(experts_per_task) != num_tasks or min(experts_per_task) < 1:
            raise ValueError(f"need one expert count >= 1 per task, got {list(experts_per_task)}")
        if fuse_shared and shared_experts < 1:
            raise ValueError("a shared fusion unit needs at least one shared expert")
        self.num_tasks, self.out_dim = num_tasks, out_dim
        self.experts_per_task = list(experts_per_task)
        self.shared_experts = shared_experts
        self.fuse_shared = fuse_shared
        self.num_task_experts = sum(self.experts_per_task)
        self.num_experts = self.num_task_experts + shared_experts
        self._act = activation_fn(activation)

        self.uniform = len(set(self.experts_per_task)) == 1
        if self.uniform:
            self.task_experts = GroupedLinear(num_tasks, in_dim, self.experts_per_task[0] * out_dim)
        else:
            self.task_experts = nn.ModuleList(nn.Linear(in_dim, m * out_dim) for m in self.experts_per_task)
        self.shared_expert_layer = nn.Linear(in_dim, shared_experts * out_dim) if shared_experts else None
        self.task_gates = GroupedLinear(num_tasks, in_dim, self.num_experts)
        self.shared_gate = nn.Linear(in_dim, self.num_experts) if fuse_shared else None

        # NativeExpertLF weights ṽ [T, N] = Σ_j native[j] · placement[j] + fixed.
        starts = [sum(self.experts_per_task[:t]) for t in range(num_tasks)]
        learned = [(t, starts[t] + j) for t, m in enumerate(self.experts_per_task) if m > 1 for j in range(m)]
        placement = torch.zeros(len(learned), num_tasks, self.num_experts)
        for i, (t, col) in enumerate(learned):
            placement[i, t, col] = 1.0
        fixed = torch.zeros(num_tasks, self.num_experts)
        for t, m in enumerate(self.experts_per_task):
            if m == 1:
                fixed[t, starts[t]] = 1.0
        self.register_buffer("native_placement", placement, persistent=False)
        self.register_buffer("native_fixed", fixed, persistent=False)
        init = [1.0 / self.experts_per_task[t] for t, _ in learned]
        self.native = nn.Parameter(torch.tensor(init)) if learned else None
        # owner[n] = index of the unit owning expert n (T for the shared unit); for fusion_matrix.
        owner = [t for t, m in enumerate(self.experts_per_task) for _ in range(m)] + [num_tasks] * shared_experts
        self.register_buffer(
            "expert_owner", torch.nn.functional.one_hot(torch.tensor(owner), num_tasks + 1).float(), persistent=False
        )

    def native_weights(self) -> torch.Tensor:
        """ṽ [T, N]: each task's NativeExpertLF weights over its own experts, zero elsewhere."""
        if self.native is None:
            return self.native_fixed
        return torch.einsum("j,jtn->tn", self.native, self.native_placement) + self.native_fixed

    def experts(self, x: torch.Tensor, shared: Optional[torch.Tensor]) -> torch.Tensor:
        """x [B, T, in], shared [B, in] or None → E [B, N, d]."""
        d = self.out_dim
        if self.uniform:
            task = self.task_experts(x).reshape(x.shape[0], self.num_task_experts, d)
        else:
            per_task = zip(self.task_experts, self.experts_per_task)
            task = torch.cat([layer(x[:, t]).view(-1, m, d) for t, (layer, m) in enumerate(per_task)], dim=1)
        parts = [task]
        if self.shared_expert_layer is not None:
            parts.append(self.shared_expert_layer(shared).view(-1, self.shared_experts, d))
        return self._act(torch.cat(parts, dim=1) if len(parts) > 1 else task)

    def gates(self, x: torch.Tensor, shared: Optional[torch.Tensor]) -> torch.Tensor:
        """AllExpertGF gates g [B, R, N] (rows: tasks, then the shared unit when it fuses);
        each row is a softmax over all N experts."""
        logits = self.task_gates(x)
        if self.shared_gate is not None:
            logits = torch.cat([logits, self.shared_gate(shared).unsqueeze(1)], dim=1)
        return torch.softmax(logits, dim=-1)

    def combine(self, gates: torch.Tensor, experts: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Fused eq. 11: (g + ṽ)ᵀ E → task outputs [B, T, d] and shared output [B, d] or None."""
        native = self.native_weights()
        if self.fuse_shared:
            native = torch.cat([native, native.new_zeros(1, self.num_experts)], dim=0)
        out = torch.einsum("brn,bnd->brd", gates + native, experts)
        if self.fuse_shared:
            return out[:, : self.num_tasks], out[:, self.num_tasks]
        return out, None

    def forward(
        self, x: torch.Tensor, shared: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x [B, T, in], shared [B, in] or None → ([B, T, d], [B, d] or None)."""
        return self.combine(self.gates(x, shared), self.experts(x, shared))


class AdaTT(nn.Module):
    """Stack of fusion levels. Input [B, T, D_in] (task t's bottom in row t), output
    [B, T, expert_dims[-1]].

    ``adatt``: the shared unit's level-1 input is the mean over tasks of the per-task inputs
    (the paper feeds one shared bottom to every unit; with task-specific bottoms the mean is
    the task-neutral summary). ``adatt_sp``: no shared unit.
    """

    def __init__(self, num_tasks: int, in_dim: int, cfg: AdaTTConfig) -> None:
        super().__init__()
        m: Union[int, list[int]] = cfg.experts_per_task
        experts_per_task = [m] * num_tasks if isinstance(m, int) else list(m)
        if len(experts_per_task) != num_tasks:
            raise ValueError(f"experts_per_task lists {len(experts_per_task)} counts for {num_tasks} tasks")
        self.with_shared = cfg.type == "adatt"
        shared = cfg.shared_experts if self.with_shared else 0
        if self.with_shared and shared < 1:
            raise ValueError("adatt needs shared_experts >= 1 (use adatt_sp for task experts only)")
        self.num_tasks = num_tasks
        self.out_dim = cfg.expert_dims[-1]
        dims = [in_dim, *cfg.expert_dims]
        last = len(cfg.expert_dims) - 1
        self.levels = nn.ModuleList(
            AdaTTLevel(
                num_tasks,
                dims[i],
                dims[i + 1],
                experts_per_task,
                shared,
                fuse_shared=self.with_shared and i < last,
                activation=cfg.activation,
            )
            for i in range(len(cfg.expert_dims))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D_in] → [B, T, expert_dims[-1]]."""
        shared = x.mean(dim=1) if self.with_shared else None
        for level in self.levels:
            x, shared = level(x, shared)
        return x

    @torch.no_grad()
    def gate_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """For introspection: each level's gates [B, R_l, N_l] on input x [B, T, D_in]."""
        out = []
        shared = x.mean(dim=1) if self.with_shared else None
        for level in self.levels:
            gates = level.gates(x, shared)
            out.append(gates)
            x, shared = level.combine(gates, level.experts(x, shared))
        return out

    @torch.no_grad()
    def fusion_matrix(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per level, the batch-mean gate mass [R_l, U] that unit r (row: task, then shared
        when it fuses) puts on the experts of unit u (column: tasks, then shared when present).
        Rows sum to 1. Gate (AllExpertGF) mass only; the native term is not included."""
        units = self.num_tasks + int(self.with_shared)
        return [
            (g.mean(dim=0) @ level.expert_owner)[:, :units] for g, level in zip(self.gate_weights(x), self.levels)
        ]
