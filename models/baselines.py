"""The classic multi-task fusions, from the same expert and gate banks as AdaTT.

Every module maps per-task inputs x [B, T, D] (x_t: task t's bottom) to [B, T, d]. With the
shared bottom all rows x_t are equal and each model is exactly its paper's; with DTRN's
task-specific bottoms each model uses them as documented on its class. s denotes the
task-neutral summary ``mean_t x_t`` (= the bottom itself for a shared bottom), e an expert
(an MLP with the activation φ after every layer).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fusionrec.models.config import CrossStitchConfig, MMoEConfig, PLEConfig, SharedBottomFusionConfig, level_dims
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
from fusionrec.models.layers import MLP


def _level_inputs(in_dim: int, levels: list[list[int]]) -> list[int]:
    return [in_dim] + [dims[-1] for dims in levels[:-1]]


class SharedBottomFusion(FusionModule):
    """Shared-Bottom (Caruana 1997): ``h_t = MLP(x_t)`` with one MLP shared by all tasks.

    With a shared bottom this is the classic hard-parameter-sharing network (the MLP runs once);
    with task-specific bottoms the shared hidden layers read each task's own bottom.
    """

    def __init__(
        self, num_tasks: int, in_dim: int, cfg: SharedBottomFusionConfig, identical_rows: bool = False
    ) -> None:
        super().__init__()
        self.num_tasks, self.identical_rows = num_tasks, identical_rows
        self.mlp = MLP(in_dim, cfg.hidden_dims, cfg.activation)
        self.out_dim = self.mlp.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identical_rows:
            return self.mlp(x[:, 0]).unsqueeze(1).expand(-1, self.num_tasks, -1)
        return self.mlp(x)


class MMoE(FusionModule):
    """MMoE (Ma et al., KDD 2018) and multi-level MMoE (ML-MMoE).

    Level 1 has N_1 experts reading s; expert j of level l > 1 reads h_j^{l-1}, its own gated
    mixture of level l-1:

        E_i^1 = e_i^1(s),    E_j^l = e_j^l(h_j^{l-1})
        h_j^l = Σ_i softmax(W_j^l s + b_j^l)_i E_i^l      (below the last level: one gate per
                                                           next-level expert j = 1..N_{l+1})
        f_t   = Σ_i softmax(W_t x_t + b_t)_i E_i^L        (last level: one gate per task)

    With one level this is MMoE, ``f_t = Σ_i g_{t,i}(x_t) e_i(s)``. Every gate reads the bottom
    (s, or task t's own bottom x_t for task t's gate), as in multi-level MMoE baselines where the
    gates are conditioned on the model input.
    """

    def __init__(self, num_tasks: int, in_dim: int, cfg: MMoEConfig, identical_rows: bool = False) -> None:
        super().__init__()
        self.num_tasks, self.identical_rows = num_tasks, identical_rows
        levels = level_dims(cfg.expert_dims)
        counts = [cfg.experts_at(i) for i in range(len(levels))]
        self.experts = nn.ModuleList(
            ExpertBank([0] * counts[0] if i == 0 else range(counts[i]), d_in, dims, cfg.activation)
            for i, (d_in, dims) in enumerate(zip(_level_inputs(in_dim, levels), levels))
        )
        last = len(levels) - 1
        self.gates = nn.ModuleList(
            GateBank(counts[i + 1], in_dim, counts[i], shared_input=True) if i < last else GateBank(
                num_tasks, in_dim, counts[i]
            )
            for i in range(len(levels))
        )
        self.out_dim = levels[-1][-1]

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s = task_summary(x, self.identical_rows)
        h = s.unsqueeze(1)
        last = len(self.experts) - 1
        gates = []
        for i, (experts, gate) in enumerate(zip(self.experts, self.gates)):
            g = gate(s if i < last else x)
            h = combine(g, experts(h))
            gates.append(g)
        return h, gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def gate_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per level, gates [B, R_l, N_l]: rows are the next level's experts, or the tasks at the
        last level; columns this level's experts."""
        return self._run(x)[1]

    def gate_labels(self, tasks: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        out = []
        last = len(self.gates) - 1
        for i, gate in enumerate(self.gates):
            rows = list(tasks) if i == last else [f"L{i + 2}/{j}" for j in range(gate.num_gates)]
            out.append((rows, [f"L{i + 1}/{j}" for j in range(gate.num_experts)]))
        return out


class PLELevel(nn.Module):
    """One extraction layer: task t's m_t experts read row t, the m_s shared experts row T of
    ``units`` [B, T+1, in]; task gates span own + shared experts, the shared gate (below the
    last level only) spans all. Output [B, T(+1), d]."""

    def __init__(
        self,
        num_tasks: int,
        in_dim: int,
        dims: Sequence[int],
        experts_per_task: Sequence[int],
        shared_experts: int,
        last: bool,
        activation: str,
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        counts = [*experts_per_task, shared_experts]
        owners = [u for u, m in enumerate(counts) for _ in range(m)]
        self.experts = ExpertBank(owners, in_dim, dims, activation)
        shared = [n for n, o in enumerate(owners) if o == num_tasks]
        spans = [[n for n, o in enumerate(owners) if o == t] + shared for t in range(num_tasks)]
        self.task_gates = GateBank(num_tasks, in_dim, len(owners), spans=spans)
        self.shared_gate = None if last else GateBank(1, in_dim, len(owners))
        self.num_gates = num_tasks + int(not last)

    def forward(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        experts = self.experts(units)
        gates = self.task_gates(units[:, : self.num_tasks])
        if self.shared_gate is not None:
            gates = torch.cat([gates, self.shared_gate(units[:, self.num_tasks :])], dim=1)
        return combine(gates, experts), gates


class PLE(FusionModule):
    """PLE (Tang et al., RecSys 2020); one level is CGC.

    Per level l, with f_t^0 = x_t and f_s^0 = s:

        E_{t,j} = e_{t,j}(f_t^{l-1}),   E_{s,j} = e_{s,j}(f_s^{l-1})
        f_t^l = Σ_{i ∈ E_t ∪ E_s} softmax(W_t f_t^{l-1} + b_t)_i E_i     (task gate: own + shared)
        f_s^l = Σ_{i ∈ all}       softmax(W_s f_s^{l-1} + b_s)_i E_i     (shared gate; none at level L)
    """

    def __init__(self, num_tasks: int, in_dim: int, cfg: PLEConfig, identical_rows: bool = False) -> None:
        super().__init__()
        m = cfg.experts_per_task
        experts_per_task = [m] * num_tasks if isinstance(m, int) else list(m)
        if len(experts_per_task) != num_tasks:
            raise ValueError(f"experts_per_task lists {len(experts_per_task)} counts for {num_tasks} tasks")
        self.num_tasks, self.identical_rows = num_tasks, identical_rows
        levels = level_dims(cfg.expert_dims)
        last = len(levels) - 1
        self.levels = nn.ModuleList(
            PLELevel(num_tasks, d_in, dims, experts_per_task, cfg.shared_experts, i == last, cfg.activation)
            for i, (d_in, dims) in enumerate(zip(_level_inputs(in_dim, levels), levels))
        )
        self.out_dim = levels[-1][-1]

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        units = torch.cat([x, task_summary(x, self.identical_rows).unsqueeze(1)], dim=1)
        return run_gated_levels(self.levels, units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def gate_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per level, gates [B, R_l, N] (rows: tasks, then shared below the last level); a task
        row is 0 on other tasks' experts."""
        return self._run(x)[1]

    def fusion_matrices(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per level, batch-mean gate mass [R_l, T+1] on each unit's experts (rows sum to 1; a task
        row is non-zero only on itself and ``shared``)."""
        return [g.mean(dim=0) @ level.experts.owner_onehot for g, level in zip(self.gate_weights(x), self.levels)]

    def gate_labels(self, tasks: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        units = unit_names(tasks, self.num_tasks + 1)
        return [(unit_names(tasks, level.num_gates), expert_names(units, level.experts)) for level in self.levels]

    def fusion_labels(self, tasks: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        units = unit_names(tasks, self.num_tasks + 1)
        return [(unit_names(tasks, level.num_gates), units) for level in self.levels]


class CrossStitch(FusionModule):
    """Cross-stitch networks (Misra et al., CVPR 2016): one column per task, stitched after
    every level by a learned T×T matrix α^l (shared across channels):

        h_t^l = e_t^l(f_t^{l-1}),    f_t^l = Σ_s α^l_{t,s} h_s^l,    f_t^0 = x_t

    α^l starts at ``self_weight`` on the diagonal and (1 - self_weight)/(T - 1) elsewhere.
    """

    def __init__(self, num_tasks: int, in_dim: int, cfg: CrossStitchConfig, identical_rows: bool = False) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        levels = level_dims(cfg.expert_dims)
        self.columns = nn.ModuleList(
            ExpertBank(range(num_tasks), d_in, dims, cfg.activation)
            for d_in, dims in zip(_level_inputs(in_dim, levels), levels)
        )
        if num_tasks > 1:
            off = (1.0 - cfg.self_weight) / (num_tasks - 1)
            init = torch.full((num_tasks, num_tasks), off).fill_diagonal_(cfg.self_weight)
        else:
            init = torch.ones(1, 1)
        self.stitches = nn.ParameterList(nn.Parameter(init.clone()) for _ in levels)
        self.out_dim = levels[-1][-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for columns, alpha in zip(self.columns, self.stitches):
            h = torch.einsum("ts,bsd->btd", alpha, columns(h))
        return h

    def fusion_matrices(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per level, the stitch matrix α^l [T, T] (input-independent; rows need not sum to 1)."""
        return [alpha.detach().clone() for alpha in self.stitches]

    def fusion_labels(self, tasks: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        return [(list(tasks), list(tasks)) for _ in self.stitches]
