"""Normalized reference targets with ln Z = 0: Gaussian, Gaussian mixture, banana."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from flowvi.targets.base import Target


class Gaussian(Target):
    r""":math:`\mathcal N(\mu, \Sigma)`, normalized (:math:`\ln Z = 0`).

    Args:
        mean: :math:`\mu`, shape ``(d,)``.
        cov: :math:`\Sigma`, shape ``(d, d)``, symmetric positive definite.

    Raises:
        ValueError: if the shapes disagree or ``cov`` is not positive definite.
    """

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        d = mean.shape[-1]
        if mean.shape != (d,) or cov.shape != (d, d):
            raise ValueError(f"mean must be (d,) and cov (d, d); got {mean.shape}, {cov.shape}")
        scale_tril, info = torch.linalg.cholesky_ex(cov)
        if info != 0 or not torch.allclose(cov, cov.T):
            raise ValueError("cov must be symmetric positive definite")
        half = 5 * torch.sqrt(torch.diagonal(cov))
        box = tuple((float(m - h), float(m + h)) for m, h in zip(mean, half, strict=True))
        super().__init__(d, name="gaussian", box=box, log_normalizer=0.0)
        self.register_buffer("mean", mean)
        self.register_buffer("cov", cov)
        self.register_buffer("scale_tril", scale_tril)

    @classmethod
    def default(cls, dim: int = 2) -> Gaussian:
        """Means alternating ±1, unit variances, correlation 0.8^|i-j|."""
        idx = torch.arange(dim, dtype=torch.float64)
        mean = torch.where(idx % 2 == 0, 1.0, -1.0)
        cov = 0.8 ** (idx[:, None] - idx[None, :]).abs()
        return cls(mean, cov)

    def _log_prob(self, z: Tensor) -> Tensor:
        return MultivariateNormal(self.mean.to(z), scale_tril=self.scale_tril.to(z)).log_prob(z)


class GaussianMixture(Target):
    r"""Equal-weight mixture of four isotropic Gaussians (sd 0.5) at :math:`(\pm 2, \pm 2)`.

    Normalized (:math:`\ln Z = 0`); four well-separated modes, the classic trap for the
    mode-seeking reverse KL.
    """

    def __init__(self) -> None:
        super().__init__(2, name="mixture", box=((-4.0, 4.0), (-4.0, 4.0)), log_normalizer=0.0)
        centres = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
        self.register_buffer("centres", centres.double())
        self.sd = 0.5

    def _log_prob(self, z: Tensor) -> Tensor:
        centres = self.centres.to(z)
        mixture = MixtureSameFamily(
            Categorical(logits=torch.zeros(len(centres), dtype=z.dtype, device=z.device)),
            Independent(Normal(centres, self.sd), 1),
        )
        return mixture.log_prob(z)


class Banana(Target):
    r"""A bent Gaussian: :math:`z_1 \sim \mathcal N(0, 1)`, :math:`z_2 | z_1 \sim
    \mathcal N(b (z_1^2 - 1), \sigma^2)`, :math:`b = 0.5`, :math:`\sigma = 0.5`.

    Normalized (:math:`\ln Z = 0`); the conditional mean's curvature makes it non-Gaussian
    while keeping the density exact.
    """

    def __init__(self, curvature: float = 0.5, sd: float = 0.5) -> None:
        super().__init__(2, name="banana", box=((-4.5, 4.5), (-2.5, 6.5)), log_normalizer=0.0)
        self.curvature, self.sd = curvature, sd

    def _log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = z[..., 0], z[..., 1]
        mean2 = self.curvature * (z1 * z1 - 1)
        quad = z1 * z1 + ((z2 - mean2) / self.sd) ** 2
        return -0.5 * quad - math.log(2 * math.pi * self.sd)
