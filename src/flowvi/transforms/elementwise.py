"""Elementwise maps: affine (the diagonal-Gaussian reparameterization), sigmoid, leaky ReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from flowvi.transforms.base import Transform


class ElementwiseAffineTransform(Transform):
    r"""Elementwise affine map :math:`y = \mu + e^{\ell} \odot x`, :math:`\ln|\det J| = \sum\ell_i`.

    The log-scale parameterization keeps every scale positive for any raw parameters. This is
    NICE's diagonal scaling layer (Dinh et al. 2014, Section 3.3) with a shift. Unlike
    ``torch.distributions.AffineTransform(loc, scale)`` (``event_dim`` 0, any scale), it takes
    the log-scale and acts on vectors (``event_dim`` 1).

    Args:
        loc: shift :math:`\mu`, shape ``(*p, d)``.
        log_scale: :math:`\ell`, shape ``(*p, d)``.
    """

    def __init__(self, loc: Tensor, log_scale: Tensor) -> None:
        super().__init__()
        self.loc, self.log_scale = loc, log_scale

    def _ladj(self, x: Tensor) -> Tensor:
        return torch.broadcast_to(self.log_scale.sum(-1), x.shape[:-1])

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.loc + torch.exp(self.log_scale) * x, self._ladj(x)

    def _inverse(self, y: Tensor) -> Tensor:
        return (y - self.loc) * torch.exp(-self.log_scale)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._inverse(y), -self._ladj(y)

    def __repr__(self) -> str:
        return f"ElementwiseAffineTransform(d={self.loc.shape[-1]})"


class SigmoidTransform(Transform):
    r"""Logistic sigmoid :math:`y = \sigma(x) = 1/(1 + e^{-x})`, mapping :math:`\mathbb{R}^d`
    onto :math:`(0, 1)^d`; its inverse is the logit :math:`x = \ln y - \ln(1 - y)`.

    Placed last in a flow (the data end), it gives a density on the unit cube for bounded data;
    ``log_prob`` then applies the logit to the data (the logit pre-processing of RealNVP, Dinh
    et al. 2016, Section 4.1). :math:`\sigma'(x) = \sigma(x)\sigma(-x)`, so

    .. math:: \ln|\det J| = \sum_i \ln\sigma(x_i) + \ln\sigma(-x_i),

    computed with ``logsigmoid`` (finite for any finite ``x``, e.g. ``-40`` at ``x = ±40``); the
    inverse's log-determinant :math:`-\sum_i \ln y_i + \ln(1 - y_i)` uses ``log1p``. No
    parameters: dtype and device follow the input.

    The logit is exact to float rounding where :math:`y` is away from 0 and 1: near 1, ``y``
    itself carries an absolute rounding error of ``eps/2``, which the logit amplifies by
    :math:`1/(1 - y) \approx e^{x}` (float64: ``x`` recovered to 1e-10 for ``|x| < 13``).
    Points with ``y`` exactly 0 or 1 (``|x|`` beyond ~37 in float64) map to ``∓inf``.
    """

    codomain = constraints.independent(constraints.unit_interval, 1)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ladj = (F.logsigmoid(x) + F.logsigmoid(-x)).sum(-1)
        return torch.sigmoid(x), ladj

    def _inverse(self, y: Tensor) -> Tensor:
        return torch.log(y) - torch.log1p(-y)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        log_y, log_1m_y = torch.log(y), torch.log1p(-y)
        return log_y - log_1m_y, -(log_y + log_1m_y).sum(-1)

    def __repr__(self) -> str:
        return "SigmoidTransform()"


class LeakyReLUTransform(Transform):
    r"""Monotone leaky-ReLU map :math:`y_i = x_i` for :math:`x_i \ge 0`,
    :math:`y_i = \alpha_i x_i` for :math:`x_i < 0`, with slope :math:`\alpha_i = e^{\ell_i} > 0`.

    Any raw :math:`\ell` gives a positive slope, hence a bijection of :math:`\mathbb{R}^d`
    (piecewise linear with a kink at 0, where the derivative is taken from the right):
    :math:`\ln|\det J| = \sum_{i: x_i < 0} \ell_i`. Since :math:`\alpha > 0`, ``y`` has the sign
    of ``x``, so the inverse divides the negative coordinates by :math:`\alpha`. This is the
    leaky ReLU (Maas et al. 2013) with a learnable slope, constrained positive so it is monotone.

    Args:
        log_slope: :math:`\ell`, shape ``(*p, d)``.
    """

    def __init__(self, log_slope: Tensor) -> None:
        super().__init__()
        self.log_slope = log_slope

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        negative = x < 0
        y = torch.where(negative, x * torch.exp(self.log_slope), x)
        return y, torch.where(negative, self.log_slope, 0.0).sum(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._inverse_and_ladj(y)[0]

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        negative = y < 0
        x = torch.where(negative, y * torch.exp(-self.log_slope), y)
        return x, -torch.where(negative, self.log_slope, 0.0).sum(-1)

    def __repr__(self) -> str:
        return f"LeakyReLUTransform(d={self.log_slope.shape[-1]})"
