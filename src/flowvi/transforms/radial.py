"""Radial flow (Rezende & Mohamed 2015, Section 4.1 and Appendix A.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvi.transforms.base import Transform


class RadialTransform(Transform):
    r"""Radial map :math:`f(z) = z + \hat\beta h(\alpha, r) (z - z_0)`, :math:`h = 1/(\alpha + r)`.

    :math:`r = \|z - z_0\|`, :math:`\alpha = \mathrm{softplus}(\alpha_{raw}) > 0` and
    :math:`\hat\beta = -\alpha + \mathrm{softplus}(\beta_{raw}) > -\alpha`, so the map is
    invertible for any raw parameters (Rezende & Mohamed 2015, Appendix A.2).

    Log-determinant (their Eq. 14, with :math:`h' = -h^2`):

    .. math:: \ln|\det J| = (d - 1) \ln(1 + \hat\beta h) + \ln(1 + \hat\beta \alpha h^2).

    Inverse, by an exact scalar solve: the map moves points along rays from :math:`z_0`, and the
    image radius :math:`\rho = \|y - z_0\| = r (\alpha + \hat\beta + r) / (\alpha + r)` gives the
    quadratic :math:`r^2 + (\alpha + \hat\beta - \rho) r - \alpha\rho = 0`, whose one
    non-negative root is taken in the cancellation-free form; then
    :math:`z = z_0 + (y - z_0) (\alpha + r) / (\alpha + \hat\beta + r)`.

    Args:
        z0: centre, shape ``(*p, d)``.
        alpha: raw ``α``, shape ``(*p,)``.
        beta: raw ``β``, shape ``(*p,)``.
    """

    def __init__(self, z0: Tensor, alpha: Tensor, beta: Tensor) -> None:
        super().__init__()
        self.z0 = z0
        self.alpha = F.softplus(alpha)
        self.beta = F.softplus(beta) - self.alpha

    def _ladj(self, r: Tensor, d: int) -> Tensor:
        h = 1 / (self.alpha + r)
        return (d - 1) * torch.log1p(self.beta * h) + torch.log1p(self.beta * self.alpha * h * h)

    def call_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        diff = z - self.z0
        r = torch.linalg.vector_norm(diff, dim=-1)
        y = z + (self.beta / (self.alpha + r)).unsqueeze(-1) * diff
        return y, self._ladj(r, z.shape[-1])

    def _inverse(self, y: Tensor) -> Tensor:
        return self._inverse_and_ladj(y)[0]

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        diff = y - self.z0
        rho = torch.linalg.vector_norm(diff, dim=-1)
        # Roots of r² + q r - αρ = 0 with q = α + β - ρ: the product -αρ <= 0, so exactly one
        # is >= 0; write it as (√(q² + 4αρ) - q)/2 or 2αρ/(√(q² + 4αρ) + q), whichever adds.
        q = self.alpha + self.beta - rho
        root = torch.sqrt(q * q + 4 * self.alpha * rho)
        r = torch.where(q > 0, 2 * self.alpha * rho / (root + q), 0.5 * (root - q))
        scale = (self.alpha + r) / (self.alpha + self.beta + r)
        return self.z0 + scale.unsqueeze(-1) * diff, -self._ladj(r, y.shape[-1])

    def __repr__(self) -> str:
        return f"RadialTransform(d={self.z0.shape[-1]})"
