r"""Image pre-processing for density estimation: uniform dequantization, the logit map, bits/dim.

Units. Pixels are integer levels :math:`k \in \{0, \dots, L-1\}^D` (``L = levels``: 256 for
8-bit images, 17 for scikit-learn's digits). Dequantized data :math:`x = k + u`,
:math:`u \sim U[0, 1)^D`, live in :math:`[0, L)^D` *in level units* (not rescaled to
:math:`[0, 1)`). A model density :math:`p` on that space defines the discrete model
:math:`P(k) = \int_{[0,1)^D} p(k + u)\,du`, and by Jensen's inequality

.. math:: -\ln P(k) \le \mathbb E_u[-\ln p(k + u)]

(Theis et al. 2016, Section 3.1), so the mean of :math:`-\ln p(x)` in nats over dequantized test
images bounds the discrete negative log-likelihood, and :func:`bits_per_dim` turns it into the
bits per dimension reported in the literature (RealNVP, Glow, ...). Because the unit cube of
level space has volume 1, no :math:`D \ln L` correction is needed (it would be, had the data
been rescaled to :math:`[0, 1)`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvi._checks import check_dim
from flowvi.transforms.base import Transform


def dequantize(x_int: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantization :math:`x = k + u`, :math:`u \sim U[0, 1)`, elementwise.

    Args:
        x_int: integer levels :math:`k`, any shape, integer or floating dtype.
        generator: optional ``torch.Generator`` on ``x_int``'s device, for reproducible noise.

    Returns:
        ``x_int``'s shape, on its device, in its dtype if floating (else the default dtype),
        values in :math:`[k, k + 1)`.
    """
    dtype = x_int.dtype if x_int.is_floating_point() else torch.get_default_dtype()
    u = torch.rand(x_int.shape, generator=generator, dtype=dtype, device=x_int.device)
    return x_int.to(dtype) + u


class LogitPreprocess(Transform):
    r"""RealNVP's logit pre-processing of dequantized pixels (Dinh et al. 2017, Section 4.1).

    .. math::
        s = \alpha + (1 - 2\alpha)\,\frac{x}{L}, \qquad y = \mathrm{logit}(s) = \ln s - \ln(1-s),

        \ln|\det \partial y/\partial x| = \sum_i \big[\ln(1-2\alpha) - \ln L - \ln s_i
            - \ln(1 - s_i)\big].

    ``α`` keeps :math:`s` inside :math:`[\alpha, 1-\alpha)` so that :math:`y` stays finite at the
    edges of :math:`[0, L)`. Maps data :math:`x` to the flow's space :math:`y`; the inverse is
    :math:`x = L(\sigma(y) - \alpha)/(1 - 2\alpha)`. In a flow whose layers run base → data, the
    last layer is ``LogitPreprocess(levels, alpha).inv``, and ``log_prob`` of dequantized pixels
    then includes this Jacobian (in nats, level units: see the module docstring).

    :math:`1 - s` is formed as :math:`\alpha + (1 - 2\alpha)(L - x)/L`, not as one minus
    :math:`s`, so the log-determinant keeps full precision at both edges.

    Its domain is the :math:`x` with :math:`0 < s < 1`, i.e. :math:`-\alpha L/(1 - 2\alpha) < x
    < L(1 - \alpha)/(1 - 2\alpha)`, the image of the inverse. A row with a component outside it
    (or on its edge) has no image: :meth:`call_and_ladj` returns ``ladj = -inf`` for it and
    ``y = 0`` in place of the missing values, so that a flow ending in ``.inv`` gives ``log_prob
    = -inf`` (density zero) there rather than NaN.

    Args:
        levels: :math:`L`, the number of pixel levels (256 for 8-bit images).
        alpha: :math:`\alpha \in [0, 0.5)`; with ``alpha = 0`` the domain is
            :math:`x \in (0, L)` (a pixel dequantized to exactly 0 is on its edge).

    Shapes: ``x, y: (*batch, D)``; ``ladj: (*batch,)``.

    Raises:
        ValueError: if ``levels`` is not an integer >= 2 or ``alpha`` is not in ``[0, 0.5)``.
    """

    def __init__(self, levels: int, alpha: float = 0.05) -> None:
        super().__init__()
        check_dim(levels, "levels")
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5), got {alpha!r}")
        self.levels, self.alpha = levels, float(alpha)
        self.width = (1 - 2 * self.alpha) / levels  # ds/dx
        self.log_width = math.log1p(-2 * self.alpha) - math.log(levels)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + self.width * x
        one_minus_s = self.alpha + self.width * (self.levels - x)
        # 1. outside the domain (s <= 0 or s >= 1) there is no image: such a row gets
        #    ln|det| = -inf and the placeholder y = 0 (s = 1/2), so that a flow's log density
        #    there is -inf (density zero), not NaN; NaN inputs fail both tests and stay NaN
        # 2. the placeholder is substituted before the logs, so gradients stay finite (zero)
        outside = (s <= 0) | (one_minus_s <= 0)
        log_s = torch.log(torch.where(outside, 0.5, s))
        log_1ms = torch.log(torch.where(outside, 0.5, one_minus_s))
        ladj = (self.log_width - log_s - log_1ms).sum(-1)
        return log_s - log_1ms, torch.where(outside.any(-1), -math.inf, ladj)

    def _inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / self.width

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        # ln s = ln σ(y), ln(1 - s) = ln σ(-y): the log-determinant from y without cancellation
        ladj = (F.logsigmoid(y) + F.logsigmoid(-y) - self.log_width).sum(-1)
        return self._inverse(y), ladj

    def __repr__(self) -> str:
        return f"LogitPreprocess(levels={self.levels}, alpha={self.alpha})"


def bits_per_dim(nll_nats: Tensor | float, D: int) -> Tensor:
    r"""Bits per dimension :math:`\mathrm{nll} / (D \ln 2)`.

    Args:
        nll_nats: :math:`-\ln p(x)` in nats per example (any shape, e.g. a mean over a test set),
            where :math:`p` is the density of dequantized data in level units,
            :math:`x \in [0, L)^D`. Its value in bits/dim is then an upper bound on the discrete
            data's :math:`-\log_2 P(k)` per dimension (module docstring).
        D: the number of dimensions (pixels × channels), e.g. 784 for 28×28 grey images.

    Example:
        A uniform density on :math:`[0, 256)^D` has :math:`\mathrm{nll} = D \ln 256`, i.e.
        8 bits/dim: ``bits_per_dim(torch.tensor(784 * math.log(256)), 784) == 8``.

    Raises:
        ValueError: if ``D`` is not a positive integer.
    """
    check_dim(D, "number of dimensions D")
    return torch.as_tensor(nll_nats) / (D * math.log(2))
