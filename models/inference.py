"""The serving forward of a multi-task model: plain tensors in, per-task predictions out.

``InferenceModel`` composes a trained ``MultiTaskModel``'s parts — its embedding collections
(usually replaced by TorchRec's quantised inference collections, see ``pipeline.export``), its
bottom, fusion and towers — behind a signature of plain tensors, so that it can be traced by
TorchRec's FX tracer and compiled with TorchScript. It computes exactly what
``MultiTaskModel.logits`` computes, followed by the prediction link (sigmoid for binary tasks,
the value for regression tasks); it owns no parameters of its own.

Inputs (B rows; the two id groups are KeyedJaggedTensors flattened key-major, keys in the order
the reader builds them, see ``input_spec``)::

    dense             [B, Dd]            float32, normalised as the schema says
    sparse_values     [N_s]              int64 row ids of the pooled features on bag tables
    sparse_lengths    [F_s * B]          int32 ids per (feature, row), feature-major
    sparse_weights    [N_s]              float32 per-id weights (weighted pooling only)
    sequence_values   [N_q]              int64 row ids of every feature on a sequence table
    sequence_lengths  [F_q * B]          int32, feature-major

Output: predictions [B, T] float32. Inputs a schema does not use (no bag table, no sequence
table, no per-id weights) are dropped from the compiled signature by ``pipeline.export``.

``pipeline.export`` compiles the two halves differently: the lookups (KeyedJaggedTensor,
TorchRec's quantised collections, jagged pooling and padding) are traced by TorchRec's FX tracer
and compiled by ``torch.jit.script``; the :class:`DenseHead` (bottom, fusion, towers), whose
shapes are static but whose Python is not TorchScript, is recorded by ``torch.jit.trace``,
with DTRN's TIM swapped for :class:`PerLengthInterests`, a scripted form of its per-length
encoding (the bucket plan depends on each batch, which a trace would freeze).
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from fusionrec.datasets.schema import Schema
from fusionrec.models.embeddings import feature_max_len, pad_sequence, pool_jagged


def length_buckets_script(counts: List[int], overhead: int) -> List[Tuple[int, int]]:
    """``models.dtrn.length_buckets`` in TorchScript: contiguous length ranges (lo, hi], each
    encoded at its longest length, minimising Σ (sequences · hi + overhead) exactly (the same
    dynamic programme, the same tie-breaking: the lowest cut among equals)."""
    present: List[int] = []
    for length in range(1, len(counts)):
        if counts[length] > 0:
            present.append(length)
    buckets: List[Tuple[int, int]] = []
    if len(present) == 0:
        return buckets
    below: List[int] = [0]
    for length in present:
        below.append(below[-1] + counts[length])
    best: List[float] = [0.0]
    cut: List[int] = [0]
    for j in range(1, len(present) + 1):
        hi = present[j - 1]
        choice, cost = 0, best[0] + float((below[j] - below[0]) * hi)
        for i in range(1, j):
            c = best[i] + float((below[j] - below[i]) * hi)
            if c < cost:
                choice, cost = i, c
        best.append(cost + float(overhead))
        cut.append(choice)
    j = len(present)
    while j > 0:
        i = cut[j]
        buckets.append((present[i - 1] if i > 0 else 0, present[j - 1]))
        j = i
    buckets.reverse()
    return buckets


class BucketEncoder(nn.Module):
    """One length bucket of DTRN's TIM: its encoder layers, then its pooling.

    ``(x [1, 1, N, L, D], keep [1, 1, N, L] bool, ln_params [layers, 4, K, N, D],
    n [1, 1, N], q [1, 1, N, D]) → [1, K, N, D]``. ``masked=False`` ignores ``keep`` (every
    position real) and a TIM without target pooling ignores ``q``, so each variant is one
    static graph for ``torch.jit.trace``; N and L stay dynamic.
    """

    def __init__(self, tim: nn.Module, masked: bool) -> None:
        super().__init__()
        self.tim, self.masked, self.target = tim, masked, tim.target_proj is not None

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor, ln_params: torch.Tensor, n: torch.Tensor, q: torch.Tensor
    ) -> torch.Tensor:
        mask = keep if self.masked else None
        h = self.tim._encode(x, mask, ln_params)
        return self.tim._pool(h, mask, n, q if self.target else None)


class PerLengthInterests(nn.Module):
    """DTRN's TIM with its per-length encoding, in TorchScript (``torch.jit.script`` it).

    The trained ``TaskInterestModule``'s per-length computation (``encode_per_length``): the
    non-empty sequences of all M features are grouped into length buckets
    (:func:`length_buckets_script`) and each bucket is encoded at its own longest length, so
    padding costs no work, as in the eager model. The bucket's encoder and pooling are the
    traced :class:`BucketEncoder` variants; the hypernetwork's LayerNorm parameters do not
    depend on the input and are computed once, here. ``forward(sequences M × [B, L_m, D],
    lengths M × [B], target [B, D] or None) → [B, K, M, D]``.
    """

    def __init__(self, tim: nn.Module, masked: torch.jit.ScriptModule, full: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.num_tasks, self.dim, self.max_len = tim.num_tasks, tim.dim, tim.max_len
        self.overhead = int(tim.bucket_overhead)
        self.masked, self.full = masked, full
        self.position = tim.position
        self.target_proj = tim.target_proj
        self.register_buffer("positions", tim.positions.clone(), persistent=False)
        with torch.no_grad():
            self.register_buffer("ln_params", tim.hyper().detach().clone(), persistent=False)  # [layers, 4, K, M, D]

    def forward(
        self, sequences: List[torch.Tensor], lengths: List[torch.Tensor], target: Optional[torch.Tensor]
    ) -> torch.Tensor:
        B, M, K, D = sequences[0].shape[0], len(sequences), self.num_tasks, self.dim
        clamped: List[torch.Tensor] = []
        for m in range(M):
            clamped.append(lengths[m].to(self.positions.dtype).clamp(max=sequences[m].shape[1]))
        n = torch.stack(clamped, dim=1)  # [B, M]
        counts: List[int] = torch.bincount(n.flatten(), minlength=self.max_len + 1).tolist()
        buckets = length_buckets_script(counts, self.overhead)
        out = sequences[0].new_zeros([B, K, M, D])
        if len(buckets) == 0:
            return out  # every sequence empty: every interest is 0
        q_all: Optional[torch.Tensor] = None
        if self.target_proj is not None and target is not None:
            q_all = self.target_proj(target)  # [B, D]
        rows: List[torch.Tensor] = []
        feats: List[torch.Tensor] = []
        pooled: List[torch.Tensor] = []
        for bucket in buckets:
            lo, hi = bucket
            inside = (n > lo) & (n <= hi)  # [B, M]
            parts: List[torch.Tensor] = []
            bucket_rows: List[torch.Tensor] = []
            bucket_feats: List[torch.Tensor] = []
            for m in range(M):
                r = inside[:, m].nonzero().squeeze(1)
                if r.numel() == 0:
                    continue
                part = sequences[m].index_select(0, r)[:, :hi]
                if part.shape[1] < hi:
                    part = F.pad(part, [0, 0, 0, hi - part.shape[1]])
                parts.append(part)
                bucket_rows.append(r)
                bucket_feats.append(torch.full_like(r, m))
            r, f = torch.cat(bucket_rows), torch.cat(bucket_feats)  # [N]
            x = torch.cat(parts)  # [N, hi, D]
            nb = n[r, f]  # [N]
            if self.position is not None:
                recency = (nb.unsqueeze(-1) - 1 - self.positions[:hi]).clamp(min=0)
                x = x + self.position(recency)
            q = x.new_zeros([1, 1, 1, 1]) if q_all is None else q_all[r].unsqueeze(0).unsqueeze(0)  # [1, 1, N, D]
            x = x.unsqueeze(0).unsqueeze(0)
            ln = self.ln_params[:, :, :, f]
            if bool((nb < hi).any()):
                keep = (torch.arange(hi, device=nb.device) < nb.unsqueeze(-1)).unsqueeze(0).unsqueeze(0)  # [1, 1, N, hi]
                p = self.masked(x, keep, ln, nb.view(1, 1, -1), q)
            else:
                p = self.full(x, x.new_zeros([1], dtype=torch.bool), ln, nb.view(1, 1, -1), q)
            pooled.append(p[0])  # [K, N, D]
            rows.append(r)
            feats.append(f)
        tasks = torch.arange(K, device=out.device).unsqueeze(1)
        return out.index_put((torch.cat(rows), tasks, torch.cat(feats)), torch.cat(pooled, dim=1))


def compile_per_length_interests(tim: nn.Module) -> torch.jit.ScriptModule:
    """The scripted :class:`PerLengthInterests` of a trained ``TaskInterestModule`` (eval mode).

    The two :class:`BucketEncoder` variants are traced on a small bucket (N = 3 sequences of
    length 5); their graphs hold for any N and length (tested against the eager TIM)."""
    params = tim.hyper().detach()  # [layers, 4, K, M, D]
    N, L, D = 3, 5, tim.dim
    x = torch.randn(1, 1, N, L, D)
    keep = torch.arange(L) < torch.tensor([5, 2, 1]).unsqueeze(-1)
    ln = params[:, :, :, [0] * N]
    n = torch.tensor([[[5, 2, 1]]])
    q = torch.randn(1, 1, N, D)
    masked = torch.jit.trace(BucketEncoder(tim, True).eval(), (x, keep.view(1, 1, N, L), ln, n, q))
    no_mask = torch.zeros(1, dtype=torch.bool)
    full = torch.jit.trace(BucketEncoder(tim, False).eval(), (x, no_mask, ln, torch.full((1, 1, N), L), q))
    return torch.jit.script(PerLengthInterests(tim, masked, full).eval())


def _weighted_mean(weighted_sum: torch.Tensor, jt: JaggedTensor, max_len: Optional[int]) -> torch.Tensor:
    """``models.embeddings.weighted_mean`` in TorchScript-friendly form (the weights are known
    to be there): weighted_sum [B, D] / Σ_i w_i per row, a row whose weights sum to <= 0 kept."""
    weights = JaggedTensor(values=jt.weights(), lengths=jt.lengths()).to_padded_dense(desired_length=max_len)
    total = weights.sum(dim=1, keepdim=True).to(weighted_sum.dtype)  # [B, 1]
    return weighted_sum / torch.where(total > 0, total, torch.ones_like(total))


class DenseHead(nn.Module):
    """bottom → fusion → towers → prediction link, over one flat tuple of tensors.

    ``forward(dense [B, Dd], *fields (P × [B, D_f]), *sequences (M × [B, L_m, D]),
    *lengths (M × [B]))`` → predictions [B, T]: sigmoid(logit) for binary tasks, the logit for
    regression tasks. Flat so that ``torch.jit.trace`` records it with a fixed arity.
    """

    def __init__(self, schema: Schema, bottom: nn.Module, fusion: nn.Module, towers: nn.Module) -> None:
        super().__init__()
        self.bottom, self.fusion, self.towers = bottom, fusion, towers
        self.num_fields, self.num_sequences = len(schema.features.sparse), len(schema.features.sequences)
        self.register_buffer("is_binary", torch.tensor([t.type == "binary" for t in schema.tasks]), persistent=False)

    def forward(self, dense: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        P, M = self.num_fields, self.num_sequences
        fields, sequences, lengths = list(inputs[:P]), list(inputs[P : P + M]), list(inputs[P + M : P + 2 * M])
        logits = self.towers(self.fusion(self.bottom(dense, fields, sequences, lengths)))
        return torch.where(self.is_binary, torch.sigmoid(logits), logits)


class InferenceModel(nn.Module):
    """``(dense, sparse_values, sparse_lengths, sparse_weights, sequence_values,
    sequence_lengths) → predictions [B, T]``.

    Args:
        schema: the features and tasks the model was trained on.
        ebc: the bag-table collection (float or quantised), or None without bag tables.
        ec: the sequence-table collection (float or quantised), or None without sequences.
        head: the trained model's bottom, fusion and towers (:class:`DenseHead`), shared, not copied.
    """

    def __init__(self, schema: Schema, ebc: Optional[nn.Module], ec: Optional[nn.Module], head: DenseHead) -> None:
        super().__init__()
        features = schema.features
        self.ebc, self.ec, self.head = ebc, ec, head
        bag = set(features.bag_tables)
        self.sparse_keys = [f.name for f in features.pooled_features]
        self.sequence_keys = [f.name for f in features.sequence_table_features]
        self.fields = [(f.name, f.table in bag, f.pooling, feature_max_len(f)) for f in features.sparse]
        self.sequences = [(s.name, s.max_len) for s in features.sequences]
        self.weighted = features.weighted_pooling

    def head_inputs(
        self,
        dense: torch.Tensor,
        sparse_values: torch.Tensor,
        sparse_lengths: torch.Tensor,
        sparse_weights: torch.Tensor,
        sequence_values: torch.Tensor,
        sequence_lengths: torch.Tensor,
    ) -> list[torch.Tensor]:
        """The embedding lookups: ``[dense, *fields, *padded sequences, *lengths]``, the
        :class:`DenseHead`'s inputs."""
        pooled = {}
        sparse = None
        if self.ebc is not None:
            sparse = KeyedJaggedTensor(
                keys=self.sparse_keys,
                values=sparse_values,
                lengths=sparse_lengths,
                weights=sparse_weights if self.weighted else None,
            )
            pooled = self.ebc(sparse).to_dict()
        looked_up = {}
        if self.ec is not None:
            looked_up = self.ec(KeyedJaggedTensor(keys=self.sequence_keys, values=sequence_values, lengths=sequence_lengths))
        fields = []
        for name, from_bag, pooling, max_len in self.fields:
            if not from_bag:
                fields.append(pool_jagged(looked_up[name], pooling, max_len))
            elif self.weighted and pooling == "mean":  # the weighted EBC pooled Σ w·e
                fields.append(_weighted_mean(pooled[name], sparse[name], max_len))
            else:
                fields.append(pooled[name])
        sequences, lengths = [], []
        for name, max_len in self.sequences:
            padded, n = pad_sequence(looked_up[name], max_len)
            sequences.append(padded)
            lengths.append(n)
        return [dense, *fields, *sequences, *lengths]

    def forward(
        self,
        dense: torch.Tensor,
        sparse_values: torch.Tensor,
        sparse_lengths: torch.Tensor,
        sparse_weights: torch.Tensor,
        sequence_values: torch.Tensor,
        sequence_lengths: torch.Tensor,
    ) -> torch.Tensor:
        lookups = self.head_inputs(dense, sparse_values, sparse_lengths, sparse_weights, sequence_values, sequence_lengths)
        return self.head(*lookups)
