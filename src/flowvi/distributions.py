"""Base distributions of a flow, as ``nn.Module`` s whose call returns a torch distribution."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

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


BASES = {"standard": StandardNormal, "diagonal": DiagonalGaussian}
