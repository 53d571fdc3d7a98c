"""Building blocks of every fusion module: expert banks, gate banks and the fusion interface.

A fusion *level* holds N experts and R gates:

* ``ExpertBank``: expert n is an MLP (activation after every layer) reading row ``owners[n]``
  of the level's input [B, U, in]; all N run in one grouped einsum per layer → E [B, N, d].
* ``GateBank``: gate r reads its own input row and gives a softmax distribution over the
  experts it may use (all N, or a subset such as PLE's own + shared experts) → g [B, R, N],
  exactly zero on experts outside its span.

Every fusion then combines ``out[b, r] = Σ_n w[b, r, n] · E[b, n]`` as one batched matmul, with
w the gates (plus AdaTT's native weights). Fusion modules take per-task inputs [B, T, D] and
return [B, T, out_dim]; :class:`FusionModule` fixes that interface and the introspection hooks.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from fusionrec.models.layers import GroupedLinear, GroupedMLP

SHARED = "shared"  # name of the shared unit in introspection labels


class ExpertBank(nn.Module):
    """The N experts of one fusion level.

    Expert n is ``e_n(z) = φ(W_k … φ(W_1 z + b_1) … + b_k)`` with widths ``dims`` (the
    activation φ follows every layer, so expert outputs are post-activation), applied to
    ``z = x[:, owners[n]]``.

    Shapes: x [B, U, in] → E [B, N, dims[-1]]. Parameters: ``mlp.layers[i].weight[n]`` is expert
    n's layer-i matrix [in_i, out_i], ``mlp.layers[i].bias[n]`` its bias.
    """

    def __init__(self, owners: Sequence[int], in_dim: int, dims: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        owners = [int(o) for o in owners]
        if not owners or min(owners) < 0:
            raise ValueError(f"an expert bank needs at least one expert with a valid input row, got {owners}")
        self.owners = owners
        self.num_experts, self.out_dim = len(owners), int(dims[-1])
        self.num_units = max(owners) + 1
        # Static routing, decided once: one input row for all experts (MMoE), expert n reading
        # row n (cross-stitch, ML-MMoE upper levels), or a general gather.
        self.single_input = len(set(owners)) == 1
        self.identity = owners == list(range(len(owners)))
        self.register_buffer("owner_index", torch.tensor(owners), persistent=False)
        self.register_buffer(
            "owner_onehot", nn.functional.one_hot(torch.tensor(owners), self.num_units).float(), persistent=False
        )
        self.mlp = GroupedMLP(
            self.num_experts, in_dim, dims, activation, final_activation=True, shared_input=self.single_input
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.single_input:
            return self.mlp(x[:, self.owners[0]])
        if self.identity:
            return self.mlp(x[:, : self.num_experts])
        return self.mlp(x.index_select(1, self.owner_index))


class GateBank(nn.Module):
    """R softmax gates over the N experts of a level.

    ``g_r = softmax_{n ∈ S_r}(W_r z_r + b_r)`` on the span S_r (all N experts when ``spans`` is
    None), and 0 on experts outside S_r. W_r has |S_r| outputs, so a restricted gate has only
    the parameters it uses.

    Shapes: z [B, R, in] (row r feeds gate r), or [B, in] with ``shared_input`` → g [B, R, N].
    """

    def __init__(
        self,
        num_gates: int,
        in_dim: int,
        num_experts: int,
        spans: Optional[Sequence[Sequence[int]]] = None,
        shared_input: bool = False,
    ) -> None:
        super().__init__()
        self.num_gates, self.num_experts, self.shared_input = num_gates, num_experts, shared_input
        full = list(range(num_experts))
        self.spans = [list(full) for _ in range(num_gates)] if spans is None else [sorted(s) for s in spans]
        if len(self.spans) != num_gates or any(not s or s[0] < 0 or s[-1] >= num_experts for s in self.spans):
            raise ValueError(f"need one non-empty span of expert indices < {num_experts} per gate, got {spans}")
        self.full = all(s == full for s in self.spans)
        sizes = {len(s) for s in self.spans}
        self.ragged = len(sizes) > 1
        if self.ragged:
            self.rows = nn.ModuleList(nn.Linear(in_dim, len(s)) for s in self.spans)
            for r, s in enumerate(self.spans):
                self.register_buffer(f"placement_{r}", self._placement([s], num_experts)[0], persistent=False)
        else:
            self.linear = GroupedLinear(num_gates, in_dim, sizes.pop(), shared_input=shared_input)
            if not self.full:
                self.register_buffer("placement", self._placement(self.spans, num_experts), persistent=False)
        mask = torch.full((num_gates, num_experts), float("-inf"))
        for r, s in enumerate(self.spans):
            mask[r, s] = 0.0
        self.register_buffer("mask", mask, persistent=False)

    @staticmethod
    def _placement(spans: Sequence[Sequence[int]], num_experts: int) -> torch.Tensor:
        """[R, K, N] with 1 at (r, k, spans[r][k]): moves span-local logits to expert columns."""
        out = torch.zeros(len(spans), len(spans[0]), num_experts)
        for r, s in enumerate(spans):
            for k, n in enumerate(s):
                out[r, k, n] = 1.0
        return out

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Gate logits [B, R, N]; -inf outside each gate's span."""
        if self.ragged:
            rows = []
            for r, linear in enumerate(self.rows):
                zr = z if self.shared_input else z[:, r]
                rows.append(linear(zr) @ getattr(self, f"placement_{r}"))
            return torch.stack(rows, dim=1) + self.mask
        logits = self.linear(z)
        if self.full:
            return logits
        return torch.einsum("brk,rkn->brn", logits, self.placement) + self.mask

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(z), dim=-1)


def combine(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``out[b, r] = Σ_n weights[b, r, n] · experts[b, n]``: [B, R, N] × [B, N, d] → [B, R, d],
    one batched matmul."""
    return torch.einsum("brn,bnd->brd", weights, experts)


def task_summary(x: torch.Tensor, identical_rows: bool) -> torch.Tensor:
    """The task-neutral input of shared units and shared experts: the mean over tasks of the
    per-task inputs x [B, T, D] → [B, D]. When the bottom gives every task the same row
    (``identical_rows``), that row itself (equal to the mean, without the arithmetic)."""
    return x[:, 0] if identical_rows else x.mean(dim=1)


def run_gated_levels(levels: Iterable[nn.Module], units: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Apply gated fusion levels in turn; each maps units [B, R, D] to (units', gates [B, R', N]).

    Returns the last level's units and every level's gates."""
    gates = []
    for level in levels:
        units, g = level(units)
        gates.append(g)
    return units, gates


class FusionModule(nn.Module):
    """Interface of every fusion: per-task inputs [B, T, in_dim] → [B, T, out_dim].

    Introspection (eval; call under ``torch.no_grad()``), one entry per fusion level:

    * ``gate_weights(x)``: per-sample gates [B, R_l, N_l] (rows: gated units; columns: experts),
      or None when the fusion has no gates.
    * ``fusion_matrices(x)``: batch-mean task-to-task matrices [R_l, U_l]: how much unit r
      (row) takes from the experts owned by unit u (column). None when experts belong to no task.
    * ``gate_labels(tasks)`` / ``fusion_labels(tasks)``: (row names, column names) per level.
    """

    num_tasks: int
    out_dim: int

    def gate_weights(self, x: torch.Tensor) -> Optional[list[torch.Tensor]]:
        return None

    def fusion_matrices(self, x: torch.Tensor) -> Optional[list[torch.Tensor]]:
        return None

    def gate_labels(self, tasks: Sequence[str]) -> Optional[list[tuple[list[str], list[str]]]]:
        return None

    def fusion_labels(self, tasks: Sequence[str]) -> Optional[list[tuple[list[str], list[str]]]]:
        return None


def unit_names(tasks: Sequence[str], count: int) -> list[str]:
    """Names of units 0..count-1: the tasks, then ``shared``."""
    return [*tasks, SHARED][:count]


def expert_names(unit_labels: Sequence[str], bank: ExpertBank) -> list[str]:
    """``unit/j`` for the j-th expert owned by each unit."""
    seen: dict[int, int] = {}
    names = []
    for owner in bank.owners:
        j = seen.get(owner, 0)
        seen[owner] = j + 1
        names.append(f"{unit_labels[owner]}/{j}")
    return names
