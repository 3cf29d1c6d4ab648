"""The planar layer's parameters (Rezende & Mohamed 2015)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

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

    def initial(self) -> dict[str, Tensor]:
        scale = 1 / math.sqrt(self.d)
        return {
            "u": torch.randn(self.d) * scale,
            "w": torch.randn(self.d) * scale,
            "b": torch.zeros(()),
        }
