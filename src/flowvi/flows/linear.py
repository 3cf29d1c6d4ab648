"""Linear layers: lower-triangular affine, LU- and QR-decomposed invertible matrices."""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi._checks import check_dim
from flowvi.flows.base import ParametricLayer
from flowvi.transforms.linear import LUTransform, QRTransform, TriangularAffineTransform


def _triangular(d: int) -> dict[str, Tensor]:
    """The raw upper triangle, log-diagonal and bias shared by LU and QR: the identity."""
    return {"upper": torch.zeros(d, d), "log_diag": torch.zeros(d), "bias": torch.zeros(d)}


class TriangularAffine(ParametricLayer):
    r"""Full affine layer :math:`\mu + L z`, :math:`L` lower triangular; starts at the identity."""

    transform = TriangularAffineTransform

    def initial(self) -> dict[str, Tensor]:
        return {"loc": torch.zeros(self.d), "matrix": torch.zeros(self.d, self.d)}


class LU(ParametricLayer):
    r"""LU-decomposed invertible linear layer :math:`L U z + c` (see :class:`LUTransform`).

    Starts at the identity. Pair it with :class:`Permutation` for Glow's :math:`P L U`.
    """

    transform = LUTransform

    def initial(self) -> dict[str, Tensor]:
        return {"lower": torch.zeros(self.d, self.d), **_triangular(self.d)}


class QR(ParametricLayer):
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
        super().__init__(d, reflections=reflections, context_dim=context_dim)

    def initial(self) -> dict[str, Tensor]:
        return {"v": torch.randn(self.spec["reflections"], self.d), **_triangular(self.d)}
