"""The radial layer's parameters (Rezende & Mohamed 2015)."""

from __future__ import annotations

import torch

from flowvi._checks import check_dim
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

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        check_dim(d)
        super().__init__(
            {
                "z0": torch.randn(d),
                "alpha": torch.zeros(()),
                "beta": torch.zeros(()),
            },
            d=d,
            context_dim=context_dim,
        )
