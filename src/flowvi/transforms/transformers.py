"""Elementwise monotone maps ("transformers") that coupling and autoregressive layers apply.

Each maps ``x: (*batch, n)`` with parameters ``params: (*batch, n, k)`` to ``y`` and the
elementwise ``ln dy/dx``, and back (Papamakarios et al. 2021, Section 3.1). All satisfy the
:class:`Transformer` protocol; a coupling or autoregressive transform applies one to the
coordinates it transforms, with parameters from its network.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvi.transforms._solve import solve_increasing


@runtime_checkable
class Transformer(Protocol):
    r"""An elementwise strictly increasing map :math:`y = \tau(x; \theta)` with ``num_params``
    raw parameters per element (any raw values give a bijection of :math:`\mathbb R`).

    Shapes: ``x, y: (*batch, n)``, ``params: (*batch, n, num_params)``; every method returns
    the value and the elementwise :math:`\ln \partial y/\partial x` (at ``x``), both
    ``(*batch, n)``.
    """

    num_params: int

    def call(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, ln dy/dx)`` with ``y = τ(x; params)``."""
        ...

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, ln dy/dx at x)`` with ``x = τ⁻¹(y; params)``."""
        ...


class AdditiveTransformer:
    r""":math:`y = x + \mu` (NICE, Dinh et al. 2014): volume preserving, ``k = 1``."""

    num_params = 1

    def call(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, ln dy/dx at x)``."""
        return y - params[..., 0], torch.zeros_like(y)


class AffineTransformer:
    r""":math:`y = \mu + e^{s} x` with the soft-clamped log-scale :math:`s = B \tanh(r / B)`.

    RealNVP (Dinh et al. 2016, Eq. 6) uses :math:`e^{r}` with an unbounded network output
    :math:`r`, the most reported source of NaN in flow libraries. The soft clamp keeps every
    layer's scale in :math:`[e^{-B}, e^{B}]` (B = 3: factors 0.05–20 per layer) while being the
    identity to first order near 0, where layers start; ``k = 2``.
    """

    num_params = 2
    bound = 3.0

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(-1)  # one view op (and one node), not two selects
        return shift, self.bound * torch.tanh(raw / self.bound)

    def call(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return shift + torch.exp(log_scale) * x, log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, ln dy/dx at x)``."""
        shift, log_scale = self._shift_log_scale(params)
        return (y - shift) * torch.exp(-log_scale), log_scale


class SoftplusAffineTransformer:
    r""":math:`y = \mu + a x` with the scale :math:`a = \mathrm{softplus}(r) + 10^{-3}`.

    The scale map of nflows' masked affine autoregressive layer (Durkan et al. 2019): positive
    for any :math:`r`, at least :math:`10^{-3}`, and growing only linearly in :math:`r` where
    :math:`e^{r}` grows exponentially. At :math:`r = 0`, where a zero-initialized network
    starts, :math:`a = \ln 2`: the layer starts as a contraction of its forward map (for MAF,
    data to noise: a broad initial density), not at the identity.

    Both properties slow the fit of very thin directions of the data, which regularizes small
    data sets: on scikit-learn's breast_cancer features (364 training rows, d = 30, early
    stopping on a validation split) MAF and RealNVP with this map reach test NLLs 12-20 nats
    lower than with :class:`AffineTransformer`'s (``benchmarks/RESULTS.md``). ``k = 2``.
    """

    num_params = 2

    @staticmethod
    def _shift_scale(params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(-1)
        return shift, F.softplus(raw) + 1e-3

    def call(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, scale = self._shift_scale(params)
        return torch.addcmul(shift, scale, x), torch.log(scale)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, ln dy/dx at x)``."""
        shift, scale = self._shift_scale(params)
        return (y - shift) / scale, torch.log(scale)


class SplineTransformer:
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
    def _derivative_parts(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> tuple[Tensor, Tensor]:
        """``(numerator, denominator)`` of dy/dx = numerator / denominator² (Eq. 5)."""
        one_m = 1 - xi
        denom = s + (d1 + d0 - 2 * s) * xi * one_m
        num = s * s * (d1 * xi * xi + 2 * s * xi * one_m + d0 * one_m * one_m)
        return num, denom

    @classmethod
    def _log_derivative(cls, xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
        num, denom = cls._derivative_parts(xi, s, d0, d1)
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
        """``(x, ln dy/dx at x)``.

        The root ξ₀ of the quadratic is found without autograd; one Newton step on
        r(ξ) = h·rise(ξ) − (y − y_k) from it, with r'(ξ₀) held constant, gives the returned ξ:
        its value removes the quadratic formula's rounding in narrow bins, and its gradient is
        the implicit-function one, −(∂r/∂θ)/r', exact up to r(ξ₀) ≈ 0 — at a fraction of the
        cost of differentiating through the quadratic formula.
        """
        inside = y.abs() < self.bound
        yc = y.clamp(-self.bound, self.bound)
        x0, w, y0, h, d0, d1 = self._bin(params, yc, inverse=True)
        s = h / w
        dy = yc - y0
        with torch.no_grad():
            curve = d1 + d0 - 2 * s
            a = h * (s - d0) + dy * curve
            b = h * d0 - dy * curve
            c = -s * dy
            xi = (2 * c / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))).clamp(0, 1)
            num, denom = self._derivative_parts(xi, s, d0, d1)
            slope = w * num / (denom * denom)  # dr/dξ = w dy/dx
        xi = (xi - (h * self._rise(xi, s, d0, d1) - dy) / slope).clamp(0, 1)
        ladj = self._log_derivative(xi, s, d0, d1)
        return torch.where(inside, x0 + xi * w, y), torch.where(inside, ladj, 0.0)


def _log_softplus(r: Tensor) -> Tensor:
    """``ln softplus(r)``, finite for every ``r``: below -37, ``softplus(r) = e^r`` to double
    precision, so the log is ``r`` (``softplus`` itself underflows to 0 below about -745)."""
    low = r < -37
    return torch.where(low, r, torch.log(F.softplus(r.clamp_min(-37))))


def _log_sech2(u: Tensor) -> Tensor:
    r""":math:`\ln \tanh'(u) = \ln \operatorname{sech}^2 u = 2(\ln 2 - |u| - \ln(1 + e^{-2|u|}))`,
    finite where ``tanh'`` underflows."""
    a = u.abs()
    return 2 * (math.log(2) - a - F.softplus(-2 * a))


class MonotoneTransformer:
    r"""Strictly increasing MLP in the scalar input, one per element (a monotonic neural network:
    Huang et al. 2018, NAF, Section 3; Wehenkel & Louppe 2019, UMNN, Section 3).

    With ``hidden = (H_1, …, H_L)`` and positive weights,

    .. math::
        h_1 = \tanh(w_1 x + b_1),\quad h_l = \tanh(W_l h_{l-1} + b_l),\quad
        y = c + \alpha x + a^\top h_L,

    where :math:`w_1 \in \mathbb{R}_{>0}^{H_1}`, :math:`W_l \in \mathbb{R}_{>0}^{H_l \times
    H_{l-1}}` and :math:`a \in \mathbb{R}_{>0}^{H_L}` are ``softplus`` of raw parameters,
    :math:`\alpha = \varepsilon + \operatorname{softplus}(\cdot) \ge \varepsilon = 10^{-3}`,
    and the biases :math:`b_l` and the shift :math:`c` are free. Positive weights and increasing
    ``tanh`` make :math:`a^\top h_L` non-decreasing, so :math:`y' \ge \alpha > 0`: strictly
    increasing. It is onto :math:`\mathbb{R}`: :math:`|a^\top h_L| < A = \sum_k a_k` (``tanh``
    is bounded), so :math:`y - \alpha x - c \in (-A, A)` and the linear tail sends
    :math:`y \to \pm\infty` with :math:`x`. The same bound brackets the inverse,
    :math:`x \in [(y - c - A)/\alpha, (y - c + A)/\alpha]`, which a safeguarded Newton
    bisection (:func:`flowvi.transforms._solve.solve_increasing`) solves to machine precision.

    The log-derivative is exact, by forward-mode chain rule in log space (every factor is
    positive): :math:`g_1 = \ln w_1 + \ln \operatorname{sech}^2 u_1`,
    :math:`g_l = \ln \operatorname{sech}^2 u_l + \operatorname{logsumexp}_j(\ln W_{l,kj} +
    g_{l-1,j})`, :math:`\ln y' = \operatorname{logsumexp}(\ln\alpha, \ln a_k + g_{L,k})`:
    no autograd at run time, and no underflow where ``tanh`` saturates.

    Parameters per element, ``k = H_1 + Σ_{l≥2} H_l H_{l-1} + Σ_l H_l + H_L + 2``, in the order
    ``w_1, b_1, (W_l, b_l)…, a, α, c``. All-zero raw parameters give an odd map close to the
    identity where standardized data lie: :math:`w_1 = 1`, :math:`W_l = 1/H_{l-1}`,
    :math:`\alpha = 1/2`, fixed bias offsets at the centres of :math:`H_l` equal bins of
    ``[-2, 2]`` (first layer) or ``[-1, 1]`` (which also make the units distinct, so that
    training can tell them apart), and equal :math:`a_k` scaled so that
    :math:`y(2) - y(-2) = 4`; the slope is about 1 on ``[-1, 1]`` (within ``[0.7, 1.2]`` for
    two or more units) and falls to 1/2 in the tails. (Exactly the identity is out of reach: it
    would need :math:`a = 0`, where the positive weights' parametrization has no gradient.)

    Args:
        hidden: hidden sizes ``(H_1, …, H_L)`` of the scalar network, at least one layer.

    Raises:
        ValueError: for an empty ``hidden`` or a size below 1.
    """

    min_slope = 1e-3

    def __init__(self, hidden: Sequence[int] = (8,)) -> None:
        hidden = tuple(hidden)
        if not hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden
        ):
            raise ValueError(f"hidden must be one or more positive ints, got {hidden}")
        self.hidden = hidden
        sizes = [1, *hidden]
        self._shapes = [(b, a) for a, b in itertools.pairwise(sizes)]  # W_l: (H_l, H_{l-1})
        self.num_params = sum(b * a + b for b, a in self._shapes) + hidden[-1] + 2
        # raw-parameter offsets: softplus(0 + offset) gives w_1 = 1, W_l = 1 / H_{l-1},
        # α = 1/2 (with ε), biases spread evenly over [-2, 2], and equal a_k that make the
        # slope at x = 0 exactly 1: α + a_0 Σ_k ∂h_k/∂x(0) = 1
        self._weight_shift = [_inv_softplus(1.0 / a) for _, a in self._shapes]
        self._slope_shift = _inv_softplus(0.5 - self.min_slope)
        zero = torch.zeros(self.num_params, dtype=torch.float64)
        h, _ = self._hidden(torch.tensor([-2.0, 2.0], dtype=zero.dtype), self._unpack_layers(zero))
        self._out_shift = _inv_softplus(2.0 / float((h[1] - h[0]).sum()))

    def _unpack_layers(self, params: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``[(ln W_l, W_l, b_l)]`` from ``params: (..., k)``."""
        layers, start = [], 0
        for (rows, cols), shift in zip(self._shapes, self._weight_shift, strict=True):
            raw = params[..., start : start + rows * cols].unflatten(-1, (rows, cols))
            start += rows * cols
            # the centres of `rows` equal bins of [-2, 2] (first layer) or [-1, 1]
            centre = torch.arange(rows, dtype=params.dtype, device=params.device)
            offset = ((2 * centre + 1) / rows - 1) * (2 if cols == 1 else 1)
            bias = params[..., start : start + rows] + offset
            start += rows
            log_w = _log_softplus(raw + shift)
            layers.append((log_w, torch.exp(log_w), bias))
        return layers

    def _unpack(self, params: Tensor) -> tuple[list[tuple[Tensor, Tensor, Tensor]], ...]:
        """``[(ln W_l, W_l, b_l)]``, ``(ln a, a)``, ``α``, ``c`` from ``params: (..., k)``."""
        layers = self._unpack_layers(params)
        start = self.num_params - self.hidden[-1] - 2
        log_a = _log_softplus(params[..., start : start + self.hidden[-1]] + self._out_shift)
        start += self.hidden[-1]
        slope = self.min_slope + F.softplus(params[..., start] + self._slope_shift)
        return layers, (log_a, torch.exp(log_a)), slope, params[..., start + 1]

    @staticmethod
    def _hidden(x: Tensor, layers: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The last hidden layer ``h_L`` and ``g_L = ln ∂h_L/∂x``, each ``(..., H_L)``."""
        (log_w, w, bias), *rest = layers
        # the first layer's input is x itself (∂x/∂x = 1)
        u = w.squeeze(-1) * x.unsqueeze(-1) + bias
        g = log_w.squeeze(-1) + _log_sech2(u)
        h = torch.tanh(u)
        for log_w, w, bias in rest:
            u = (w @ h.unsqueeze(-1)).squeeze(-1) + bias
            g = _log_sech2(u) + torch.logsumexp(log_w + g.unsqueeze(-2), -1)
            h = torch.tanh(u)
        return h, g

    def _evaluate(self, x: Tensor, unpacked) -> tuple[Tensor, Tensor]:
        """``(y, ln y')`` at ``x: (...)`` (forward-mode chain rule in log space)."""
        layers, (log_a, a), slope, shift = unpacked
        h, g = self._hidden(x, layers)
        y = shift + slope * x + (a * h).sum(-1)
        terms = log_a + g  # (..., H_L), broadcast over x and the parameters
        log_slope = torch.log(slope).unsqueeze(-1).expand(*terms.shape[:-1], 1)
        log_dy = torch.logsumexp(torch.cat([log_slope, terms], -1), -1)
        return y, log_dy

    def call(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._evaluate(x, self._unpack(params))

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, ln dy/dx at x)``, ``x`` by bracketed safeguarded Newton bisection."""
        unpacked = self._unpack(params)
        _, (_, a), slope, shift = unpacked
        y = torch.broadcast_to(y, torch.broadcast_shapes(y.shape, slope.shape))
        # |a·h| < A, so the root lies within (y - c ± A) / α; the margin of 1 keeps the
        # bracket strict after rounding
        reach = a.sum(-1) + 1

        def residual(x: Tensor) -> tuple[Tensor, Tensor]:
            value, log_dy = self._evaluate(x, unpacked)
            return value - y, torch.exp(log_dy)

        x = solve_increasing(residual, (y - shift - reach) / slope, (y - shift + reach) / slope)
        return x, self._evaluate(x, unpacked)[1]


def _inv_softplus(value: float) -> float:
    """The ``r`` with ``softplus(r) = value > 0``."""
    return math.log(math.expm1(value))


TRANSFORMERS: dict[str, Transformer] = {
    "additive": AdditiveTransformer(),
    "affine": AffineTransformer(),
    "softplus-affine": SoftplusAffineTransformer(),
    "spline": SplineTransformer(),
    "monotone": MonotoneTransformer(),
}
