"""A Transformer encoder layer with conditional LayerNorm, for DTRN's TIM.

The attention and feed-forward weights are ordinary parameters; the LayerNorm scale and shift
come from outside (a hypernetwork), one pair per (task, behaviour type).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fusionrec.models.layers import activation_fn


def key_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean key mask from a validity mask, for ``scaled_dot_product_attention``.

    Position 0 is always kept: for a non-empty, right-padded row it is valid anyway, and for an
    empty row it makes attention well defined (it reads the zero padding there), so no softmax
    row is entirely masked. Callers zero the pooled result of empty rows.

    Args:
        valid: [..., L] bool, True at real (non-padding) positions.

    Returns:
        [..., L] bool: True where attended.
    """
    return torch.cat([torch.ones_like(valid[..., :1]), valid[..., 1:]], dim=-1)


def conditional_layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm without its own affine, then ``x̂ * gamma + beta``.

    Shapes: x [..., D]; gamma, beta broadcastable to x (e.g. [K, M, 1, D] against
    [B, K, M, L, D]). Returns the broadcast shape.
    """
    return torch.addcmul(beta, F.layer_norm(x, (x.shape[-1],), eps=eps), gamma)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over [N, L, D] with an optional boolean key mask.

    ``softmax(Q Kᵀ / sqrt(d_h)) V`` per head over the kept keys
    (``F.scaled_dot_product_attention``), heads concatenated and projected. A boolean mask (or
    none, when every key is real) lets SDPA take its fused kernels.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [N, L, D], mask [N, L] bool (True = attend) or None (all keys) → [N, L, D]."""
        L, H, Dh = x.shape[1], self.num_heads, self.head_dim
        qkv = self.qkv(x).view(-1, L, 3, H, Dh).permute(2, 0, 3, 1, 4)  # [3, N, H, L, Dh]
        keep = None if mask is None else mask[:, None, None, :]  # [N, 1, 1, L], broadcast over heads and queries
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=keep)
        return self.out(attn.transpose(1, 2).reshape(-1, L, self.dim))


class ConditionalEncoderLayer(nn.Module):
    """Post-LN Transformer encoder layer whose two LayerNorms are conditional:

    ``h = CLN₁(x + MHA(x));  y = CLN₂(h + FFN(h))`` with ``CLN(z) = LN(z) ⊙ γ + β``.

    The input may be shared across tasks (size 1 on the task axis): attention then runs once
    per (sample, behaviour type) and the task-specific γ/β broadcast it to every task.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, activation: str = "relu") -> None:
        super().__init__()
        self.attention = MultiHeadSelfAttention(dim, num_heads)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)
        self._act = activation_fn(activation)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor], ln_params: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: [B, K', M, L, D] with K' = K or 1 (shared across tasks).
            mask: [B, 1, M, L] bool key mask (True = attend), or None when every key is real.
            ln_params: [4, K, M, D] = (γ₁, β₁, γ₂, β₂) for each (task, behaviour type).

        Returns:
            [B, K, M, L, D].
        """
        L, D = x.shape[-2], x.shape[-1]
        flat_mask = None if mask is None else mask.expand(-1, x.shape[1], -1, -1).reshape(-1, L)
        a = self.attention(x.reshape(-1, L, D), flat_mask).view(x.shape)
        g1, b1, g2, b2 = ln_params.unsqueeze(3).unbind(0)  # [K, M, 1, D] each, broadcast over B and L
        h = conditional_layer_norm(x + a, g1, b1)
        f = self.ffn_out(self._act(self.ffn_in(h)))
        return conditional_layer_norm(h + f, g2, b2)
