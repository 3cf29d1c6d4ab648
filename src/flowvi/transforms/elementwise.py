"""Elementwise affine map: the diagonal-Gaussian reparameterization as a flow layer."""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.transforms.base import Transform


class AffineTransform(Transform):
    r"""Elementwise affine map :math:`y = \mu + e^{\ell} \odot x`, :math:`\ln|\det J| = \sum\ell_i`.

    The log-scale parameterization keeps every scale positive for any raw parameters. This is
    NICE's diagonal scaling layer (Dinh et al. 2014, Section 3.3) with a shift.

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
        return f"AffineTransform(d={self.loc.shape[-1]})"
