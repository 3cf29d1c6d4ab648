"""Encoder and decoder networks of a VAE: an MLP to the context h, and likelihood heads."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from flowvi._checks import check_dim


def _mlp(sizes: Sequence[int], *, last_activation: bool) -> nn.Sequential:
    """Linear layers ``sizes[0] -> … -> sizes[-1]`` with ReLUs (also after the last if asked).

    PyTorch's default initialization everywhere: :class:`flowvi.nn.MLP` zeroes its last layer
    (a flow conditioner starting at the identity), which would give an encoder a constant zero
    context whose ReLU passes no gradient.
    """
    for size in sizes:
        check_dim(size, "layer size")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """The inference network's trunk: ``x: (*batch, D) -> h: (*batch, hidden[-1])``.

    ``h`` (after a ReLU) is the context of the posterior: the base's mean and scale heads and
    every amortized flow layer read it (see :func:`flowvi.vae.make_posterior`).

    Args:
        D: data dimension.
        hidden: hidden layer sizes (at least one); ``hidden[-1]`` is the context size.

    Raises:
        ValueError: for an empty ``hidden`` or a size that is not a positive integer.
    """

    def __init__(self, D: int, hidden: Sequence[int] = (300, 300)) -> None:
        super().__init__()
        if len(hidden) == 0:
            raise ValueError("the encoder needs at least one hidden layer (its context h)")
        self.context_dim = hidden[-1]
        self.net = _mlp([D, *hidden], last_activation=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BernoulliDecoder(nn.Module):
    r""":math:`p(x \mid z) = \prod_j \mathrm{Bernoulli}(x_j; \sigma(\ell_j(z)))` for binary data.

    ``forward(z: (*batch, d))`` returns an ``Independent(Bernoulli(logits), 1)`` with batch
    shape ``*batch`` and event shape ``(D,)``; its ``log_prob`` is the negative binary
    cross-entropy summed over pixels (nats), computed from logits (stable).

    Args:
        d: latent size. D: data dimension. hidden: hidden sizes (may be empty: linear).
    """

    def __init__(self, d: int, D: int, hidden: Sequence[int] = (300, 300)) -> None:
        super().__init__()
        self.net = _mlp([d, *hidden, D], last_activation=False)

    def init_bias(self, mean: Tensor) -> None:
        """Start the output bias at the logits of the training data's pixel means ``(D,)``
        (clamped to [1e-3, 1 - 1e-3]), so the first decoder already predicts the mean image."""
        p = mean.clamp(1e-3, 1 - 1e-3).to(self.net[-1].bias)
        with torch.no_grad():
            self.net[-1].bias.copy_(torch.logit(p))

    def forward(self, z: Tensor) -> Distribution:
        return Independent(Bernoulli(logits=self.net(z), validate_args=False), 1)


class LinearGaussianDecoder(nn.Module):
    r""":math:`p(x \mid z) = \mathcal N(x; Wz + b, \sigma^2 I)`: the linear-Gaussian model.

    With the prior :math:`\mathcal N(0, I)` both the evidence and the posterior are Gaussian in
    closed form (:meth:`log_evidence`, :meth:`posterior`), which makes it the reference model
    for checking bounds and posteriors. ``W: (D, d)``, ``b: (D,)`` and ``sigma`` are buffers
    (a frozen decoder).
    """

    def __init__(self, W: Tensor, b: Tensor, sigma: float) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.register_buffer("sigma", torch.tensor(float(sigma), dtype=W.dtype))

    def forward(self, z: Tensor) -> Distribution:
        return Independent(Normal(z @ self.W.mT + self.b, self.sigma), 1)

    def log_evidence(self, x: Tensor) -> Tensor:
        r""":math:`\ln p(x) = \ln \mathcal N(x; b, WW^\top + \sigma^2 I)`, shape ``(*batch,)``."""
        D = self.W.shape[0]
        cov = self.W @ self.W.mT + self.sigma**2 * torch.eye(D, dtype=self.W.dtype)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x: Tensor) -> torch.distributions.MultivariateNormal:
        r""":math:`p(z \mid x) = \mathcal N(\Sigma W^\top (x - b) / \sigma^2, \Sigma)`,
        :math:`\Sigma = (I + W^\top W / \sigma^2)^{-1}`; batch shape ``*batch``."""
        d = self.W.shape[1]
        precision = torch.eye(d, dtype=self.W.dtype) + self.W.mT @ self.W / self.sigma**2
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ self.W / self.sigma**2 @ cov
        return torch.distributions.MultivariateNormal(mean, cov)
