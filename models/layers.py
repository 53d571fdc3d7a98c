"""Small dense building blocks shared by the bottoms, the fusion modules and the towers.

``GroupedLinear`` / ``GroupedMLP`` evaluate G independent layers (G experts, G gates, G task
towers) in one einsum each, which is how every fusion module avoids Python loops over
experts.
"""

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

    ``y[b, g] = x[b, g] @ weight[g] + bias[g]``, or with ``shared_input``
    ``y[b, g] = x[b] @ weight[g] + bias[g]`` (every group reads the same input).

    Shapes: x [B, G, in] ([B, in] with ``shared_input``) → [B, G, out]; ``weight`` [G, in, out],
    ``bias`` [G, out]. Initialised like ``nn.Linear`` (uniform in ±1/sqrt(in)) for every group.
    """

    def __init__(
        self, groups: int, in_features: int, out_features: int, bias: bool = True, shared_input: bool = False
    ) -> None:
        super().__init__()
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.shared_input = shared_input
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_input:
            y = torch.einsum("bi,gio->bgo", x, self.weight)
        else:
            y = torch.einsum("bgi,gio->bgo", x, self.weight)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        shared = ", shared_input=True" if self.shared_input else ""
        return f"groups={self.groups}, in_features={self.in_features}, out_features={self.out_features}{shared}"


class GroupedMLP(nn.Module):
    """G independent MLPs (experts, towers), evaluated together.

    Shapes: x [B, G, in] ([B, in] with ``shared_input``: all G MLPs read one input) →
    [B, G, dims[-1]]. The activation follows every layer except the last, and the last too
    when ``final_activation``.
    """

    def __init__(
        self,
        groups: int,
        in_features: int,
        dims: Sequence[int],
        activation: str = "relu",
        final_activation: bool = False,
        shared_input: bool = False,
    ) -> None:
        super().__init__()
        if not dims:
            raise ValueError("GroupedMLP needs at least one layer")
        sizes = [in_features, *dims]
        self.layers = nn.ModuleList(
            GroupedLinear(groups, a, b, shared_input=shared_input and i == 0)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
        )
        self.activation_name = activation
        self.final_activation = final_activation
        self._act = activation_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last or self.final_activation:
                x = self._act(x)
        return x


class MLP(nn.Module):
    """One MLP applied to the last axis of any input; the activation follows every layer.

    Shapes: [..., in] → [..., dims[-1]] (the identity when ``dims`` is empty).
    """

    def __init__(self, in_features: int, dims: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        sizes = [in_features, *dims]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out_features = sizes[-1]
        self._act = activation_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self._act(layer(x))
        return x
