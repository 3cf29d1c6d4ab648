"""Elementwise monotone maps ("transformers") that coupling and autoregressive layers apply.

Each maps ``x: (*batch, n)`` with parameters ``params: (*batch, n, k)`` to ``y`` and the
elementwise ``ln dy/dx``, and back (Papamakarios et al. 2021, Section 3.1).
"""

from __future__ import annotations

import torch
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


TRANSFORMERS = {"additive": Additive(), "affine": Affine()}
