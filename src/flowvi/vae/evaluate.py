r"""Test-set evaluation of a VAE: the ELBO and :math:`\ln p(x)` by importance sampling."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowvi._checks import check_dim
from flowvi.evidence import Estimate, iwae_bound
from flowvi.metrics import effective_sample_size, khat_summary, psis_khat
from flowvi.vae.model import VAE


@torch.no_grad()
def importance_log_likelihood(
    model: VAE,
    x: Tensor,
    *,
    samples: int = 5000,
    chunk: int = 500,
    batch_size: int = 100,
    progress: bool = False,
) -> Estimate:
    r"""Importance-sampled :math:`\ln p(x_i) \approx \ln \frac1k \sum_{s=1}^k
    p(x_i, z_s) / q(z_s \mid x_i)`, :math:`z_s \sim q(z \mid x_i)`, per datapoint (nats), with
    its standard error and ESS.

    The IWAE bound of Burda et al. (2016) with ``k = samples`` (5000, their test setting): a
    lower bound in expectation, consistent as :math:`k \to \infty`, computed by
    :func:`flowvi.evidence.iwae_bound`: the ``k`` log weights are drawn ``chunk`` at a time for
    ``batch_size`` datapoints, so memory stays at ``chunk × batch_size`` latent samples.

    Args:
        model: the VAE. x: ``(n, D)``. progress: a progress bar over the datapoints (tqdm).

    Returns:
        an :class:`flowvi.evidence.Estimate` with ``log_Z``, ``se`` and ``ess`` of shape
        ``(n,)``, float64.

    Raises:
        ValueError: if ``samples``, ``chunk`` or ``batch_size`` is not a positive integer.
    """
    for value, name in ((samples, "samples"), (chunk, "chunk"), (batch_size, "batch_size")):
        check_dim(value, name)
    parts = []
    bar = tqdm(total=len(x), desc=f"ln p(x), k = {samples}", unit="x", disable=not progress)
    for xb in x.split(batch_size):
        q = model.posterior(model.encoder(xb))

        def draw(m: int, q=q, xb=xb) -> Tensor:
            z, log_q = q.rsample_and_log_prob((m,))
            return model.decoder(z).log_prob(xb) + model.prior().log_prob(z) - log_q

        parts.append(iwae_bound(draw, samples, chunk=chunk))
        bar.update(len(xb))
    bar.close()
    return Estimate(
        log_Z=torch.cat([p.log_Z for p in parts]),
        se=torch.cat([p.se for p in parts]),
        ess=torch.cat([p.ess for p in parts]),
        k=samples,
    )


def log_likelihood(
    model: VAE,
    x: Tensor,
    *,
    samples: int = 5000,
    chunk: int = 500,
    batch_size: int = 100,
    progress: bool = False,
) -> Tensor:
    r"""The estimate of :func:`importance_log_likelihood` alone: :math:`\ln p(x_i)`, ``(n,)``,
    float64 nats (the IWAE bound with ``k = samples``)."""
    return importance_log_likelihood(
        model, x, samples=samples, chunk=chunk, batch_size=batch_size, progress=progress
    ).log_Z


@torch.no_grad()
def importance_diagnostics(
    model: VAE, x: Tensor, *, samples: int = 1000, batch_size: int = 100
) -> dict[str, float | str]:
    r"""PSIS :math:`\hat k` and the importance ESS of :math:`q(z \mid x_i)` against the exact
    posterior :math:`p(z \mid x_i)`, per datapoint, summarized over ``x: (n, D)``.

    Per datapoint, ``samples`` log weights :math:`\ln p(x_i, z) - \ln q(z \mid x_i)` give
    :math:`\hat k_i` (:func:`flowvi.metrics.psis_khat`, arviz) and Kish's ESS; returned are
    :func:`flowvi.metrics.khat_summary` (median, 90th percentile, shares above 0.5 and 0.7, a
    one-line verdict) and ``ess_fraction_mean``, the mean ESS / ``samples``.

    Raises:
        ValueError: if ``samples`` or ``batch_size`` is not a positive integer, or
            ``samples < 5`` (too few for a Pareto fit).
    """
    check_dim(samples, "samples")
    check_dim(batch_size, "batch_size")
    if samples < 5:
        raise ValueError(f"PSIS needs at least 5 samples per datapoint, got {samples}")
    khats, ess = [], []
    for xb in x.split(batch_size):
        log_w = model.log_weights(xb, samples).double()  # (samples, b)
        khats.append(psis_khat(log_w.mT.contiguous()).reshape(-1))
        ess.append(effective_sample_size(log_w).cpu())
    out = khat_summary(torch.cat(khats))
    out["ess_fraction_mean"] = float(torch.cat(ess).mean()) / samples
    out["khat_samples"] = samples
    return out


@torch.no_grad()
def layer_statistics(
    model: VAE, x: Tensor, *, samples: int = 1, batch_size: int = 500
) -> list[dict[str, float]]:
    r"""What each layer of the flow posterior does, over ``x: (n, D)`` and ``samples`` draws
    :math:`z_0 \sim q_0(z \mid x_i)` per datapoint, pushed through the layers in turn.

    One dict per layer ``k`` (an empty list for a diagonal posterior), averaged over the
    ``n × samples`` draws:

    - ``ladj_mean``, ``ladj_sd``: mean and standard deviation of :math:`\ln|\det \partial z_k /
      \partial z_{k-1}|` (nats), the layer's share of :math:`\ln q_0(z_0) - \ln q(z_K)`;
    - ``shift``: the root mean square over coordinates of :math:`(z_k - z_{k-1}) / \sigma(x)`,
      how far the layer moves a draw in standard deviations of the base :math:`q_0`.

    A layer with ``ladj`` ≈ 0 and a large ``shift`` translates each datapoint's posterior
    without reshaping it (a planar layer whose tanh has saturated does this).

    Raises:
        ValueError: if ``samples`` or ``batch_size`` is not a positive integer.
    """
    check_dim(samples, "samples")
    check_dim(batch_size, "batch_size")
    ladjs, shifts = [], []  # per batch: (K, samples × b)
    for xb in x.split(batch_size):
        q = model.q(xb)
        sigma = q.base_dist.stddev
        z = q.base_dist.rsample((samples,))
        ladj_k, shift_k = [], []
        for part in q.flow.parts:
            y, ladj = part.call_and_ladj(z)
            ladj_k.append(torch.broadcast_to(ladj, y.shape[:-1]).reshape(-1))
            shift_k.append(((y - z) / sigma).pow(2).mean(-1).sqrt().reshape(-1))
            z = y
        if ladj_k:
            ladjs.append(torch.stack(ladj_k))
            shifts.append(torch.stack(shift_k))
    if not ladjs:
        return []
    ladj, shift = torch.cat(ladjs, 1).double(), torch.cat(shifts, 1).double()
    return [
        {
            "ladj_mean": float(a.mean()),
            "ladj_sd": float(a.std()) if a.numel() > 1 else math.nan,
            "shift": float(m.mean()),
        }
        for a, m in zip(ladj, shift, strict=True)
    ]


@torch.no_grad()
def mean_elbo(model: VAE, x: Tensor, *, samples: int = 1, batch_size: int = 1000) -> Tensor:
    """The ELBO per datapoint ``(n,)`` (analytic KL where exact), in batches, float64."""
    return torch.cat([model.elbo(xb, samples=samples).double() for xb in x.split(batch_size)])


def mean_and_se(values: Tensor) -> tuple[float, float]:
    """The mean and its standard error ``std / sqrt(n)`` (NaN for one value)."""
    n = values.numel()
    se = float(values.std() / math.sqrt(n)) if n > 1 else math.nan
    return float(values.mean()), se
