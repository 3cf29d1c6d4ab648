r"""Test-set evaluation of a VAE: the ELBO and :math:`\ln p(x)` by importance sampling."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowvi._checks import check_dim
from flowvi.vae.model import VAE


@torch.no_grad()
def log_likelihood(
    model: VAE, x: Tensor, *, samples: int = 5000, chunk: int = 500, batch_size: int = 100
) -> Tensor:
    r"""Importance-sampled :math:`\ln p(x_i) \approx \ln \frac1k \sum_{s=1}^k
    p(x_i, z_s) / q(z_s \mid x_i)`, :math:`z_s \sim q(z \mid x_i)`, per datapoint (nats).

    The IWAE bound of Burda et al. (2016) with ``k = samples`` (5000, their test setting): a
    lower bound in expectation, consistent as :math:`k \to \infty`. The ``k`` log weights are
    drawn ``chunk`` at a time for ``batch_size`` datapoints and combined by ``logsumexp``, so
    memory stays at ``chunk × batch_size`` latent samples whatever ``k``.

    Args:
        model: the VAE. x: ``(n, D)``.

    Returns:
        shape ``(n,)``, float64.

    Raises:
        ValueError: if ``samples``, ``chunk`` or ``batch_size`` is not a positive integer.
    """
    for value, name in ((samples, "samples"), (chunk, "chunk"), (batch_size, "batch_size")):
        check_dim(value, name)
    out = []
    for xb in x.split(batch_size):
        h = model.encoder(xb)
        q = model.posterior(h)
        parts = []
        for start in range(0, samples, chunk):
            z, log_q = q.rsample_and_log_prob((min(chunk, samples - start),))
            log_w = model.decoder(z).log_prob(xb) + model.prior().log_prob(z) - log_q
            parts.append(log_w.double().logsumexp(0))
        out.append(torch.stack(parts).logsumexp(0) - math.log(samples))
    return torch.cat(out)


@torch.no_grad()
def mean_elbo(model: VAE, x: Tensor, *, samples: int = 1, batch_size: int = 1000) -> Tensor:
    """The ELBO per datapoint ``(n,)`` (analytic KL where exact), in batches, float64."""
    return torch.cat([model.elbo(xb, samples=samples).double() for xb in x.split(batch_size)])


def mean_and_se(values: Tensor) -> tuple[float, float]:
    """The mean and its standard error ``std / sqrt(n)`` (NaN for one value)."""
    n = values.numel()
    se = float(values.std() / math.sqrt(n)) if n > 1 else math.nan
    return float(values.mean()), se
