r"""Bayesian models on real data as unnormalized log densities (posteriors up to :math:`\ln Z`).

Each model is first a plain log joint density, the function a user would write
(:func:`eight_schools_log_joint`, :func:`logistic_log_joint`), then a :class:`Target` wrapping it,
so that :func:`flowvi.fit`, :func:`flowvi.targets.get` (``eight-schools``,
``logistic-regression``) and the BBVI estimators of :mod:`flowvi.inference.bbvi` all take it.
Latents live on :math:`\mathbb R^d`: constrained parameters are log-transformed, with the
log-Jacobian added, so the target is the density of the unconstrained vector.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import ExpTransform

from flowvi.targets.base import Target
from flowvi.targets.sites import Site

# Rubin (1981), Gelman et al. BDA3 Table 5.2: estimated effects and standard errors of 8 schools
EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
EIGHT_SCHOOLS_NAMES = ("mu", "log_tau", *(f"theta_t[{j}]" for j in range(8)))
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def eight_schools_log_joint(z: Tensor, y: Tensor, sigma: Tensor) -> Tensor:
    r"""Non-centered eight schools, :math:`\ln p(y, \mu, \ln\tau, \tilde\theta)` in nats.

    .. math::
        \mu \sim \mathcal N(0, 5^2),\quad \tau \sim \mathrm{HalfCauchy}(5),\quad
        \tilde\theta_j \sim \mathcal N(0, 1),\quad
        y_j \sim \mathcal N(\mu + \tau \tilde\theta_j, \sigma_j^2)

    (the model of arviz's ``non_centered_eight`` draws), in ``z = (μ, ln τ, θ̃_1, …, θ̃_8)``:
    the density of :math:`\ln\tau` carries the Jacobian :math:`+\ln\tau`.

    Args:
        z: ``(batch, 10)``.
        y, sigma: the schools' estimates and standard errors, ``(8,)``.

    Returns:
        shape ``(batch,)``.
    """
    mu, log_tau, theta_t = z[..., 0], z[..., 1], z[..., 2:]
    tau = torch.exp(log_tau)
    log_p_mu = -0.5 * (mu / 5.0) ** 2 - math.log(5.0) - _LOG_SQRT_2PI
    # half-Cauchy(5): 2 / (π 5 (1 + (τ/5)²)), times dτ/d ln τ = τ
    log_p_tau = math.log(2 / (math.pi * 5.0)) - torch.log1p((tau / 5.0) ** 2) + log_tau
    log_p_theta = (-0.5 * theta_t**2 - _LOG_SQRT_2PI).sum(-1)
    theta = mu[..., None] + tau[..., None] * theta_t
    log_lik = (-0.5 * ((y - theta) / sigma) ** 2 - torch.log(sigma) - _LOG_SQRT_2PI).sum(-1)
    return log_p_mu + log_p_tau + log_p_theta + log_lik


def logistic_log_joint(z: Tensor, features: Tensor, labels: Tensor, prior_sd: float) -> Tensor:
    r"""Bayesian logistic regression, :math:`\ln p(y, w)` in nats.

    .. math::
        w_j \sim \mathcal N(0, s^2)\ (j = 0..p),\quad
        y_i \sim \mathrm{Bernoulli}(\sigma(w_0 + x_i^\top w_{1:p}))

    with :math:`\ln p(y_i | \eta_i) = y_i \eta_i - \mathrm{softplus}(\eta_i)`.

    Args:
        z: weights ``(batch, p + 1)``, intercept first.
        features: ``(N, p)``; labels: ``(N,)`` of 0/1.
        prior_sd: :math:`s`.

    Returns:
        shape ``(batch,)``.
    """
    eta = z[..., :1] + z[..., 1:] @ features.T  # (batch, N)
    log_lik = (labels * eta - F.softplus(eta)).sum(-1)
    log_prior = (-0.5 * (z / prior_sd) ** 2 - math.log(prior_sd) - _LOG_SQRT_2PI).sum(-1)
    return log_lik + log_prior


class EightSchools(Target):
    """The non-centered eight-schools posterior (:func:`eight_schools_log_joint`) on R^10.

    Coordinates: :data:`EIGHT_SCHOOLS_NAMES` = ``(mu, log_tau, theta_t[0..7])``.
    :meth:`reference` gives arviz's NUTS draws in the same coordinates.
    """

    names = EIGHT_SCHOOLS_NAMES

    def __init__(self) -> None:
        sites = (Site("mu"), Site("tau", (), ExpTransform()), Site("theta_t", (8,)))
        super().__init__(10, name="eight-schools", sites=sites)
        self.register_buffer("y", torch.tensor(EIGHT_SCHOOLS_Y, dtype=torch.float64))
        self.register_buffer("sigma", torch.tensor(EIGHT_SCHOOLS_SIGMA, dtype=torch.float64))

    def _log_prob(self, z: Tensor) -> Tensor:
        return eight_schools_log_joint(z, self.y.to(z), self.sigma.to(z))

    def local(self, z: Tensor) -> Tensor:
        r"""Markov-blanket terms per coordinate, ``(batch, 10)`` (for Rao-Blackwellized BBVI):
        :math:`\mu` and :math:`\ln\tau` appear in every likelihood term, :math:`\tilde\theta_j`
        in its prior and :math:`y_j`'s likelihood only."""
        y, sigma = self.y.to(z), self.sigma.to(z)
        mu, log_tau, theta_t = z[..., 0], z[..., 1], z[..., 2:]
        tau = torch.exp(log_tau)
        theta = mu[..., None] + tau[..., None] * theta_t
        lik = -0.5 * ((y - theta) / sigma) ** 2 - torch.log(sigma) - _LOG_SQRT_2PI  # (batch, 8)
        all_lik = lik.sum(-1)
        log_p_mu = -0.5 * (mu / 5.0) ** 2 - math.log(5.0) - _LOG_SQRT_2PI
        log_p_tau = math.log(2 / (math.pi * 5.0)) - torch.log1p((tau / 5.0) ** 2) + log_tau
        theta_terms = -0.5 * theta_t**2 - _LOG_SQRT_2PI + lik
        return torch.cat(
            [(log_p_mu + all_lik)[..., None], (log_p_tau + all_lik)[..., None], theta_terms], -1
        )

    @staticmethod
    def reference() -> Tensor:
        """arviz's NUTS draws of the non-centered model (4 chains × 500, PyMC), ``(2000, 10)``
        float64 in ``(mu, log_tau, theta_t)``; read offline from the file arviz ships.

        Raises:
            ImportError: if arviz (``pip install flowvi[dev]``) is missing.
        """
        try:
            import arviz
        except ImportError as error:
            raise ImportError(
                "the eight-schools reference draws need arviz: pip install arviz"
            ) from error
        post = arviz.load_arviz_data("non_centered_eight").posterior
        mu = torch.as_tensor(post["mu"].values).reshape(-1, 1)
        tau = torch.as_tensor(post["tau"].values).reshape(-1, 1)
        theta_t = torch.as_tensor(post["theta_t"].values).reshape(-1, 8)
        return torch.cat([mu, torch.log(tau), theta_t], -1).double()


class LogisticRegression(Target):
    r"""Bayesian logistic regression (:func:`logistic_log_joint`) on given data, on
    :math:`\mathbb R^{p+1}`, intercept first.

    Args:
        features: ``(N, p)``; labels: ``(N,)`` of 0/1.
        prior_sd: prior standard deviation :math:`s` of every weight and the intercept.
        name: the target's name.

    Raises:
        ValueError: for mismatched shapes, labels other than 0/1 or ``prior_sd <= 0``.
    """

    def __init__(
        self,
        features: Tensor,
        labels: Tensor,
        *,
        prior_sd: float = 1.0,
        name: str = "logistic-regression",
    ) -> None:
        features = torch.as_tensor(features, dtype=torch.float64)
        labels = torch.as_tensor(labels, dtype=torch.float64)
        if features.dim() != 2 or labels.shape != features.shape[:1]:
            raise ValueError(
                f"features must be (N, p) and labels (N,); got {tuple(features.shape)}, "
                f"{tuple(labels.shape)}"
            )
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("labels must be 0 or 1")
        if not prior_sd > 0:
            raise ValueError(f"prior_sd must be positive, got {prior_sd}")
        p = features.shape[1]
        super().__init__(p + 1, name=name, sites=(Site("intercept"), Site("w", (p,))))
        self.prior_sd = prior_sd
        self.register_buffer("features", features)
        self.register_buffer("labels", labels)
        self.names = ("intercept", *(f"w[{j}]" for j in range(p)))

    @classmethod
    def breast_cancer(cls, *, prior_sd: float = 1.0) -> LogisticRegression:
        """scikit-learn's breast_cancer (569 × 30, offline), every feature standardized to mean
        0 and sd 1 (population sd); label 1 = benign. Prior: :math:`w_j \\sim \\mathcal N(0, 1)`
        by default, intercept included; d = 31."""
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        x = torch.as_tensor(data.data, dtype=torch.float64)
        x = (x - x.mean(0)) / x.std(0, correction=0)
        return cls(x, torch.as_tensor(data.target), prior_sd=prior_sd)

    def _log_prob(self, z: Tensor) -> Tensor:
        return logistic_log_joint(z, self.features.to(z), self.labels.to(z), self.prior_sd)
