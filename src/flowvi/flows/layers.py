"""Parameter modules for planar, radial and affine layers."""

from __future__ import annotations

import math

import torch

from flowvi._checks import check_dim
from flowvi.flows.layer import Layer
from flowvi.transforms import (
    AffineTransform,
    PlanarTransform,
    RadialTransform,
    TriangularAffineTransform,
)


class Planar(Layer):
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


class Radial(Layer):
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


class Affine(Layer):
    r"""Elementwise affine layer :math:`\mu + e^{\ell} \odot z`, starting at the identity."""

    transform = AffineTransform

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        check_dim(d)
        super().__init__(
            {"loc": torch.zeros(d), "log_scale": torch.zeros(d)}, d=d, context_dim=context_dim
        )


class TriangularAffine(Layer):
    r"""Full affine layer :math:`\mu + L z`, :math:`L` lower triangular; starts at the identity."""

    transform = TriangularAffineTransform

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        check_dim(d)
        super().__init__(
            {"loc": torch.zeros(d), "matrix": torch.zeros(d, d)}, d=d, context_dim=context_dim
        )
