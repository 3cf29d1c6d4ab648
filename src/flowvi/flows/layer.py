"""The parameter side of a flow layer: free parameters, or parameters emitted from a context."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvi.transforms.base import Transform


class Layer(nn.Module):
    """An ``nn.Module`` whose call ``layer(context=None)`` returns a :class:`Transform`.

    Subclasses name their transform class and give the initial raw parameters. With
    ``context_dim=None`` these are free ``nn.Parameter`` s shared by all inputs. With
    ``context_dim=c`` the layer is *amortized*: a linear head maps a context ``h: (*batch, c)``
    (a VAE encoder's output, say) to one full set of raw parameters per input, shapes
    ``(*batch, *shape)``, so that each datapoint gets its own transform (Rezende & Mohamed 2015,
    Section 4; van den Berg et al. 2018). The head starts with small weights and its bias at the
    unconditional initial values.

    Because every raw parameter value gives an invertible transform, no constraint is applied
    here: the transform enforces it.
    """

    transform: type[Transform]

    def __init__(
        self, params: dict[str, Tensor], *, d: int, context_dim: int | None = None
    ) -> None:
        super().__init__()
        self.d, self.context_dim = d, context_dim
        self.shapes = {name: tuple(value.shape) for name, value in params.items()}
        if context_dim is None:
            self.params = nn.ParameterDict({k: nn.Parameter(v) for k, v in params.items()})
            return
        if context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer, got {context_dim}")
        flat = torch.cat([value.reshape(-1) for value in params.values()])
        self.head = nn.Linear(context_dim, flat.numel())
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.01 / math.sqrt(context_dim))
            self.head.bias.copy_(flat)

    def raw(self, context: Tensor | None = None) -> dict[str, Tensor]:
        """The raw parameters, shapes ``shape`` (free) or ``(*batch, *shape)`` (amortized)."""
        if self.context_dim is None:
            return dict(self.params)
        self._check_context(context)
        return self._split(self.head(context))

    @staticmethod
    def stacked_raw(layers: Sequence[Layer], context: Tensor | None = None) -> dict[str, Tensor]:
        """The raw parameters of layers of one class and shapes, stacked on a new leading axis:
        shapes ``(K, *shape)`` (free) or ``(K, *batch, *shape)`` (amortized, all heads in one
        matrix product, which is cheaper than ``K`` small ones forward and backward).
        Equal to stacking each layer's :meth:`raw`."""
        first = layers[0]
        if first.context_dim is None:
            return {
                name: torch.stack([layer.params[name] for layer in layers]) for name in first.shapes
            }
        first._check_context(context)
        weight = torch.cat([layer.head.weight for layer in layers])
        bias = torch.cat([layer.head.bias for layer in layers])
        out = F.linear(context, weight, bias)  # (*batch, K * P)
        out = out.unflatten(-1, (len(layers), -1)).movedim(-2, 0)
        return first._split(out)

    def _check_context(self, context: Tensor | None) -> None:
        if context is None or context.shape[-1] != self.context_dim:
            got = None if context is None else tuple(context.shape)
            raise ValueError(
                f"{type(self).__name__} is amortized: it needs a context of shape "
                f"(*batch, {self.context_dim}), got {got}"
            )

    def _split(self, out: Tensor) -> dict[str, Tensor]:
        """Named raw parameters ``(*lead, *shape)`` from their concatenation ``(*lead, P)``."""
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        lead = out.shape[:-1]
        return {
            name: piece.reshape((*lead, *shape))
            for (name, shape), piece in zip(
                self.shapes.items(), torch.split(out, sizes, dim=-1), strict=True
            )
        }

    def extra_repr(self) -> str:
        amortized = "" if self.context_dim is None else f", context_dim={self.context_dim}"
        return f"d={self.d}{amortized}"

    def forward(self, context: Tensor | None = None) -> Transform:
        return self.transform(**self.raw(context))
