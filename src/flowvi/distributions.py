"""Base distributions of a flow, as ``nn.Module`` s whose call returns a torch distribution."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, Uniform

from flowvi._checks import check_dim


class StandardNormal(nn.Module):
    r"""The standard normal :math:`\mathcal N(0, I_d)`, with no parameters.

    ``StandardNormal(d)()`` is ``Independent(Normal(0, 1), 1)`` with event shape ``(d,)``, on the
    device and dtype the module was moved to (its constants are buffers).
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        check_dim(d)
        self.register_buffer("loc", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))

    def forward(self, context: Tensor | None = None) -> Distribution:
        return Independent(
            Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False
        )


class DiagonalGaussian(nn.Module):
    r""":math:`\mathcal N(\mu, \mathrm{diag}(e^{2\ell}))` with trainable ``loc`` and ``log_scale``.

    Starts at the standard normal. ``DiagonalGaussian(d)()`` has event shape ``(d,)``.
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        check_dim(d)
        self.loc = nn.Parameter(torch.zeros(d))
        self.log_scale = nn.Parameter(torch.zeros(d))

    def forward(self, context: Tensor | None = None) -> Distribution:
        scale = torch.exp(self.log_scale)
        return Independent(Normal(self.loc, scale, validate_args=False), 1, validate_args=False)


class BoxUniform(nn.Module):
    r"""The uniform distribution on the box :math:`\prod_i [\mathrm{low}_i, \mathrm{high}_i)`.

    ``BoxUniform(d)()`` is ``Independent(Uniform(low, high), 1)``, event shape ``(d,)``, with
    ``ln q = -\sum_i \ln(\mathrm{high}_i - \mathrm{low}_i)`` nats inside and ``-inf`` outside
    (argument validation is off, as for the other bases, so a point outside the box scores
    ``-inf`` instead of raising). A flow on this base therefore has ``log_prob = -inf`` wherever
    the inverse lands outside the box: zero density outside the image of the box. The bounds
    are buffers (they follow ``.to()`` and are saved with the weights). Not in :data:`BASES`:
    a flow fitted by maximum likelihood on it would give data outside the image an infinite loss.

    Args:
        d: dimension.
        low, high: the box's bounds, the same for every coordinate (default ``[-1, 1]``).

    Raises:
        ValueError: if ``d`` is not a positive integer, or the bounds are not finite with
            ``low < high``.
    """

    def __init__(self, d: int, *, low: float = -1.0, high: float = 1.0) -> None:
        super().__init__()
        check_dim(d)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"a uniform box needs finite bounds low < high, got [{low}, {high}]")
        self.register_buffer("low", torch.full((d,), float(low)))
        self.register_buffer("high", torch.full((d,), float(high)))

    def forward(self, context: Tensor | None = None) -> Distribution:
        return Independent(
            Uniform(self.low, self.high, validate_args=False), 1, validate_args=False
        )


BASES = {"standard": StandardNormal, "diagonal": DiagonalGaussian}
