"""Elementwise monotone maps ("transformers") that coupling and autoregressive layers apply.

Each maps ``x: (*batch, n)`` with parameters ``params: (*batch, n, k)`` to ``y`` and the
elementwise ``ln dy/dx``, and back (Papamakarios et al. 2021, Section 3.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class Additive:
    r""":math:`y = x + \mu` (NICE, Dinh et al. 2014): volume preserving, ``k = 1``."""

    num_params = 1

    def call(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, ln dy/dx at x)``."""
        return y - params[..., 0], torch.zeros_like(y)


class Affine:
    r""":math:`y = \mu + e^{s} x` with the soft-clamped log-scale :math:`s = B \tanh(r / B)`.

    RealNVP (Dinh et al. 2016, Eq. 6) uses :math:`e^{r}` with an unbounded network output
    :math:`r`, the most reported source of NaN in flow libraries. The soft clamp keeps every
    layer's scale in :math:`[e^{-B}, e^{B}]` (B = 3: factors 0.05–20 per layer) while being the
    identity to first order near 0, where layers start; ``k = 2``.
    """

    num_params = 2
    bound = 3.0

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., 0], self.bound * torch.tanh(params[..., 1] / self.bound)

    def call(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return shift + torch.exp(log_scale) * x, log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, ln dy/dx at x)``."""
        shift, log_scale = self._shift_log_scale(params)
        return (y - shift) * torch.exp(-log_scale), log_scale


class Spline:
    r"""Monotone rational-quadratic spline on :math:`[-B, B]` with identity tails
    (Durkan et al. 2019, Section 3.1; their setting K = 8 bins, B = 3).

    Per element, ``k = 3K - 1`` raw parameters give K bin widths and heights (softmax, each at
    least ``min_size`` of the interval) and the K - 1 inner knot derivatives (softplus, at least
    ``min_slope``; the end derivatives are 1, matching the tails). All-zero parameters give the
    identity, so a layer whose network starts at zero starts at the identity. Inside a bin, with
    :math:`\xi = (x - x_k)/w_k` and :math:`s_k = h_k / w_k`, their Eq. 4 gives :math:`y`; the
    derivative is their Eq. 5, and the inverse solves their quadratic (Eq. 6–8) in the stable
    form :math:`\xi = 2c / (-b - \sqrt{b^2 - 4ac})`, refined by one Newton step.
    """

    min_size = 1e-3
    min_slope = 1e-3

    def __init__(self, bins: int = 8, bound: float = 3.0) -> None:
        self.bins, self.bound = bins, bound
        self.num_params = 3 * bins - 1
        # softplus(raw + shift) + min_slope = 1 at raw = 0
        self._shift = math.log(math.expm1(1 - self.min_slope))

    def _knots(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Knot positions ``(..., K + 1)`` from -B to B, and bin sizes ``(..., K)``."""
        sizes = self.min_size + (1 - self.min_size * self.bins) * torch.softmax(raw, -1)
        sizes = sizes * 2 * self.bound
        inner = torch.cumsum(sizes[..., :-1], -1) - self.bound
        edge = torch.full_like(sizes[..., :1], self.bound)
        return torch.cat([-edge, inner, edge], -1), sizes

    def _bin(self, params: Tensor, value: Tensor, *, inverse: bool) -> list[Tensor]:
        """``x_k, w_k, y_k, h_k, δ_k, δ_{k+1}`` of the bin holding each value (in x or in y)."""
        K = self.bins
        xs, widths = self._knots(params[..., :K])
        ys, heights = self._knots(params[..., K : 2 * K])
        inner = self.min_slope + F.softplus(params[..., 2 * K :] + self._shift)
        ones = torch.ones_like(inner[..., :1])
        slopes = torch.cat([ones, inner, ones], -1)
        edges = (ys if inverse else xs)[..., 1:-1].contiguous()
        k = torch.searchsorted(edges, value.unsqueeze(-1).contiguous(), right=True)
        parts = [xs, widths, ys, heights, slopes[..., :-1], slopes[..., 1:]]
        return [torch.gather(t, -1, k).squeeze(-1) for t in parts]

    @staticmethod
    def _log_derivative(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
        one_m = 1 - xi
        denom = s + (d1 + d0 - 2 * s) * xi * one_m
        num = s * s * (d1 * xi * xi + 2 * s * xi * one_m + d0 * one_m * one_m)
        return torch.log(num) - 2 * torch.log(denom)

    @staticmethod
    def _rise(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
        """``(y - y_k) / h_k`` at ``ξ`` (Durkan et al. 2019, Eq. 4)."""
        mix = xi * (1 - xi)
        return (s * xi * xi + d0 * mix) / (s + (d1 + d0 - 2 * s) * mix)

    def call(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        inside = x.abs() < self.bound
        xc = x.clamp(-self.bound, self.bound)
        x0, w, y0, h, d0, d1 = self._bin(params, xc, inverse=False)
        s = h / w
        xi = ((xc - x0) / w).clamp(0, 1)
        y = y0 + h * self._rise(xi, s, d0, d1)
        ladj = self._log_derivative(xi, s, d0, d1)
        return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, ln dy/dx at x)``."""
        inside = y.abs() < self.bound
        yc = y.clamp(-self.bound, self.bound)
        x0, w, y0, h, d0, d1 = self._bin(params, yc, inverse=True)
        s = h / w
        dy = yc - y0
        curve = d1 + d0 - 2 * s
        a = h * (s - d0) + dy * curve
        b = h * d0 - dy * curve
        c = -s * dy
        xi = (2 * c / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))).clamp(0, 1)
        # One Newton step on y(ξ) = y_c removes the quadratic formula's rounding in narrow bins.
        ladj = self._log_derivative(xi, s, d0, d1)
        xi = (xi - (h * self._rise(xi, s, d0, d1) - dy) / (w * torch.exp(ladj))).clamp(0, 1)
        ladj = self._log_derivative(xi, s, d0, d1)
        return torch.where(inside, x0 + xi * w, y), torch.where(inside, ladj, 0.0)


TRANSFORMERS = {"additive": Additive(), "affine": Affine(), "spline": Spline()}
