"""Coupling layers: NICE's additive and RealNVP's affine coupling (Dinh et al. 2014, 2016)."""

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

    Args:
        mask: boolean, shape ``(d,)``; ``True`` marks the conditioning part A.
        conditioner: maps ``x_A: (*batch, |A|)`` to parameters ``(*batch, |B|, k)``.
        transformer: the elementwise map :math:`\tau` (see :mod:`flowvi.transforms.transformers`).
    """

    def __init__(self, mask: Tensor, conditioner: Callable[[Tensor], Tensor], transformer) -> None:
        super().__init__()
        self.conditioner, self.transformer = conditioner, transformer
        self.index_a = torch.nonzero(mask).squeeze(-1)
        self.index_b = torch.nonzero(~mask).squeeze(-1)
        self.order = torch.argsort(torch.cat([self.index_a, self.index_b]))

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
