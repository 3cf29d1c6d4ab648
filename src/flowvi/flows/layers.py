"""Parameter modules for the planar, radial, affine, linear (LU, QR), permutation and elementwise
layers."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowvi._checks import check_dim
from flowvi.flows.layer import Layer
from flowvi.transforms import (
    AffineTransform,
    LeakyReLUTransform,
    LUTransform,
    PermutationTransform,
    PlanarTransform,
    QRTransform,
    RadialTransform,
    SigmoidTransform,
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


class LU(Layer):
    r"""LU-decomposed invertible linear layer :math:`L U z + c` (see :class:`LUTransform`).

    Starts at the identity. Pair it with :class:`Permutation` for Glow's :math:`P L U`.
    """

    transform = LUTransform

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        check_dim(d)
        super().__init__(
            {
                "lower": torch.zeros(d, d),
                "upper": torch.zeros(d, d),
                "log_diag": torch.zeros(d),
                "bias": torch.zeros(d),
            },
            d=d,
            context_dim=context_dim,
        )


class QR(Layer):
    r"""QR-decomposed invertible linear layer :math:`Q R z + c` (see :class:`QRTransform`).

    :math:`Q` is a product of ``reflections`` Householder reflections and :math:`R` upper
    triangular with diagonal :math:`e^{\ell}`; :math:`\ln|\det| = \sum_i \ell_i`. Starts at a
    random orthogonal :math:`Q` (reflection vectors drawn from torch's generator), :math:`R = I`
    and :math:`c = 0`: a volume-preserving random rotation or reflection, as Glow starts its
    1×1 convolutions.

    Args:
        d: dimension of ``z``.
        reflections: number of Householder reflections ``K``; default ``d`` (every orthogonal
            ``d x d`` matrix is a product of at most ``d`` reflections).
        context_dim: if given, the layer is amortized and needs ``context: (*batch, context_dim)``.

    Raises:
        ValueError: if ``d``, ``reflections`` or ``context_dim`` is not a positive integer.
    """

    transform = QRTransform

    def __init__(
        self, d: int, *, reflections: int | None = None, context_dim: int | None = None
    ) -> None:
        check_dim(d)
        reflections = d if reflections is None else reflections
        check_dim(reflections, "number of reflections")
        super().__init__(
            {
                "v": torch.randn(reflections, d),
                "upper": torch.zeros(d, d),
                "log_diag": torch.zeros(d),
                "bias": torch.zeros(d),
            },
            d=d,
            context_dim=context_dim,
        )
        self.spec = {"reflections": reflections}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reflections={self.spec['reflections']}"


class Permutation(nn.Module):
    """A fixed permutation of the coordinates, drawn from torch's generator when built.

    The permutation is a buffer: it is saved with the weights and restored by
    :func:`flowvi.load`. ``context`` is accepted and ignored.
    """

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        super().__init__()
        check_dim(d)
        self.d, self.context_dim = d, None
        self.register_buffer("permutation", self._draw(d))

    @staticmethod
    def _draw(d: int) -> Tensor:
        return torch.randperm(d)

    def forward(self, context: Tensor | None = None) -> PermutationTransform:
        return PermutationTransform(self.permutation)

    def extra_repr(self) -> str:
        return f"d={self.d}"


class Reverse(Permutation):
    """The order-reversing permutation ``d-1, …, 0``."""

    @staticmethod
    def _draw(d: int) -> Tensor:
        return torch.arange(d - 1, -1, -1)


class Sigmoid(nn.Module):
    r"""The fixed logistic map :math:`x = \sigma(z)` onto :math:`(0, 1)^d` (see
    :class:`flowvi.transforms.SigmoidTransform`); no parameters.

    Put it last (at the data end) to model data in the open unit cube: ``log_prob`` applies the
    logit to the data, which must lie strictly inside ``(0, 1)`` (a coordinate at exactly 0 or 1
    has no finite logit). ``context`` is accepted and ignored.
    """

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        super().__init__()
        check_dim(d)
        self.d, self.context_dim = d, None

    def forward(self, context: Tensor | None = None) -> SigmoidTransform:
        return SigmoidTransform()

    def extra_repr(self) -> str:
        return f"d={self.d}"


class LeakyReLU(nn.Module):
    r"""Leaky-ReLU layer :math:`y_i = x_i` for :math:`x_i \ge 0`, :math:`\alpha_i x_i` otherwise,
    with a learnable slope per dimension :math:`\alpha_i = e^{\ell_i} > 0` for any raw
    :math:`\ell` (see :class:`flowvi.transforms.LeakyReLUTransform`).

    Starts at the identity (:math:`\alpha = 1`). Interleave it with linear or affine layers
    (a lone leaky ReLU only rescales each half-line). ``context`` is accepted and ignored.

    Args:
        d: dimension.

    Raises:
        ValueError: if ``d`` is not a positive integer.
    """

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        super().__init__()
        check_dim(d)
        self.d, self.context_dim = d, None
        self.log_slope = nn.Parameter(torch.zeros(d))

    def forward(self, context: Tensor | None = None) -> LeakyReLUTransform:
        return LeakyReLUTransform(self.log_slope)

    def extra_repr(self) -> str:
        return f"d={self.d}"
