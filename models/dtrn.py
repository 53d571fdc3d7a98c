"""DTRN: Deep Task-specific bottom Representation Network (Liu et al., CIKM 2023,
arXiv 2308.05996).

Each task gets its own bottom representation in two steps:

* TIM (task-specific interest module): every behaviour sequence is encoded by a Transformer
  whose attention/FFN weights are shared by everything, but whose LayerNorms are conditional:
  a hypernetwork turns ``[task embedding_k; behaviour-type embedding_m]`` into the γ/β of each
  LayerNorm, so the hypernetwork is TIM's only source of task and behaviour-type conditioning.
  The K·M encodings run as one batched pass (padding masked) and are pooled to one interest
  vector per (task k, behaviour type m).
* TRM (task-specific representation refinement): per task, a SENet-like network reads all the
  task's field embeddings at once (context aware) and emits one weight per field; the task's
  bottom is the concatenation of the reweighted fields.

The K bottoms are the per-task inputs [B, K, F·D] of whatever fusion sits above.

Choices the paper leaves open (config options where they matter, see ``DTRNConfig``):

* Post-LN encoder layers ``CLN(x + MHA(x))``, ``CLN(h + FFN(h))``; the hypernetwork is a
  one-hidden-layer MLP whose output layer starts small, so γ ≈ 1 and β ≈ 0 at init.
* Pooling ``target`` (default): scaled dot-product attention of a learned linear map of the
  candidate item embedding over the encoded sequence; ``mean``: masked mean. An empty sequence
  pools to 0.
* A learned recency-position embedding (index 0 = newest item) is added to the items
  (``position_embedding``).
* Dense features enter TRM as one field through a linear projection to D.
* TRM weights are ``trm_gate_scale · sigmoid(·)`` (2 by default, 1 for SENet's sigmoid).

Notation: B batch, K tasks, M behaviour sequences, L padded sequence length, D embedding dim,
F fields per task, C condition dim.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusionrec.models.config import DTRNConfig
from fusionrec.models.embeddings import sequence_mask
from fusionrec.models.layers import GroupedMLP, activation_fn
from fusionrec.models.transformer import ConditionalEncoderLayer, attention_bias

# Scale of the hypernetwork's output layer at init: γ starts near 1 and β near 0, so an
# untrained TIM behaves like a plain Transformer while every parameter still gets a gradient.
_HYPER_OUT_INIT_SCALE = 0.1


class LayerNormHypernetwork(nn.Module):
    """Maps each (task, behaviour type) condition to the γ/β of every conditional LayerNorm.

    ``[γ₁, β₁, γ₂, β₂]_{l,k,m} = (1, 0, 1, 0) + MLP([e_task_k ; e_type_m])``, two conditional
    LayerNorms per encoder layer l. Behaviour types are the distinct ``behaviors`` strings;
    two sequences with the same tag share one type embedding.
    """

    def __init__(
        self,
        num_tasks: int,
        behaviors: Sequence[str],
        condition_dim: int,
        hidden: int,
        num_layers: int,
        dim: int,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        kinds = list(dict.fromkeys(behaviors))
        self.num_tasks, self.num_sequences, self.num_layers, self.dim = num_tasks, len(behaviors), num_layers, dim
        self.task_embedding = nn.Parameter(torch.randn(num_tasks, condition_dim))
        self.type_embedding = nn.Parameter(torch.randn(len(kinds), condition_dim))
        self.register_buffer("type_index", torch.tensor([kinds.index(b) for b in behaviors]), persistent=False)
        self.hidden = nn.Linear(2 * condition_dim, hidden)
        self.out = nn.Linear(hidden, num_layers * 4 * dim)
        with torch.no_grad():
            self.out.weight.mul_(_HYPER_OUT_INIT_SCALE)
            self.out.bias.zero_()
        self._act = activation_fn(activation)
        self.register_buffer("identity", torch.tensor([1.0, 0.0, 1.0, 0.0]).view(4, 1, 1, 1), persistent=False)

    def forward(self) -> torch.Tensor:
        """Returns [num_layers, 4, K, M, D]: (γ₁, β₁, γ₂, β₂) for each layer, task and sequence."""
        K, M, C = self.num_tasks, self.num_sequences, self.task_embedding.shape[1]
        cond = torch.cat(
            [
                self.task_embedding.unsqueeze(1).expand(K, M, C),
                self.type_embedding[self.type_index].unsqueeze(0).expand(K, M, C),
            ],
            dim=-1,
        )  # [K, M, 2C]
        raw = self.out(self._act(self.hidden(cond)))  # [K, M, layers*4*D]
        raw = raw.view(K, M, self.num_layers, 4, self.dim).permute(2, 3, 0, 1, 4)
        return raw + self.identity


class TaskInterestModule(nn.Module):
    """TIM: K·M conditioned encodings of the M behaviour sequences, pooled to interests.

    Pooling ``target``: ``softmax(H q / sqrt(D)) H`` over valid positions, with
    ``q = W_t e_target`` (a shared learned linear of the candidate item embedding).
    Pooling ``mean``: masked mean over valid positions. An empty sequence gives a zero interest.
    """

    def __init__(
        self,
        num_tasks: int,
        behaviors: Sequence[str],
        max_len: int,
        dim: int,
        cfg: DTRNConfig,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.num_tasks, self.max_len, self.dim, self.pooling = num_tasks, max_len, dim, cfg.pooling
        self.hyper = LayerNormHypernetwork(
            num_tasks, behaviors, cfg.condition_dim, cfg.hyper_hidden, cfg.num_layers, dim, activation
        )
        self.layers = nn.ModuleList(
            ConditionalEncoderLayer(dim, cfg.num_heads, cfg.ffn_dim, activation) for _ in range(cfg.num_layers)
        )
        self.position = None
        if cfg.position_embedding:
            # Index 0 is the newest item of every sequence, whatever its length.
            self.position = nn.Embedding(max_len, dim)
            nn.init.normal_(self.position.weight, std=0.02)
        self.target_proj = nn.Linear(dim, dim) if cfg.pooling == "target" else None
        self.register_buffer("positions", torch.arange(max_len), persistent=False)

    def forward(
        self, sequences: torch.Tensor, lengths: torch.Tensor, target: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        Args:
            sequences: [B, M, L, D] item embeddings, right-padded, oldest → newest.
            lengths: [B, M] valid lengths (0 ≤ length ≤ L).
            target: [B, D] candidate item embedding (pooling ``target`` only).

        Returns:
            [B, K, M, D] interest of each task in each behaviour sequence.
        """
        lengths = lengths.to(self.positions.dtype)
        valid = sequence_mask(lengths, self.max_len)  # [B, M, L]
        x = sequences
        if self.position is not None:
            recency = (lengths.unsqueeze(-1) - 1 - self.positions).clamp(min=0)
            x = x + self.position(recency)
        mask = attention_bias(valid).unsqueeze(1)  # [B, 1, M, L]
        ln_params = self.hyper()  # [layers, 4, K, M, D]
        # Post-LN: the first attention reads task-independent input, so it runs once per
        # (sample, sequence) on a size-1 task axis; the conditional LNs broadcast it to K.
        h = x.unsqueeze(1)  # [B, 1, M, L, D]
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, ln_params[i])  # [B, K, M, L, D]
        if len(self.layers) == 0:
            h = h.expand(-1, self.num_tasks, -1, -1, -1)
        nonempty = (lengths > 0).to(h.dtype).unsqueeze(1).unsqueeze(-1)  # [B, 1, M, 1]
        if self.target_proj is not None:
            if target is None:
                raise ValueError("pooling 'target' needs the target embedding")
            q = self.target_proj(target)  # [B, D]
            scores = torch.einsum("bkmld,bd->bkml", h, q) / math.sqrt(self.dim) + mask.to(h.dtype)
            pooled = torch.einsum("bkml,bkmld->bkmd", torch.softmax(scores, dim=-1), h)
        else:
            weights = valid.to(h.dtype).unsqueeze(1)  # [B, 1, M, L]
            pooled = torch.einsum("bkml,bkmld->bkmd", weights, h)
            pooled = pooled / lengths.clamp(min=1).to(h.dtype).unsqueeze(1).unsqueeze(-1)
        return pooled * nonempty


class TaskRefinementModule(nn.Module):
    """TRM: per task, context-aware field reweighting (SENet-like).

    ``a_k = c·sigmoid(W_2^k φ(W_1^k flatten(fields_k) + b_1^k) + b_2^k)`` ∈ (0, c)^F and
    ``out_k = flatten(a_k ⊙ fields_k)``: the excitation reads every field of the task at once
    (context-aware, no per-field squeeze), one weight per field. ``c = gate_scale``: 2 (default)
    centres an untrained network at weight ≈ 1, so fields pass through at their own scale and
    can be amplified as well as damped; 1 is SENet's plain sigmoid. The K MLPs run as one
    grouped einsum.
    """

    def __init__(
        self,
        num_tasks: int,
        num_fields: int,
        dim: int,
        hidden: int,
        activation: str = "relu",
        gate_scale: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_fields, self.dim, self.gate_scale = num_fields, dim, gate_scale
        self.mlp = GroupedMLP(num_tasks, num_fields * dim, [hidden, num_fields], activation)

    def field_weights(self, fields: torch.Tensor) -> torch.Tensor:
        """fields [B, K, F, D] → weights [B, K, F] in (0, gate_scale)."""
        return self.gate_scale * torch.sigmoid(self.mlp(fields.flatten(2)))

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """fields [B, K, F, D] → [B, K, F·D]."""
        return (fields * self.field_weights(fields).unsqueeze(-1)).flatten(2)


class DTRN(nn.Module):
    """DTRN bottom: per-task field list ``[dense projection; pooled features…; TIM interests of
    task k…]`` refined by TRM.

    Input shapes: dense [B, Dd]; fields P × [B, D]; sequences M × [B, L_m, D]; lengths M × [B].
    Output: [B, K, F·D] with F = (Dd > 0) + P + M: task k's bottom in row k, the per-task
    input of whatever fusion sits above.
    """

    task_specific = True

    def __init__(
        self,
        num_tasks: int,
        dense_dim: int,
        dim: int,
        num_pooled: int,
        behaviors: Sequence[str],
        sequence_max_lens: Sequence[int],
        target_index: Optional[int],
        cfg: DTRNConfig,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(behaviors) != len(sequence_max_lens):
            raise ValueError("one behaviour tag and one max_len per sequence are needed")
        if cfg.pooling == "target" and behaviors and target_index is None:
            raise ValueError("pooling 'target' needs the index of the target field")
        self.num_tasks, self.dim = num_tasks, dim
        self.sequence_max_lens = list(sequence_max_lens)
        self.max_len = max(self.sequence_max_lens, default=0)
        self.target_index = target_index if cfg.pooling == "target" else None
        self.dense_proj = nn.Linear(dense_dim, dim) if dense_dim > 0 else None
        self.tim = (
            TaskInterestModule(num_tasks, behaviors, self.max_len, dim, cfg, activation) if behaviors else None
        )
        self.num_fields = int(dense_dim > 0) + num_pooled + len(behaviors)
        if self.num_fields == 0:
            raise ValueError("DTRN needs at least one field")
        self.trm = TaskRefinementModule(
            num_tasks, self.num_fields, dim, cfg.trm_hidden, activation, gate_scale=cfg.trm_gate_scale
        )
        self.out_dim = self.num_fields * dim

    def task_fields(
        self,
        dense: torch.Tensor,
        fields: list[torch.Tensor],
        sequences: list[torch.Tensor],
        lengths: list[torch.Tensor],
    ) -> torch.Tensor:
        """The unrefined per-task fields [B, K, F, D]."""
        shared = list(fields)
        if self.dense_proj is not None:
            shared = [self.dense_proj(dense), *shared]
        parts = []
        if shared:
            parts.append(torch.stack(shared, dim=1).unsqueeze(1).expand(-1, self.num_tasks, -1, -1))
        if self.tim is not None:
            padded = [F.pad(s, (0, 0, 0, self.max_len - n)) for s, n in zip(sequences, self.sequence_max_lens)]
            target = fields[self.target_index] if self.target_index is not None else None
            parts.append(self.tim(torch.stack(padded, dim=1), torch.stack(lengths, dim=1), target))
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]

    def forward(
        self,
        dense: torch.Tensor,
        fields: list[torch.Tensor],
        sequences: list[torch.Tensor],
        lengths: list[torch.Tensor],
    ) -> torch.Tensor:
        """→ [B, K, F·D], task k's refined bottom in row k."""
        return self.trm(self.task_fields(dense, fields, sequences, lengths))
