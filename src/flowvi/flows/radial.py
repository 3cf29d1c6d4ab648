"""The radial layer's parameters (Rezende & Mohamed 2015)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.flows.base import ParametricLayer
from flowvi.transforms.radial import RadialTransform


class Radial(ParametricLayer):
    r"""Radial layer :math:`z + \hat\beta (z - z_0) / (\alpha + \|z - z_0\|)`.

    See :class:`flowvi.transforms.RadialTransform`. Starts at the identity (:math:`\hat\beta = 0`).

    Args:
        d: dimension of ``z``.
        context_dim: if given, the layer is amortized and needs ``context: (*batch, context_dim)``.
    """

    transform = RadialTransform

    def initial(self) -> dict[str, Tensor]:
        return {"z0": torch.randn(self.d), "alpha": torch.zeros(()), "beta": torch.zeros(())}
