"""DTRN: Deep Task-specific bottom Representation Network (Liu et al., CIKM 2023,
arXiv 2308.05996).

Each task gets its own bottom representation in two steps:

* TIM (task-specific interest module): every behaviour sequence is encoded by a Transformer
  whose attention/FFN weights are shared by everything, but whose LayerNorms are conditional:
  a hypernetwork turns ``[task embedding_k; behaviour-type embedding_m]`` into the γ/β of each
  LayerNorm, so the hypernetwork is TIM's only source of task and behaviour-type conditioning.
  Each sequence is encoded at its own length (length buckets; empty sequences do no work) and
  pooled to one interest vector per (task k, behaviour type m).
* TRM (task-specific representation refinement): per task, a SENet: each field embedding is
  squeezed to one scalar (its mean), an excitation MLP reads the F scalars of the task (context
  aware: every field's weight depends on all fields) and emits one sigmoid weight per field;
  the task's bottom is the concatenation of the reweighted fields.

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
* TRM: the squeeze is the mean over the D embedding values (SENet's global average pooling);
  the excitation is ``trm_hidden`` wide. ``trm_form: context`` is the earlier form (no
  squeeze: the excitation reads all F·D values; weights 2·sigmoid).

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
from fusionrec.models.transformer import ConditionalEncoderLayer, key_padding_mask

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


# Fixed cost of one per-length encoder pass, in padded positions: the bucket plan pads a few
# rows more rather than launch another pass for them (see ``length_buckets``).
_BUCKET_OVERHEAD_POSITIONS = 128


def length_buckets(counts: Sequence[int], overhead: int = _BUCKET_OVERHEAD_POSITIONS) -> list[tuple[int, int]]:
    """Split sequence lengths into contiguous ranges, each encoded at its longest length.

    ``counts[l]`` is the number of sequences of length l (index 0, the empty ones, is ignored).
    Minimises ``Σ_g (sequences in g · longest length in g + overhead)`` exactly, by dynamic
    programming over the lengths that occur.

    Returns:
        [(lo, hi)] in increasing order: bucket g holds the sequences with lo < length <= hi.
    """
    present = [length for length in range(1, len(counts)) if counts[length] > 0]
    if not present:
        return []
    below = [0]  # below[j]: sequences shorter than or equal to present[j-1]
    for length in present:
        below.append(below[-1] + counts[length])
    best, cut = [0.0], [0]
    for j, hi in enumerate(present, start=1):
        choice = min(range(j), key=lambda i: best[i] + (below[j] - below[i]) * hi)
        best.append(best[choice] + (below[j] - below[choice]) * hi + overhead)
        cut.append(choice)
    buckets, j = [], len(present)
    while j > 0:
        i = cut[j]
        buckets.append((present[i - 1] if i > 0 else 0, present[j - 1]))
        j = i
    return buckets[::-1]


@torch.fx.wrap
def _interests(
    tim: "TaskInterestModule",
    sequences: list[torch.Tensor],
    lengths: list[torch.Tensor],
    target: Optional[torch.Tensor],
) -> torch.Tensor:
    # One opaque call under fx tracing: the per-length plan reads the lengths on the host.
    return tim.encode(sequences, lengths, target)


class TaskInterestModule(nn.Module):
    """TIM: K·M conditioned encodings of the M behaviour sequences, pooled to interests.

    Pooling ``target``: ``softmax(H q / sqrt(D)) H`` over valid positions, with
    ``q = W_t e_target`` (a shared learned linear of the candidate item embedding).
    Pooling ``mean``: masked mean over valid positions. An empty sequence gives a zero interest.

    Two ways to compute the same thing (equal to float rounding):

    * per length (``per_length=True``; the default on CPU): the non-empty sequences of all M
      features are grouped into a few length buckets (:func:`length_buckets`), and each bucket
      is encoded at its own longest length, with a boolean key mask, or none when all its
      sequences have that length. Empty sequences do no work. The plan reads the lengths on the
      host, which is free on CPU and a device sync elsewhere.
    * padded (``per_length=False``; the default on other devices): one batched pass over every
      sequence padded to the longest ``max_len``, with a boolean key mask; no host sync.
    """

    def __init__(
        self,
        num_tasks: int,
        behaviors: Sequence[str],
        max_len: int,
        dim: int,
        cfg: DTRNConfig,
        activation: str = "relu",
        per_length: Optional[bool] = None,
    ) -> None:
        super().__init__()
        self.num_tasks, self.max_len, self.dim, self.pooling = num_tasks, max_len, dim, cfg.pooling
        self.per_length = per_length
        self.bucket_overhead = _BUCKET_OVERHEAD_POSITIONS
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
        self,
        sequences: list[torch.Tensor],
        lengths: list[torch.Tensor],
        target: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            sequences: M × [B, L_m, D] item embeddings, right-padded, oldest → newest
                (L_m <= ``max_len``).
            lengths: M × [B] valid lengths (0 <= length <= L_m).
            target: [B, D] candidate item embedding (pooling ``target`` only).

        Returns:
            [B, K, M, D] interest of each task in each behaviour sequence.
        """
        return _interests(self, sequences, lengths, target)

    def encode(
        self, sequences: list[torch.Tensor], lengths: list[torch.Tensor], target: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """``forward`` outside fx: picks the per-length or the padded computation."""
        if self.target_proj is not None and target is None:
            raise ValueError("pooling 'target' needs the target embedding")
        per_length = self.per_length
        if per_length is None:
            per_length = sequences[0].device.type == "cpu"
        n = [length.to(self.positions.dtype).clamp(max=s.shape[1]) for s, length in zip(sequences, lengths)]
        if per_length:
            return self.encode_per_length(sequences, n, target)
        return self.encode_padded(sequences, n, target)

    def _pool(self, h: torch.Tensor, keep: Optional[torch.Tensor], n: torch.Tensor, q: Optional[torch.Tensor]) -> torch.Tensor:
        """Pool encodings h [..., K, N, L, D] over L: keep [..., 1, N, L] bool (None = all
        positions), n [..., 1, N] lengths, q [..., 1, N, D] pooling queries → [..., K, N, D]."""
        # Elementwise products and sums: as einsums these are K·N matrix products of one row or
        # one column each, slower on CPU at these sizes.
        if q is not None:
            scores = (h * q.unsqueeze(-2)).sum(dim=-1) / math.sqrt(self.dim)  # [..., K, N, L]
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))
            return (torch.softmax(scores, dim=-1).unsqueeze(-1) * h).sum(dim=-2)
        if keep is None:
            return h.mean(dim=-2)
        pooled = (keep.to(h.dtype).unsqueeze(-1) * h).sum(dim=-2)
        return pooled / n.clamp(min=1).to(h.dtype).unsqueeze(-1)

    def _encode(self, x: torch.Tensor, keep: Optional[torch.Tensor], ln_params: torch.Tensor) -> torch.Tensor:
        """The encoder layers: x [B', 1, N, L, D], keep [B', 1, N, L] bool or None, ln_params
        [layers, 4, K, N, D] → [B', K, N, L, D]."""
        # Post-LN: the first attention reads task-independent input, so it runs once per
        # sequence on a size-1 task axis; the conditional LNs broadcast it to K.
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, keep, ln_params[i])
        if len(self.layers) == 0:
            h = h.expand(-1, self.num_tasks, -1, -1, -1)
        return h

    def _add_positions(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """x [..., L, D] + the recency embedding of each position, for lengths n [...]."""
        if self.position is None:
            return x
        recency = (n.unsqueeze(-1) - 1 - self.positions[: x.shape[-2]]).clamp(min=0)
        return x + self.position(recency)

    def encode_padded(
        self, sequences: list[torch.Tensor], lengths: list[torch.Tensor], target: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Every sequence padded to ``max_len``, one batched pass → [B, K, M, D]."""
        L = self.max_len
        x = torch.stack([F.pad(s, (0, 0, 0, L - s.shape[1])) for s in sequences], dim=1)  # [B, M, L, D]
        n = torch.stack(lengths, dim=1)  # [B, M]
        valid = sequence_mask(n, L)  # [B, M, L]
        x = self._add_positions(x, n)
        keep = key_padding_mask(valid).unsqueeze(1)  # [B, 1, M, L]
        h = self._encode(x.unsqueeze(1), keep, self.hyper())  # [B, K, M, L, D]
        q = None if self.target_proj is None else self.target_proj(target)[:, None, None, :]  # [B, 1, 1, D]
        pooling_keep = keep if q is not None else valid.unsqueeze(1)
        pooled = self._pool(h, pooling_keep, n.unsqueeze(1), q)  # [B, K, M, D]
        nonempty = (n > 0).to(h.dtype).unsqueeze(1).unsqueeze(-1)  # [B, 1, M, 1]
        return pooled * nonempty

    def encode_per_length(
        self, sequences: list[torch.Tensor], lengths: list[torch.Tensor], target: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Non-empty sequences in length buckets, each encoded at its longest length → [B, K, M, D]."""
        B, M, K, D = sequences[0].shape[0], len(sequences), self.num_tasks, self.dim
        n = torch.stack(lengths, dim=1)  # [B, M]
        counts = torch.bincount(n.flatten().cpu(), minlength=self.max_len + 1).tolist()
        buckets = length_buckets(counts, self.bucket_overhead)
        if not buckets:
            # Every sequence is empty: the padded pass keeps every parameter in the graph.
            return self.encode_padded(sequences, lengths, target)
        ln_params = self.hyper()  # [layers, 4, K, M, D]
        q_all = None if self.target_proj is None else self.target_proj(target)  # [B, D]
        his = [hi for _, hi in buckets]
        edges = torch.tensor([0, *his], dtype=n.dtype, device=n.device)
        members: list[list[tuple[torch.Tensor, torch.Tensor, int]]] = [[] for _ in buckets]
        for m, seq in enumerate(sequences):
            # One gather per feature, its non-empty rows shortest first; each bucket then takes a
            # contiguous chunk, so the backward scatters into one zero tensor per feature.
            order = torch.argsort(n[:, m], stable=True)
            ends = torch.searchsorted(n[order, m], edges, right=True).tolist()
            if ends[-1] == ends[0]:
                continue
            order = order[ends[0] :]
            sizes = [b - a for a, b in zip(ends[:-1], ends[1:])]
            for g, (part, r) in enumerate(zip(seq.index_select(0, order).split(sizes), order.split(sizes))):
                if r.numel() == 0:
                    continue
                if his[g] < part.shape[1]:
                    part = part[:, : his[g]]
                elif his[g] > part.shape[1]:
                    part = F.pad(part, (0, 0, 0, his[g] - part.shape[1]))
                members[g].append((part, r, m))
        rows, feats, pooled = [], [], []
        for hi, bucket in zip(his, members):
            r = torch.cat([rm for _, rm, _ in bucket])  # [N]
            f = torch.cat([torch.full_like(rm, m) for _, rm, m in bucket])  # [N]
            x = torch.cat([part for part, _, _ in bucket]) if len(bucket) > 1 else bucket[0][0]  # [N, hi, D]
            nb = n[r, f]  # [N]
            x = self._add_positions(x, nb)
            keep = None
            if bool((nb < hi).any()):
                keep = sequence_mask(nb, hi).unsqueeze(0).unsqueeze(0)  # [1, 1, N, hi]
            h = self._encode(x.unsqueeze(0).unsqueeze(0), keep, ln_params[:, :, :, f])  # [1, K, N, hi, D]
            q = None if q_all is None else q_all.index_select(0, r).unsqueeze(0).unsqueeze(0)  # [1, 1, N, D]
            pooled.append(self._pool(h, keep, nb.view(1, 1, -1), q)[0])  # [K, N, D]
            rows.append(r)
            feats.append(f)
        out = sequences[0].new_zeros(B, K, M, D)
        out = out.index_put(
            (torch.cat(rows), torch.arange(K, device=out.device).unsqueeze(1), torch.cat(feats)), torch.cat(pooled, dim=1)
        )
        return out


class TaskRefinementModule(nn.Module):
    """TRM: per task k, a SENet over the task's F field embeddings e_{k,1..F} ∈ R^D.

    ``form="senet"`` (default; SENet, Hu et al. 2018, as FiBiNET applies it to fields):

    * squeeze: ``z_{k,f} = (1/D) Σ_d e_{k,f,d}``, one scalar per field → z_k ∈ R^F;
    * excitation: ``a_k = c·sigmoid(W_2^k φ(W_1^k z_k + b_1^k) + b_2^k)`` ∈ (0, c)^F, one weight
      per field, each depending on all F fields of the task (context aware);
    * reweight: ``out_k = flatten(a_k ⊙ e_k)`` = [a_{k,1} e_{k,1}; …; a_{k,F} e_{k,F}].

    ``form="context"`` (the earlier form, kept as an option): no squeeze, the excitation reads
    ``flatten(e_k)`` ∈ R^{F·D}. ``c = gate_scale`` (1 is SENet's sigmoid). The K MLPs run as one
    grouped einsum.
    """

    def __init__(
        self,
        num_tasks: int,
        num_fields: int,
        dim: int,
        hidden: int,
        activation: str = "relu",
        gate_scale: float = 1.0,
        form: str = "senet",
    ) -> None:
        super().__init__()
        if form not in ("senet", "context"):
            raise ValueError(f"TRM form must be senet or context, got {form!r}")
        self.num_fields, self.dim, self.gate_scale, self.form = num_fields, dim, gate_scale, form
        width = num_fields if form == "senet" else num_fields * dim
        self.mlp = GroupedMLP(num_tasks, width, [hidden, num_fields], activation)

    def field_weights(self, fields: torch.Tensor) -> torch.Tensor:
        """fields [B, K, F, D] → weights [B, K, F] in (0, gate_scale)."""
        summary = fields.mean(dim=-1) if self.form == "senet" else fields.flatten(2)  # squeeze: [B, K, F]
        return self.gate_scale * torch.sigmoid(self.mlp(summary))

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
            num_tasks, self.num_fields, dim, cfg.trm_hidden, activation, gate_scale=cfg.trm_scale, form=cfg.trm_form
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
            target = fields[self.target_index] if self.target_index is not None else None
            parts.append(self.tim(sequences, lengths, target))
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
