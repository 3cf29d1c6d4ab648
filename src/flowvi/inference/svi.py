r"""Stochastic variational inference (SVI; Hoffman, Blei, Wang & Paisley 2013) for the Bayesian
mixture of unit-variance Gaussians of :mod:`flowvi.inference.cavi`.

The global factors :math:`q(\mu_k) = \mathcal N(m_k, s_k^2 I)` are exponential-family in the
statistics :math:`(\mu_k, -\tfrac12\|\mu_k\|^2)`, with natural parameters
:math:`\lambda_k = (m_k / s_k^2,\; 1/s_k^2)` (a precision-weighted mean and a precision). Step
:math:`t` of SVI (their Algorithm 1, Eq. 25-26):

1. draw a minibatch :math:`B` of the data;
2. local step on the batch: :math:`\varphi_i` for :math:`i \in B` from the current
   :math:`q(\mu)` (the CAVI local update; here exact in one step, as :math:`\varphi_i` depends on
   the global factors alone);
3. the intermediate global parameters, as if the batch were replicated :math:`N/|B|` times:
   :math:`\hat\lambda_k = \big(\tfrac N{|B|} \sum_{i \in B} \varphi_{ik} x_i,\;
   1/\sigma^2 + \tfrac N{|B|} \sum_{i \in B} \varphi_{ik}\big)`;
4. the natural-gradient step :math:`\lambda \leftarrow (1 - \rho_t)\lambda + \rho_t\hat\lambda`
   (the natural gradient of the ELBO is :math:`\hat\lambda - \lambda` in expectation), with
   Robbins-Monro steps :math:`\rho_t = (t + \tau)^{-\kappa}`, :math:`t = 1, 2, \dots`,
   :math:`\tau \ge 0`, :math:`\kappa \in (0.5, 1]`.

:math:`\mathbb E_B[\hat\lambda] = ` the CAVI global update, so CAVI's optimum is SVI's fixed
point in expectation; with :math:`|B| = N` and :math:`\rho = 1` a step *is* a CAVI sweep. The
ELBO reported along the way is :math:`\max_\varphi \mathcal L(\varphi, q(\mu))` on the full data
(:func:`flowvi.inference.cavi.mixture_elbo` with ``log_resp=None``), a function of the global
factors.

References:
    Hoffman, Blei, Wang & Paisley, "Stochastic variational inference", JMLR 14 (2013),
    Section 2.4 and Algorithm 1.
    Robbins & Monro, "A stochastic approximation method", Ann. Math. Stat. (1951).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowvi._checks import check_choice, check_dim
from flowvi.inference.cavi import (
    INITS,
    check_data,
    check_prior_std,
    initial_responsibilities,
    local_step,
    log_predictive,
    mixture_elbo,
)


def step_size(t: int | Tensor, *, tau: float, kappa: float) -> float | Tensor:
    r"""The Robbins-Monro step :math:`\rho_t = (t + \tau)^{-\kappa}` for step ``t >= 1``."""
    return (t + tau) ** -kappa


def natural_params(means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`\lambda = (m / s^2, 1/s^2)` of :math:`q(\mu_k) = \mathcal N(m_k, s_k^2 I)`:
    shapes ``(K, d)`` and ``(K,)``."""
    precision = 1 / variances
    return means * precision[:, None], precision


def intermediate_params(
    batch: Tensor, means: Tensor, variances: Tensor, *, n: int, prior_std: float
) -> tuple[Tensor, Tensor]:
    r"""Steps 2-3: :math:`\hat\lambda` from a minibatch, scaled by :math:`N/|B|`.

    Args:
        batch: the minibatch, shape ``(B, d)``.
        means, variances: the current :math:`q(\mu)`, shapes ``(K, d)``, ``(K,)``.
        n: the data set size :math:`N`.
        prior_std: :math:`\sigma`.

    Returns:
        ``(η, precision)``: shapes ``(K, d)``, ``(K,)``.
    """
    resp = local_step(batch, means, variances)[0]  # φᵀ, (K, B)
    scale = n / batch.shape[0]
    return scale * (resp @ batch), 1 / prior_std**2 + scale * resp.sum(1)


def starting_params(x: Tensor, resp0: Tensor, *, prior_std: float) -> tuple[Tensor, Tensor]:
    r"""The starting :math:`\lambda`: the global step from the starting responsibilities, with
    the rows they weight taken as a minibatch, i.e. scaled by :math:`N / \#\{i: \sum_k
    \varphi^{(0)}_{ik} > 0\}`.

    With normalized rows on all the data this is CAVI's global step. A start at ``K`` points
    (one-hot rows there, zero elsewhere: :func:`~flowvi.inference.cavi.initial_responsibilities`
    with ``"kmeans++"`` or ``"data"``) is scaled by :math:`N/K`, so that the starting precisions
    are on the scale of the data's, :math:`\approx N/K`, rather than :math:`\approx 1`: else
    the first steps, whose :math:`\hat\lambda` carry precisions :math:`\approx N/K`, would
    set the means from the first few minibatches alone, whatever :math:`\rho_t`, and with small
    minibatches a component can be emptied early for good.

    Args:
        x: data, shape ``(N, d)``.
        resp0: starting responsibilities, shape ``(N, K)``, non-negative.
        prior_std: :math:`\sigma`.

    Returns:
        ``(η, precision)``: shapes ``(K, d)``, ``(K,)``.
    """
    rows = int((resp0.sum(1) > 0).sum())
    if rows == 0:
        raise ValueError("the starting responsibilities are all zero")
    scale = x.shape[0] / rows
    return scale * (resp0.T @ x), 1 / prior_std**2 + scale * resp0.sum(0)


@dataclass
class SVIResult:
    r"""An SVI fit of :math:`q(\mu_k) = \mathcal N(m_k, s_k^2 I)`.

    Attributes:
        means, variances: shapes ``(K, d)``, ``(K,)``, float64.
        elbo: :math:`\max_\varphi \mathcal L` on the full data at the end, total nats.
        steps: SVI steps taken; ``examples``: data points drawn (``steps × batch_size``).
        trace: one row per evaluation, shape ``(evaluations, 4)``: step, examples seen,
            :math:`\rho_t` of that step, full-data ELBO (total nats); the first row (step 0) is
            the initialization.
        n: data set size :math:`N`; ``batch_size``, ``tau``, ``kappa``, ``prior_std``: the
            settings.
    """

    means: Tensor
    variances: Tensor
    elbo: float
    steps: int
    examples: int
    trace: Tensor
    n: int
    batch_size: int
    tau: float
    kappa: float
    prior_std: float

    @property
    def elbo_per_datum(self) -> float:
        return self.elbo / self.n

    def log_predictive(self, x: Tensor) -> Tensor:
        """Log predictive density of each row of ``x`` (``(n, d)``), shape ``(n,)``, nats."""
        return log_predictive(x, self.means, self.variances)


def svi(
    x: Tensor,
    k: int,
    *,
    prior_std: float = 5.0,
    batch_size: int = 100,
    steps: int = 1000,
    tau: float = 1.0,
    kappa: float = 0.7,
    init: str | Tensor = "kmeans++",
    evaluations: int = 20,
    seed: int = 0,
) -> SVIResult:
    r"""Fit the mixture by SVI from minibatches of ``x``.

    Minibatches are consecutive slices of a fresh random permutation each epoch (every point
    once per epoch); a batch that would straddle two epochs is taken from the new one, so every
    batch has exactly ``batch_size`` points and :math:`\hat\lambda` is unbiased. The full-data
    ELBO is evaluated at ``evaluations`` steps spaced evenly on a log scale (and at step 0 and
    the last step); it costs a full pass, so keep ``evaluations`` small for large ``N``.

    Args:
        x: data, shape ``(N, d)`` (converted to float64).
        k: number of components ``K``.
        prior_std: :math:`\sigma`.
        batch_size: :math:`|B|` (at most ``N``).
        steps: SVI steps.
        tau, kappa: the step sizes :math:`\rho_t = (t + \tau)^{-\kappa}`, :math:`\tau \ge 0`,
            :math:`\kappa \in (0.5, 1]`.
        init: as for :func:`flowvi.inference.cavi.cavi`: one of
            :data:`~flowvi.inference.cavi.INITS` or starting responsibilities ``(N, K)``; the
            starting :math:`q(\mu)` is :func:`starting_params` of them.
        evaluations: number of full-data ELBO evaluations along the way (0: only the start and
            the end).
        seed: seed of the initialization and of the minibatches.

    Returns:
        an :class:`SVIResult`.

    Raises:
        ValueError: for invalid data, ``K``, ``prior_std``, ``batch_size`` (not in
            ``[1, N]``), ``steps``, ``tau < 0``, ``kappa`` outside ``(0.5, 1]``, ``init``.
    """
    x = check_data(x)
    n = x.shape[0]
    check_dim(k, "number of components K")
    prior_std = check_prior_std(prior_std)
    check_dim(batch_size, "batch_size")
    check_dim(steps, "steps")
    if batch_size > n:
        raise ValueError(f"batch_size = {batch_size} exceeds the data size N = {n}")
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    if not 0.5 < kappa <= 1:
        raise ValueError(f"kappa must lie in (0.5, 1] (Robbins-Monro), got {kappa!r}")
    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 0:
        raise ValueError(f"evaluations must be an integer >= 0, got {evaluations!r}")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if isinstance(init, Tensor):
        resp0 = init.to(x)
        if resp0.shape != (n, k) or not (torch.isfinite(resp0).all() and (resp0 >= 0).all()):
            raise ValueError(f"init responsibilities must be finite, >= 0, of shape {(n, k)}")
    else:
        check_choice(init, INITS, "init")
        resp0 = initial_responsibilities(x, k, init=init, generator=generator)
    eta, precision = starting_params(x, resp0, prior_std=prior_std)
    means, variances = eta / precision[:, None], 1 / precision

    at = _evaluation_steps(steps, evaluations)
    rows = [(0, 0, math.nan, mixture_elbo(x, means, variances, prior_std=prior_std).item())]
    order, cursor = torch.randperm(n, generator=generator, device=x.device), 0
    for t in range(1, steps + 1):
        if cursor + batch_size > n:  # a new epoch
            order, cursor = torch.randperm(n, generator=generator, device=x.device), 0
        batch = x[order[cursor : cursor + batch_size]]
        cursor += batch_size
        eta_hat, precision_hat = intermediate_params(
            batch, means, variances, n=n, prior_std=prior_std
        )
        rho = step_size(t, tau=tau, kappa=kappa)
        eta = torch.lerp(eta, eta_hat, rho)  # (1 − ρ)λ + ρλ̂
        precision = torch.lerp(precision, precision_hat, rho)
        means, variances = eta / precision[:, None], 1 / precision
        if t in at:
            value = mixture_elbo(x, means, variances, prior_std=prior_std).item()
            rows.append((t, t * batch_size, rho, value))
    return SVIResult(
        means=means,
        variances=variances,
        elbo=rows[-1][3],
        steps=steps,
        examples=steps * batch_size,
        trace=torch.tensor(rows, dtype=torch.float64),
        n=n,
        batch_size=batch_size,
        tau=tau,
        kappa=kappa,
        prior_std=prior_std,
    )


def _evaluation_steps(steps: int, evaluations: int) -> set[int]:
    """About ``evaluations`` steps in ``[1, steps]`` spaced evenly in log scale, and ``steps``."""
    if evaluations <= 0:
        return {steps}
    grid = torch.logspace(0, math.log10(steps), evaluations, dtype=torch.float64)
    return {round(v) for v in grid.tolist()} | {steps}
