r"""Exact Bayesian inference for the normal mean with known variance: the conjugate oracle.

Model (observations with ``event`` coordinates, each coordinate an independent copy):

.. math::

    \mu \sim \mathcal N(\mu_0, \tau_0^2), \qquad x_i \mid \mu \sim \mathcal N(\mu, \sigma^2),
    \quad i = 1, \dots, n.

With :math:`\bar x = \frac1n \sum_i x_i` and :math:`S = \sum_i (x_i - \bar x)^2`:

1. likelihood :math:`\ln p(x \mid \mu) = -\frac n2 \ln(2\pi\sigma^2) - \frac{S + n(\bar x -
   \mu)^2}{2\sigma^2}`; maximum-likelihood estimate :math:`\hat\mu = \bar x`;
2. posterior :math:`\mu \mid x \sim \mathcal N(\mu_n, \tau_n^2)` with precision
   :math:`\tau_n^{-2} = \tau_0^{-2} + n\sigma^{-2}` and mean
   :math:`\mu_n = \tau_n^2 (\mu_0 / \tau_0^2 + n \bar x / \sigma^2)`; the MAP estimate is
   :math:`\mu_n` (a Gaussian's mode is its mean);
3. posterior predictive :math:`x^* \mid x \sim \mathcal N(\mu_n, \sigma^2 + \tau_n^2)`;
4. evidence :math:`\ln p(x) = \ln p(x \mid \mu) + \ln p(\mu) - \ln p(\mu \mid x)` at any
   :math:`\mu` (Bayes' rule; taken at :math:`\mu_n`), i.e. :math:`x \sim \mathcal N(\mu_0
   \mathbf 1, \sigma^2 I + \tau_0^2 \mathbf 1 \mathbf 1^\top)`;
5. the ELBO of a Gaussian guide :math:`q = \mathcal N(m, s^2)`, in closed form:
   :math:`\mathcal L(q) = -\frac n2 \ln(2\pi\sigma^2) - \frac{S + n((\bar x - m)^2 + s^2)}
   {2\sigma^2} - \frac12 \ln(2\pi\tau_0^2) - \frac{(m - \mu_0)^2 + s^2}{2\tau_0^2}
   + \frac12 \ln(2\pi e s^2)`, and :math:`\ln p(x) - \mathcal L(q) = \mathrm{KL}(q \,\|\,
   p(\mu \mid x)) \ge 0`, zero exactly at the posterior.

These are exact oracles: a variational method fitted to this model must recover
:meth:`NormalMean.posterior` and :meth:`NormalMean.log_evidence`.

References:
    Gelman et al., *Bayesian Data Analysis* (3rd ed., 2013), Section 2.5.
    Bishop, *Pattern Recognition and Machine Learning* (2006), Section 2.3.6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class NormalMean:
    r"""The normal mean with known variance: :math:`\mu \sim \mathcal N(\mu_0, \tau_0^2)`,
    :math:`x_i \mid \mu \sim \mathcal N(\mu, \sigma^2)` i.i.d.

    Data ``x`` have shape ``(n, *event)``: ``n`` observations, each of ``event`` independent
    coordinates (``event = ()`` for scalar data), every coordinate with its own mean
    :math:`\mu_j` and the same :math:`\sigma, \mu_0, \tau_0`. All log densities are in nats and
    summed over the event coordinates.

    Args:
        sigma: the known observation standard deviation :math:`\sigma > 0`.
        prior_mean: :math:`\mu_0`.
        prior_std: :math:`\tau_0 > 0`.

    Example:
        >>> import torch
        >>> from flowvi.inference import NormalMean
        >>> model = NormalMean(sigma=2.0, prior_mean=0.0, prior_std=1.0)
        >>> x = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
        >>> model.posterior(x).mean  # μ_n = (0/1 + 3·2/4) / (1 + 3/4)
        tensor(0.8571, dtype=torch.float64)

    Raises:
        ValueError: if ``sigma`` or ``prior_std`` is not a positive finite number, or
            ``prior_mean`` is not finite.
    """

    sigma: float
    prior_mean: float = 0.0
    prior_std: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sigma", "prior_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not (isinstance(self.prior_mean, (int, float)) and math.isfinite(self.prior_mean)):
            raise ValueError(f"prior_mean must be a finite number, got {self.prior_mean!r}")

    # ------------------------------------------------------------------ sufficient statistics

    @staticmethod
    def _stats(x: Tensor) -> tuple[int, Tensor, Tensor]:
        """``(n, x̄, S)``: count, mean and centred sum of squares over dim 0, ``event``-shaped."""
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 1:
            raise ValueError("x must be a tensor of shape (n, *event) with n >= 1")
        if not x.is_floating_point():
            x = x.double()
        if not torch.isfinite(x).all():
            raise ValueError("x holds NaN or infinite values")
        mean = x.mean(0)
        return x.shape[0], mean, (x - mean).square().sum(0)

    @staticmethod
    def _event_sum(value: Tensor, event_dims: int) -> Tensor:
        return value.sum(tuple(range(-event_dims, 0))) if event_dims else value

    # ------------------------------------------------------------------ likelihood and MLE

    def log_likelihood(self, x: Tensor, mu: Tensor) -> Tensor:
        r""":math:`\ln p(x \mid \mu) = \sum_i \ln \mathcal N(x_i; \mu, \sigma^2)` in nats.

        Args:
            x: data, shape ``(n, *event)``.
            mu: means, shape ``(*batch, *event)``.

        Returns:
            shape ``(*batch,)``, summed over observations and event coordinates.
        """
        n, mean, ss = self._stats(x)
        var = self.sigma**2
        value = -0.5 * n * (LOG_2PI + math.log(var)) - (ss + n * (mean - mu).square()) / (2 * var)
        return self._event_sum(value, x.dim() - 1)

    def mle(self, x: Tensor) -> Tensor:
        r"""The maximum-likelihood estimate :math:`\hat\mu = \bar x`, shape ``event``."""
        return self._stats(x)[1]

    # ------------------------------------------------------------------ posterior

    def posterior_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(μ_n, τ_n)``: the posterior mean and standard deviation, each shape ``event``."""
        n, mean, _ = self._stats(x)
        precision = 1 / self.prior_std**2 + n / self.sigma**2
        loc = (self.prior_mean / self.prior_std**2 + n * mean / self.sigma**2) / precision
        return loc, torch.full_like(loc, precision**-0.5)

    def posterior(self, x: Tensor) -> Distribution:
        r"""The exact posterior :math:`p(\mu \mid x) = \mathcal N(\mu_n, \tau_n^2)`:
        a ``Normal`` for scalar data, an ``Independent(Normal)`` over the event otherwise."""
        return _independent(*self.posterior_params(x), x.dim() - 1)

    def map(self, x: Tensor) -> Tensor:
        r"""The maximum a posteriori estimate, :math:`\mu_n` (the posterior is Gaussian)."""
        return self.posterior_params(x)[0]

    def posterior_predictive(self, x: Tensor) -> Distribution:
        r"""The distribution of a new observation given ``x``:
        :math:`\mathcal N(\mu_n, \sigma^2 + \tau_n^2)` per coordinate."""
        loc, scale = self.posterior_params(x)
        return _independent(loc, (self.sigma**2 + scale.square()).sqrt(), x.dim() - 1)

    def prior(self, like: Tensor) -> Distribution:
        r"""The prior :math:`\mathcal N(\mu_0, \tau_0^2)` for means shaped like ``like[0]``
        (``like``: data, shape ``(n, *event)``), in its dtype and on its device."""
        event = like.shape[1:]
        dtype = like.dtype if like.is_floating_point() else torch.float64
        loc = torch.full(event, float(self.prior_mean), dtype=dtype, device=like.device)
        return _independent(loc, torch.full_like(loc, self.prior_std), len(event))

    # ------------------------------------------------------------------ evidence and ELBO

    def log_evidence(self, x: Tensor) -> Tensor:
        r"""The log marginal likelihood :math:`\ln p(x)` in nats, a scalar (summed over event
        coordinates): Bayes' rule at :math:`\mu = \mu_n`."""
        loc, scale = self.posterior_params(x)
        log_prior = Normal(torch.full_like(loc, self.prior_mean), self.prior_std).log_prob(loc)
        log_post = Normal(loc, scale).log_prob(loc)
        return self.log_likelihood(x, loc) + self._event_sum(log_prior - log_post, x.dim() - 1)

    def elbo(self, x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        r"""The exact ELBO of the Gaussian guide :math:`q(\mu) = \mathcal N(m, s^2)` (5. above),
        nats.

        Args:
            x: data, shape ``(n, *event)``.
            loc: :math:`m`, shape ``(*batch, *event)``.
            scale: :math:`s > 0`, broadcastable to ``loc``.

        Returns:
            shape ``(*batch,)``; equals :meth:`log_evidence` exactly when ``q`` is the posterior.
        """
        n, mean, ss = self._stats(x)
        var, prior_var = self.sigma**2, self.prior_std**2
        s2 = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device).square()
        expected_loglik = -0.5 * n * (LOG_2PI + math.log(var)) - (
            ss + n * ((mean - loc).square() + s2)
        ) / (2 * var)
        expected_logprior = -0.5 * (LOG_2PI + math.log(prior_var)) - (
            (loc - self.prior_mean).square() + s2
        ) / (2 * prior_var)
        entropy = 0.5 * (LOG_2PI + 1 + s2.log())
        value = expected_loglik + expected_logprior + entropy
        return self._event_sum(value, x.dim() - 1)


def _independent(loc: Tensor, scale: Tensor, event_dims: int) -> Distribution:
    base = Normal(loc, scale)
    return Independent(base, event_dims) if event_dims else base
