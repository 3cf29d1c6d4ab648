r"""Parameter modules of the Sylvester flows: orthogonal, Householder and triangular.

The three share the raw parameters of :math:`R, \tilde R, b` and the transform
(:class:`flowvi.transforms.SylvesterTransform`); they differ only in how ``Q`` is made. Each
is a :class:`flowvi.flows.ParametricLayer`, so ``context_dim=c`` amortizes every parameter,
``Q`` included, through a linear head, as in van den Berg et al. 2018 (Section 4), where an
encoder emits one flow per datapoint.

Raw parameters (shapes without the amortized batch): ``r: (M, M)`` packs both triangular
matrices, its upper triangle with the diagonal being :math:`R`'s and its strictly lower
triangle the transpose of :math:`\tilde R`'s strictly upper one (every entry is used), with
``r_tilde_diag: (M,)`` the diagonal of :math:`\tilde R` and ``b: (M,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi._checks import check_dim
from flowvi.flows.base import ParametricLayer
from flowvi.transforms.sylvester import (
    SylvesterTransform,
    householder,
    orthonormalize,
    strict_upper,
)


def _sylvester(q: Tensor, r: Tensor, r_tilde_diag: Tensor, b: Tensor) -> SylvesterTransform:
    r"""Unpack ``r`` (see the module docstring) into the raw :math:`R, \tilde R`."""
    r_tilde = strict_upper(r.mT) + torch.diag_embed(r_tilde_diag)
    return SylvesterTransform(q, r, r_tilde, b)


class Sylvester(ParametricLayer):
    r"""Base of the Sylvester layers: the raw :math:`R, \tilde R, b` of ``M`` hidden units.

    Subclasses add the raw parameters of ``Q`` (:meth:`q_initial`) and a classmethod
    ``transform(**raw)`` that makes ``Q``; their constructor arguments go to ``__init__``, which
    records them in ``spec`` for :func:`flowvi.flows.describe`.

    Starts near the identity: :math:`R` and the off-diagonal of :math:`\tilde R` at
    :math:`\mathcal N(0, 0.1^2)`, :math:`\tilde r_{ii} = \tanh(\mathcal N(0, 1))`, ``b = 0``.
    """

    @property
    def m(self) -> int:
        """The number of hidden units ``M`` (columns of ``Q``): ``spec["m"]``, else ``d``."""
        return self.spec.get("m", self.d)

    def q_initial(self) -> dict[str, Tensor]:
        """The raw parameters of ``Q``, drawn first (none by default)."""
        return {}

    def initial(self) -> dict[str, Tensor]:
        m = self.m
        return {
            **self.q_initial(),
            "r": 0.1 * torch.randn(m, m),
            "r_tilde_diag": torch.randn(m),
            "b": torch.zeros(m),
        }


class SylvesterO(Sylvester):
    r"""Orthogonal Sylvester layer (O-SNF): ``Q`` is the orthonormal polar factor of a raw
    ``(d, M)`` matrix ``q``, by the paper's iteration
    (:func:`flowvi.transforms.sylvester.orthonormalize`).

    Args:
        d: dimension of ``z``.
        m: number of hidden units ``M`` (columns of ``Q``), ``1 <= M <= d``; default ``d``.
        context_dim: if given, the layer is amortized and needs ``context: (*batch, context_dim)``.

    Raises:
        ValueError: if ``d``, ``m`` or ``context_dim`` is not a positive integer, or ``m > d``;
            when called, if the raw ``Q`` has linearly dependent columns (a set of measure zero).
    """

    def __init__(self, d: int, *, m: int | None = None, context_dim: int | None = None) -> None:
        check_dim(d)
        m = d if m is None else m
        check_dim(m, "number of hidden units M")
        if m > d:
            raise ValueError(f"M must be at most d = {d} (Q has M orthonormal columns), got {m}")
        super().__init__(d, m=m, context_dim=context_dim)

    def q_initial(self) -> dict[str, Tensor]:
        return {"q": torch.randn(self.d, self.m)}

    @classmethod
    def transform(cls, q: Tensor, r: Tensor, r_tilde_diag: Tensor, b: Tensor) -> SylvesterTransform:
        """The transform of raw parameters ``q: (*p, d, M)``, ``r``, ``r_tilde_diag``, ``b``."""
        return _sylvester(orthonormalize(q), r, r_tilde_diag, b)


class SylvesterH(Sylvester):
    r"""Householder Sylvester layer (H-SNF): ``M = d`` and ``Q = H_1 \cdots H_K``, a product of
    ``K`` Householder reflections of raw vectors ``v: (K, d)``
    (:func:`flowvi.transforms.sylvester.householder`).

    Args:
        d: dimension of ``z``.
        reflections: ``K``, default 4; every orthogonal ``d x d`` matrix is a product of at
            most ``d`` reflections, so ``K >= d`` loses no generality.
        context_dim: if given, the layer is amortized and needs ``context: (*batch, context_dim)``.

    Raises:
        ValueError: if ``d``, ``reflections`` or ``context_dim`` is not a positive integer.
    """

    def __init__(self, d: int, *, reflections: int = 4, context_dim: int | None = None) -> None:
        check_dim(d)
        check_dim(reflections, "number of reflections")
        super().__init__(d, reflections=reflections, context_dim=context_dim)

    def q_initial(self) -> dict[str, Tensor]:
        return {"v": torch.randn(self.spec["reflections"], self.d)}

    @classmethod
    def transform(cls, v: Tensor, r: Tensor, r_tilde_diag: Tensor, b: Tensor) -> SylvesterTransform:
        """The transform of raw parameters ``v: (*p, K, d)``, ``r``, ``r_tilde_diag``, ``b``."""
        return _sylvester(householder(v), r, r_tilde_diag, b)


class SylvesterT(Sylvester):
    r"""Triangular Sylvester layer (T-SNF): ``M = d`` and ``Q`` the identity or, with
    ``flip=True``, the order-reversing permutation, so that :math:`R, \tilde R` act as upper or
    as lower triangular matrices. :func:`flowvi.flows.build` alternates ``flip`` along a stack,
    as the paper does.

    Args:
        d: dimension of ``z``.
        flip: use the reversal ``d-1, …, 0`` as ``Q``.
        context_dim: if given, the layer is amortized and needs ``context: (*batch, context_dim)``.

    Raises:
        ValueError: if ``d`` or ``context_dim`` is not a positive integer.
    """

    alternate = "flip"

    def __init__(self, d: int, *, flip: bool = False, context_dim: int | None = None) -> None:
        check_dim(d)
        super().__init__(d, flip=bool(flip), context_dim=context_dim)
        eye = torch.eye(d)
        self.register_buffer("q", eye.flip(-1) if flip else eye)

    @classmethod
    def transform(
        cls, r: Tensor, r_tilde_diag: Tensor, b: Tensor, q: Tensor | None = None
    ) -> SylvesterTransform:
        """The transform of raw ``r``, ``r_tilde_diag``, ``b``; ``Q`` is ``q`` if given, else the
        identity."""
        if q is None:
            q = torch.eye(b.shape[-1], dtype=b.dtype, device=b.device)
        return _sylvester(q, r, r_tilde_diag, b)

    def forward(self, context: Tensor | None = None) -> SylvesterTransform:
        return self.transform(**self.raw(context), q=self.q)
