"""Coupling layers: NICE's additive, RealNVP's affine, NSF's spline coupling (Dinh et al. 2014,
2016; Durkan et al. 2019)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowvi.transforms.base import Transform


class CouplingTransform(Transform):
    r"""Coupling map: :math:`y_A = x_A`, :math:`y_B = \tau(x_B; \theta(x_A))`.

    The Jacobian is block triangular with identity on A, so
    :math:`\ln|\det J| = \sum_{i \in B} \ln \partial\tau/\partial x_i`, and the inverse is one
    pass: :math:`x_B = \tau^{-1}(y_B; \theta(y_A))` (Dinh et al. 2016, Eq. 4–7).

    A and B are index sets, not 0/1 multiplications: the conditioner sees only the ``|A|``
    coordinates of A. In the order ``(A, B)`` (the permutation ``cat(index_a, index_b)``) the
    Jacobian is lower block triangular, ``[[I, 0], [*, diag]]``.

    Args:
        index_a: the conditioning coordinates A, integers, shape ``(|A|,)``.
        index_b: the transformed coordinates B, shape ``(|B|,)``; A and B partition
            ``0 … d-1`` (any order within each).
        conditioner: maps ``x_A: (*batch, |A|)`` to parameters ``(*batch, |B|, k)``.
        transformer: the elementwise map :math:`\tau` (see :mod:`flowvi.transforms.transformers`).
    """

    def __init__(
        self, index_a: Tensor, index_b: Tensor, conditioner: Callable[[Tensor], Tensor], transformer
    ) -> None:
        super().__init__()
        self.conditioner, self.transformer = conditioner, transformer
        self.index_a, self.index_b = index_a, index_b
        # y = cat(y_A, y_B)[order] puts every coordinate back in its place
        self.order = torch.argsort(torch.cat([index_a, index_b]))

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
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
        return f"CouplingTransform(A={self.index_a.tolist()}, {type(self.transformer).__name__})"
