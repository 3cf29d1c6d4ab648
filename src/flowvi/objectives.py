"""Objectives as pure functions of log densities (nats); lower is better for every loss here."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def beta_schedule(
    t: int, *, beta0: float = 0.01, anneal_iters: int = 10_000, allow_zero: bool = False
) -> float:
    r"""Inverse temperature :math:`\beta_t = \min(1, \beta_0 + t / T)`.

    Rezende & Mohamed (2015), Eq. 20, where :math:`\beta_0 = 0.01` and :math:`T = 10^4`.

    ``anneal_iters = T = 0`` switches annealing off (:math:`\beta_t = 1`). ``allow_zero``
    accepts :math:`\beta_0 = 0`: a VAE's KL warm-up may start there (Bowman et al. 2016), the
    reverse-KL fit may not (at :math:`\beta = 0` its free energy :math:`E_q[\ln q]` has no
    minimum).

    Raises:
        ValueError: if ``beta0`` is outside ``(0, 1]`` (``[0, 1]`` with ``allow_zero``) or
            ``anneal_iters < 0``.
    """
    if not (0 <= beta0 <= 1 if allow_zero else 0 < beta0 <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"beta0 must lie in {interval}, got {beta0}")
    if anneal_iters < 0:
        raise ValueError(f"anneal_iters must be >= 0, got {anneal_iters}")
    if anneal_iters == 0:
        return 1.0
    return min(1.0, beta0 + t / anneal_iters)


def free_energy(
    log_q: Tensor, log_p: Tensor, beta: float | Tensor = 1.0, *, kept: Tensor | None = None
) -> Tensor:
    r"""Monte Carlo (annealed) free energy :math:`F = E_q[\ln q(z) - \beta \ln \tilde p(z)]`.

    With :math:`\beta = 1`, :math:`F = \mathrm{KL}(q \| p) - \ln Z \ge -\ln Z`: minimizing it is
    reverse-KL fitting (Rezende & Mohamed 2015, Eq. 15 and 20), and :math:`-F` is the ELBO.

    Args:
        log_q: :math:`\ln q(z_s)` of samples :math:`z_s \sim q`, shape ``(n,)``, differentiable
            through the reparameterized samples.
        log_p: unnormalized target log density at the same samples, shape ``(n,)``.
        beta: inverse temperature :math:`\beta_t` (see :func:`beta_schedule`), a number or a
            0-d tensor.
        kept: optional boolean mask ``(n,)``: the mean is over these samples only (those
            left out, e.g. with a non-finite log density, contribute neither value nor
            gradient); NaN if none is kept.

    Returns:
        the sample mean, a scalar in nats.
    """
    terms = log_q - beta * log_p
    if kept is None:
        return terms.mean()
    return torch.where(kept, terms, 0).sum() / kept.sum()


def negative_log_likelihood(log_q: Tensor) -> Tensor:
    r""":math:`-\frac1n \sum_i \ln q(x_i)` on data :math:`x_i \sim p`: forward-KL fitting, up to the
    data entropy (maximum likelihood)."""
    return -log_q.mean()


def elbo(log_lik: Tensor, log_prior: Tensor, log_q: Tensor, *, beta: float = 1.0) -> Tensor:
    r"""Monte Carlo (warmed-up) evidence lower bound per datapoint, in nats.

    .. math:: \mathcal L_\beta(x) = \frac1S \sum_s \big[\ln p(x \mid z_s)
              + \beta (\ln p(z_s) - \ln q(z_s \mid x))\big], \quad z_s \sim q(z \mid x)

    With :math:`\beta = 1` this is the ELBO, :math:`\ln p(x) - \mathrm{KL}(q(z|x) \| p(z|x))
    \le \ln p(x)` (Rezende & Mohamed 2015, Eq. 3); with :math:`\beta < 1` (KL warm-up,
    Bowman et al. 2016; Sønderby et al. 2016) the KL term is down-weighted early in training.
    For a flow posterior, :math:`\ln q = \ln q_0(z_0) - \sum_k \ln|\det J_k|` (their Eq. 13).

    Args:
        log_lik: :math:`\ln p(x \mid z_s)`, shape ``(S, n)`` (``S`` samples per datapoint).
        log_prior: :math:`\ln p(z_s)`, shape ``(S, n)``.
        log_q: :math:`\ln q(z_s \mid x)`, shape ``(S, n)``.
        beta: the weight of the KL term.

    Returns:
        shape ``(n,)``; maximize it (the loss is its negative mean).
    """
    return (log_lik + beta * (log_prior - log_q)).mean(0)


def iwae(log_w: Tensor) -> Tensor:
    r"""Importance-weighted bound :math:`\ln \frac1k \sum_{i=1}^k w_i` per datapoint, in nats.

    :math:`w_i = p(x, z_i) / q(z_i \mid x)`, :math:`z_i \sim q`: Burda et al. (2016), Eq. 8.
    It is the ELBO for ``k = 1``, rises (in expectation) with ``k`` and tends to
    :math:`\ln p(x)` as :math:`k \to \infty`; with ``k = 5000`` it is the usual test
    estimate of :math:`\ln p(x)`. Computed with ``logsumexp``.

    Args:
        log_w: :math:`\ln w_i = \ln p(x, z_i) - \ln q(z_i \mid x)`, shape ``(k, n)``.

    Returns:
        shape ``(n,)``.
    """
    return log_w.logsumexp(0) - math.log(log_w.shape[0])
