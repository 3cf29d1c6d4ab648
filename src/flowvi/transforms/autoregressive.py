"""Masked autoregressive maps: IAF in the sampling direction, MAF as its inverse."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from flowvi.transforms.base import Transform
from flowvi.transforms.transformers import Transformer


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

    def __init__(
        self, network: Callable[[Tensor], Tensor], transformer: Transformer, passes: int
    ) -> None:
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


class RecurrentTransform(AutoregressiveTransform):
    r"""Autoregressive map :math:`y_i = \tau(x_i; \theta_i(x_{<i}))` with :math:`\theta` from a
    recurrent network (Oliva et al. 2018, TAN): the same one-pass map as
    :class:`AutoregressiveTransform`, with an inverse of ``d`` single RNN steps instead of ``d``
    full network passes.

    Inverting in the order :math:`\pi`: step ``r`` advances the network by the coordinate just
    solved, :math:`x_{\pi(r-1)}`, which gives :math:`\theta_{\pi(r)}`; then
    :math:`x_{\pi(r)} = \tau^{-1}(y_{\pi(r)}; \theta_{\pi(r)})`. Total cost: one RNN pass, as
    for the forward map.

    Args:
        network: maps ``x: (*batch, d)`` to parameters ``(*batch, d, k)``, autoregressive in
            ``order`` (one RNN pass).
        step: maps ``(previous: (*batch,), state)`` to ``(params: (*batch, k), state)``: one RNN
            step (``state`` is ``None`` at the first step, and ``previous`` zeros).
        order: the order :math:`\pi`, a permutation of ``0 … d-1`` as Python ints.
        transformer: the elementwise map :math:`\tau`.
    """

    def __init__(
        self,
        network: Callable[[Tensor], Tensor],
        step: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]],
        order: Sequence[int],
        transformer: Transformer,
    ) -> None:
        super().__init__(network, transformer, len(order))
        self.step, self.order = step, tuple(order)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        params = self.network(x)
        y, ladj = self.transformer.call(x.expand(params.shape[:-1]), params)
        return y, ladj.sum(-1)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        previous, state = torch.zeros_like(y[..., 0]), None
        parts, ladjs = [None] * len(self.order), []
        for i in self.order:
            params, state = self.step(previous, state)
            y_i = y[..., i].expand(params.shape[:-1])
            x_i, ladj = self.transformer.inverse(y_i.unsqueeze(-1), params.unsqueeze(-2))
            parts[i], previous = x_i, x_i.squeeze(-1)
            ladjs.append(ladj)
        return torch.cat(parts, -1), -torch.cat(ladjs, -1).sum(-1)

    def __repr__(self) -> str:
        return f"RecurrentTransform({type(self.transformer).__name__}, d={self.passes})"
