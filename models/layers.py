"""Small dense building blocks shared by the bottoms, the fusion module and the towers."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise function named ``name`` (relu, gelu, silu)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class GroupedLinear(nn.Module):
    """G independent affine maps applied side by side in one einsum.

    ``y[b, g] = x[b, g] @ weight[g] + bias[g]``

    Shapes: x [B, G, in] → [B, G, out]; ``weight`` [G, in, out], ``bias`` [G, out].
    Initialised like ``nn.Linear`` (uniform in ±1/sqrt(in)) for every group.
    """

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bgi,gio->bgo", x, self.weight)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in_features={self.in_features}, out_features={self.out_features}"


class GroupedMLP(nn.Module):
    """G independent MLPs (one per task), evaluated together.

    Shapes: x [B, G, in] → [B, G, dims[-1]]. The activation follows every layer except the
    last, which stays linear.
    """

    def __init__(self, groups: int, in_features: int, dims: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        if not dims:
            raise ValueError("GroupedMLP needs at least one layer")
        sizes = [in_features, *dims]
        self.layers = nn.ModuleList(GroupedLinear(groups, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation_name = activation
        self._act = activation_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self._act(x)
        return x
