"""Elementwise layers: affine, sigmoid, leaky ReLU (see also :mod:`flowvi.flows.actnorm`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowvi.flows.base import Layer, ParametricLayer
from flowvi.transforms.elementwise import (
    ElementwiseAffineTransform,
    LeakyReLUTransform,
    SigmoidTransform,
)


class Affine(ParametricLayer):
    r"""Elementwise affine layer :math:`\mu + e^{\ell} \odot z`, starting at the identity."""

    transform = ElementwiseAffineTransform

    def initial(self) -> dict[str, Tensor]:
        return {"loc": torch.zeros(self.d), "log_scale": torch.zeros(self.d)}


class Sigmoid(Layer):
    r"""The fixed logistic map :math:`x = \sigma(z)` onto :math:`(0, 1)^d` (see
    :class:`flowvi.transforms.SigmoidTransform`); no parameters.

    Put it last (at the data end) to model data in the open unit cube: ``log_prob`` applies the
    logit to the data, which must lie strictly inside ``(0, 1)`` (a coordinate at exactly 0 or 1
    has no finite logit). ``context`` is accepted and ignored.
    """

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        super().__init__(d, context_dim=context_dim)

    def forward(self, context: Tensor | None = None) -> SigmoidTransform:
        return SigmoidTransform()


class LeakyReLU(Layer):
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
        super().__init__(d, context_dim=context_dim)
        self.log_slope = nn.Parameter(torch.zeros(d))

    def forward(self, context: Tensor | None = None) -> LeakyReLUTransform:
        return LeakyReLUTransform(self.log_slope)
