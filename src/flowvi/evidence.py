r"""Importance-sampling estimates of a normalizing constant: the IWAE bound for any (p, q) pair.

One estimator serves a VAE's :math:`\ln p(x) = \ln \int p(x, z)\,dz` (one constant per
datapoint) and an unnormalized target's :math:`\ln Z = \ln \int \tilde p(z)\,dz`: draw
:math:`z_i \sim q`, weigh them by :math:`w_i = \tilde p(z_i) / q(z_i)` and report

.. math:: \hat{\mathcal L}_k = \ln \frac1k \sum_{i=1}^k w_i,

the importance-weighted bound of Burda et al. (2016), Eq. 8: :math:`E[\hat{\mathcal L}_k] \le
\ln Z` (Jensen), non-decreasing in ``k``, and consistent as :math:`k \to \infty`.

Its standard error is the delta-method one, :math:`\mathrm{se}(\ln \bar w) \approx
\mathrm{sd}(w) / (\sqrt k\, \bar w)`, computed from :math:`\sum w` and :math:`\sum w^2` in log
space. The same two sums give Kish's effective sample size :math:`(\sum w)^2 / \sum w^2`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flowvi._checks import check_dim


@dataclass(frozen=True)
class Estimate:
    r"""A log normalizing constant estimated from ``k`` log weights per constant.

    Attributes:
        log_Z: :math:`\ln \frac1k \sum_i w_i`, shape ``(*batch,)``, float64, nats.
        se: its delta-method standard error, ``(*batch,)`` (NaN for ``k = 1``).
        ess: Kish's effective sample size :math:`(\sum w)^2 / \sum w^2`, ``(*batch,)``.
        k: the number of weights per constant.
    """

    log_Z: Tensor
    se: Tensor
    ess: Tensor
    k: int


def _from_sums(lse1: Tensor, lse2: Tensor, k: int) -> Estimate:
    """The estimate from ``lse1 = logsumexp(ln w)`` and ``lse2 = logsumexp(2 ln w)``."""
    log_z = lse1 - math.log(k)
    # relative variance of w: (mean(w^2) / mean(w)^2 - 1) * k / (k - 1), the unbiased one
    ratio = torch.exp(lse2 - 2 * lse1 + math.log(k))  # mean(w^2) / mean(w)^2, >= 1
    if k > 1:
        se = ((ratio - 1).clamp_min(0) / (k - 1)).sqrt()
    else:
        se = torch.full_like(log_z, math.nan)
    return Estimate(log_Z=log_z, se=se, ess=torch.exp(2 * lse1 - lse2), k=k)


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Estimate:
    r""":math:`\ln \frac1k \sum_i w_i` over ``dim`` of ``log_w`` (``k = log_w.shape[dim]``),
    with its delta-method standard error and ESS (see the module docstring), in float64.

    Raises:
        ValueError: if ``log_w`` is empty along ``dim``.
    """
    k = log_w.shape[dim]
    if k == 0:
        raise ValueError("log_mean_exp needs at least one log weight along dim")
    log_w = log_w.double()
    return _from_sums(log_w.logsumexp(dim), (2 * log_w).logsumexp(dim), k)


@torch.no_grad()
def iwae_bound(draw: Callable[[int], Tensor], k: int, *, chunk: int = 500) -> Estimate:
    r"""The IWAE bound :math:`\ln \frac1k \sum_{i=1}^k w_i` (Burda et al. 2016, Eq. 8), drawn
    ``chunk`` weights at a time.

    Only two running ``logsumexp`` s (of :math:`\ln w` and :math:`2 \ln w`) are kept, so memory
    is that of one chunk whatever ``k``; the chunks consume the random stream in order, so the
    estimate does not depend on ``chunk`` for a fixed seed.

    Args:
        draw: ``draw(m)`` returns ``m`` fresh log weights :math:`\ln \tilde p(z_i) - \ln q(z_i)`,
            :math:`z_i \sim q`, per constant: shape ``(m, *batch)``.
        k: number of weights per constant. chunk: weights drawn per call of ``draw``.

    Returns:
        an :class:`Estimate` with ``log_Z: (*batch,)`` in nats.

    Raises:
        ValueError: if ``k`` or ``chunk`` is not a positive integer, or ``draw`` returns the
            wrong number of weights.
    """
    check_dim(k, "number of importance samples k")
    check_dim(chunk, "chunk")
    lse1 = lse2 = None
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        log_w = draw(m).double()
        if log_w.shape[0] != m:
            raise ValueError(f"draw({m}) returned {log_w.shape[0]} log weights, expected {m}")
        a, b = log_w.logsumexp(0), (2 * log_w).logsumexp(0)
        lse1 = a if lse1 is None else torch.logaddexp(lse1, a)
        lse2 = b if lse2 is None else torch.logaddexp(lse2, b)
    return _from_sums(lse1, lse2, k)


@torch.no_grad()
def target_iwae(
    q, log_prob: Callable[[Tensor], Tensor], k: int, *, chunk: int = 10_000
) -> Estimate:
    r"""The IWAE estimate of :math:`\ln Z = \ln \int \tilde p(z)\,dz` of an unnormalized
    target from a fitted ``q`` (any object with ``rsample_and_log_prob``, e.g. a
    :class:`flowvi.flows.NormalizingFlow`): :math:`\ln \frac1k \sum_i \tilde p(z_i) / q(z_i)`.

    Args:
        q: the proposal. log_prob: :math:`\ln \tilde p`, ``(*s, d) -> (*s,)`` (e.g. a
            :class:`flowvi.targets.Target`). k: number of samples. chunk: samples at a time.

    Returns:
        an :class:`Estimate` with a scalar ``log_Z`` (nats), a lower bound in expectation.
    """

    def draw(m: int) -> Tensor:
        z, log_q = q.rsample_and_log_prob((m,))
        return log_prob(z) - log_q

    return iwae_bound(draw, k, chunk=chunk)
