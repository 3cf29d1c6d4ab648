"""The networks that produce flow parameters: an MLP conditioner and MADE's masked MLP."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _with_context(x: Tensor, context: Tensor | None) -> Tensor:
    """``x: (*batch, n)`` with the context ``(*cbatch, c)`` broadcast and appended."""
    if context is None:
        return x
    batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    return torch.cat([x.expand(*batch, -1), context.expand(*batch, -1)], -1)


class MLP(nn.Sequential):
    """``in_features -> hidden… -> out_features`` with ReLU activations.

    The last layer starts at zero, so a flow layer it conditions starts at the identity
    (its transformer's zero-parameter point) — the usual stable initialization of couplings.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int]) -> None:
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a buffer)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Masked autoencoder for distribution estimation (Germain et al. 2015).

    Maps ``x: (*batch, d)`` (and an optional ``context: (*batch, c)``, seen by every hidden
    unit) to parameters ``(*batch, d, k)`` such that output ``i`` depends only on the inputs
    that come before ``i`` in ``order``: the Jacobian of the parameters in ``x`` is strictly
    triangular in that order. Hidden degrees cycle through ``1 … d-1`` (deterministic), so
    every input influences the outputs after it.

    Args:
        d: dimension.
        k: parameters per dimension.
        hidden: hidden layer sizes (any number of layers, each >= 1).
        order: a permutation of ``0 … d-1`` (the autoregressive order); default natural.
        context_dim: size of the context, or ``None``.
    """

    def __init__(
        self,
        d: int,
        k: int,
        hidden: Sequence[int] = (64, 64),
        *,
        order: Sequence[int] | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.d, self.k = d, k
        order_t = torch.arange(d) if order is None else torch.as_tensor(list(order))
        degree_in = torch.empty(d, dtype=torch.long)
        degree_in[order_t] = torch.arange(1, d + 1)  # rank of each input in the order
        self.register_buffer("order", order_t)
        c = context_dim or 0
        degrees = [degree_in]
        masks = []
        for size in hidden:
            degree = torch.arange(size) % max(d - 1, 1) + 1
            masks.append(degree[:, None] >= degrees[-1][None, :])
            degrees.append(degree)
        out_degree = degree_in.repeat_interleave(k)
        masks.append(out_degree[:, None] > degrees[-1][None, :])
        # context columns connect to every hidden unit of the first layer
        masks[0] = torch.cat([masks[0], torch.ones(masks[0].shape[0], c, dtype=torch.bool)], 1)
        layers: list[nn.Module] = []
        for i, mask in enumerate(masks):
            layers.append(MaskedLinear(mask))
            if i < len(masks) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        out = self.net(_with_context(x, context))
        return out.unflatten(-1, (self.d, self.k))
