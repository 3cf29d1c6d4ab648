"""The planar layer's parameters (Rezende & Mohamed 2015)."""

from __future__ import annotations

import math

import torch

from flowvi._checks import check_dim
from flowvi.flows.base import ParametricLayer
from flowvi.transforms.planar import PlanarTransform


class Planar(ParametricLayer):
    r"""Planar layer :math:`z + \hat u \tanh(w^\top z + b)` (see :class:`PlanarTransform`).

    Args:
        d: dimension of ``z``.
        context_dim: if given, the layer is amortized and needs ``context: (*batch, context_dim)``.

    Raises:
        ValueError: if ``d`` or ``context_dim`` is not a positive integer.
    """

    transform = PlanarTransform

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        check_dim(d)
        scale = 1 / math.sqrt(d)
        super().__init__(
            {
                "u": torch.randn(d) * scale,
                "w": torch.randn(d) * scale,
                "b": torch.zeros(()),
            },
            d=d,
            context_dim=context_dim,
        )
