"""Masked autoregressive maps: IAF in the sampling direction, MAF as its inverse."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowvi.transforms.base import Transform


class AutoregressiveTransform(Transform):
    r"""Autoregressive map :math:`y_i = \tau(x_i; \theta_i(x_{<i}))`, parameters from the input.

    With :math:`\theta` from a MADE (one network pass gives every :math:`\theta_i`), the map
    and its log-determinant :math:`\sum_i \ln \partial\tau/\partial x_i` take one pass (the
    Jacobian is triangular). The inverse takes ``d`` passes: pass ``j`` fixes coordinate ``j`` of
    the order, since :math:`\theta_i` depends only on coordinates before ``i``.

    Used as it is, this is IAF (Kingma et al. 2016): one-pass sampling, and density of its own
    samples for free. Its inverse is MAF (Papamakarios et al. 2017): one-pass density of any
    point, ``d``-pass sampling.

    Args:
        network: maps ``x: (*batch, d)`` to parameters ``(*batch, d, k)``, autoregressive.
        transformer: the elementwise map :math:`\tau`.
        passes: number of passes the inverse needs (``d``).
    """

    def __init__(self, network: Callable[[Tensor], Tensor], transformer, passes: int) -> None:
        super().__init__()
        self.network, self.transformer, self.passes = network, transformer, passes

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = self.transformer.call(x, self.network(x))
        return y, ladj.sum(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._inverse_and_ladj(y)[0]

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(y)
        for _ in range(self.passes):
            x, ladj = self.transformer.inverse(y, self.network(x))
        return x, -ladj.sum(-1)

    def __repr__(self) -> str:
        return f"AutoregressiveTransform({type(self.transformer).__name__}, d={self.passes})"
