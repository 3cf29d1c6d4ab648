"""Objectives as pure functions of log densities (nats); lower is better for every loss here."""

from __future__ import annotations

from torch import Tensor


def beta_schedule(t: int, *, beta0: float = 0.01, anneal_iters: int = 10_000) -> float:
    r"""Inverse temperature :math:`\beta_t = \min(1, \beta_0 + t / T)`.

    Rezende & Mohamed (2015), Eq. 20, where :math:`\beta_0 = 0.01` and :math:`T = 10^4`.

    ``anneal_iters = T = 0`` switches annealing off (:math:`\beta_t = 1`).

    Raises:
        ValueError: if ``beta0`` is outside ``(0, 1]`` or ``anneal_iters < 0``.
    """
    if not 0 < beta0 <= 1:
        raise ValueError(f"beta0 must lie in (0, 1], got {beta0}")
    if anneal_iters < 0:
        raise ValueError(f"anneal_iters must be >= 0, got {anneal_iters}")
    if anneal_iters == 0:
        return 1.0
    return min(1.0, beta0 + t / anneal_iters)


def free_energy(log_q: Tensor, log_p: Tensor, beta: float = 1.0) -> Tensor:
    r"""Monte Carlo (annealed) free energy :math:`F = E_q[\ln q(z) - \beta \ln \tilde p(z)]`.

    With :math:`\beta = 1`, :math:`F = \mathrm{KL}(q \| p) - \ln Z \ge -\ln Z`: minimizing it is
    reverse-KL fitting (Rezende & Mohamed 2015, Eq. 15 and 20), and :math:`-F` is the ELBO.

    Args:
        log_q: :math:`\ln q(z_s)` of samples :math:`z_s \sim q`, shape ``(n,)``, differentiable
            through the reparameterized samples.
        log_p: unnormalized target log density at the same samples, shape ``(n,)``.
        beta: inverse temperature :math:`\beta_t` (see :func:`beta_schedule`).

    Returns:
        the sample mean, a scalar in nats.
    """
    return (log_q - beta * log_p).mean()


def negative_log_likelihood(log_q: Tensor) -> Tensor:
    r""":math:`-\frac1n \sum_i \ln q(x_i)` on data :math:`x_i \sim p`: forward-KL fitting, up to the
    data entropy (maximum likelihood)."""
    return -log_q.mean()
