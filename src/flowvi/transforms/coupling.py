"""Coupling layers: NICE's additive, RealNVP's affine, NSF's spline coupling (Dinh et al. 2014,
2016; Durkan et al. 2019)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowvi.transforms.base import Transform
from flowvi.transforms.transformers import Transformer


class CouplingTransform(Transform):
    r"""Coupling map: :math:`y_A = x_A`, :math:`y_B = \tau(x_B; \theta(x_A))`.

    The Jacobian is block triangular with identity on A, so
    :math:`\ln|\det J| = \sum_{i \in B} \ln \partial\tau/\partial x_i`, and the inverse is one
    pass: :math:`x_B = \tau^{-1}(y_B; \theta(y_A))` (Dinh et al. 2016, Eq. 4–7).

    A and B are index sets, not 0/1 multiplications: the conditioner sees only the ``|A|``
    coordinates of A. In the order ``(A, B)`` (the permutation ``cat(index_a, index_b)``) the
    Jacobian is lower block triangular, ``[[I, 0], [*, diag]]``.

    Args:
        index_a: the conditioning coordinates A, integers, shape ``(|A|,)``, or a ``slice``
            when A is a contiguous range (then ``x[..., A]`` is a view, not a gather).
        index_b: the transformed coordinates B, shape ``(|B|,)`` or a ``slice``; A and B
            partition ``0 … d-1`` (any order within each).
        conditioner: maps ``x_A: (*batch, |A|)`` to parameters ``(*batch, |B|, k)``.
        transformer: the elementwise map :math:`\tau` (see :mod:`flowvi.transforms.transformers`).
        order: ``argsort(cat(index_a, index_b))``, which puts ``cat(y_A, y_B)`` back in place;
            computed if not given (pass it, precomputed, to save two operations per call).
            Not used when A and B are slices.
    """

    def __init__(
        self,
        index_a: Tensor | slice,
        index_b: Tensor | slice,
        conditioner: Callable[[Tensor], Tensor],
        transformer: Transformer,
        order: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.conditioner, self.transformer = conditioner, transformer
        self.index_a, self.index_b = index_a, index_b
        if isinstance(index_a, slice):  # two ranges: joined by one cat, A first or B first
            self.order = None
            self.a_first = index_a.start == 0
        elif order is None:
            self.order = torch.argsort(torch.cat([index_a, index_b]))
        else:
            self.order = order

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        if self.order is None:
            return torch.cat([a, b] if self.a_first else [b, a], -1)
        return torch.cat([a, b], -1)[..., self.order]

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[..., self.index_a], x[..., self.index_b]
        y_b, ladj = self.transformer.call(x_b, self.conditioner(x_a))
        return self._join(x_a, y_b), ladj.sum(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._inverse_and_ladj(y)[0]

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y_a, y_b = y[..., self.index_a], y[..., self.index_b]
        x_b, ladj = self.transformer.inverse(y_b, self.conditioner(y_a))
        return self._join(y_a, x_b), -ladj.sum(-1)

    def __repr__(self) -> str:
        a = self.index_a
        a = list(range(a.start, a.stop)) if isinstance(a, slice) else a.tolist()
        return f"CouplingTransform(A={a}, {type(self.transformer).__name__})"


def contiguous_parts(part: Tensor) -> tuple[slice, slice] | None:
    """A and B of a coupling mask (``part``: boolean ``(d,)``, ``True`` in A) as two slices,
    when each is one contiguous range (``[0, k)`` and ``[k, d)`` in either order), else ``None``.
    """
    d, k = len(part), int(part.sum())
    if bool(part[:k].all()):
        return slice(0, k), slice(k, d)
    if bool(part[d - k :].all()):
        return slice(d - k, d), slice(0, d - k)
    return None
