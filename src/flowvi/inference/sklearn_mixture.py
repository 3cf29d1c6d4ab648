r"""scikit-learn's ``BayesianGaussianMixture`` set to the model of :mod:`flowvi.inference.cavi`,
as a reference implementation to check CAVI against and to time it beside.

scikit-learn's variational mixture has Dirichlet weights, Wishart (here: Gamma, spherical)
precisions :math:`\lambda_k` and means :math:`\mu_k \sim \mathcal N(m_0, (\beta_0
\lambda_k)^{-1} I)`. It runs exactly the CAVI of Blei et al. (2017, Section 3) when

- ``covariance_type="spherical"``, ``degrees_of_freedom_prior`` :math:`= \nu_0` huge and
  ``covariance_prior`` :math:`= \nu_0` (the precision's prior mean is 1 and its posterior
  :math:`(\nu_0 + \dots)/(\nu_0 + n_k) \to 1`: unit-variance components);
- ``mean_prior = 0``, ``mean_precision_prior`` :math:`= \beta_0 = 1/\sigma^2`;
- ``weight_concentration_prior_type="dirichlet_distribution"`` with a huge concentration
  :math:`\alpha_0` (:math:`\mathbb E\ln\pi_k = \psi(\alpha_0 + n_k) - \psi(K\alpha_0 + N) \to
  -\ln K`: fixed weights :math:`1/K`);
- ``reg_covar = 0``.

With :math:`\nu_0 = \alpha_0 = 10^{14}` the remaining differences are :math:`O(N/10^{14})`, far
below 1e-6. Its ``means_`` are :math:`m_k` and ``1 / mean_precision_`` are :math:`s_k^2`. Its
``lower_bound_`` drops constants (and is a total), so compare fits by
:func:`flowvi.inference.cavi.mixture_elbo` of both.

Its stopping rule does not work in this setting: its lower bound then holds terms of order
:math:`\nu_0 \ln \nu_0 \approx 10^{15}` (the Wishart and Dirichlet normalizers), so it is
rounded to about 0.1-1 nats and its change between iterations is rounding noise, exactly 0 now
and then, which scikit-learn takes for convergence. Run it for a fixed number of iterations
(``tol=0``, ``max_iter`` = the iterations CAVI needed) to compare.
"""

from __future__ import annotations

import numpy as np
from sklearn.mixture import BayesianGaussianMixture
from torch import Tensor

HUGE = 1e14


class FixedStartMixture(BayesianGaussianMixture):
    """A ``BayesianGaussianMixture`` that starts from given responsibilities ``resp0``
    (``(N, K)`` array) instead of drawing its own: the initial global step is its
    ``_initialize(X, resp0)``, as for its built-in initializations. Relies on scikit-learn's
    ``_initialize_parameters`` hook (checked with scikit-learn 1.3-1.9)."""

    def __init__(self, resp0: np.ndarray | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.resp0 = resp0

    @classmethod
    def _get_param_names(cls) -> list[str]:
        return sorted({*BayesianGaussianMixture._get_param_names(), "resp0"})

    def _initialize_parameters(self, X, random_state, xp=None) -> None:
        if self.resp0 is None:
            super()._initialize_parameters(X, random_state)
            return
        if self.resp0.shape != (X.shape[0], self.n_components):
            raise ValueError(
                f"resp0 must have shape {(X.shape[0], self.n_components)}, got {self.resp0.shape}"
            )
        self._initialize(X, np.asarray(self.resp0, dtype=X.dtype))


def sklearn_mixture(
    k: int,
    d: int,
    *,
    prior_std: float,
    resp0: Tensor | np.ndarray | None = None,
    tol: float = 1e-3,
    max_iter: int = 1000,
    init_params: str = "k-means++",
    random_state: int | None = 0,
) -> FixedStartMixture:
    r"""A scikit-learn estimator of the unit-variance mixture with :math:`\mathcal N(0,
    \sigma^2 I)` priors on the means and weights fixed at :math:`1/K` (module docstring).

    Args:
        k, d: components and dimension.
        prior_std: :math:`\sigma`.
        resp0: starting responsibilities ``(N, K)``; ``None``: scikit-learn's ``init_params``.
        tol: scikit-learn's convergence threshold (absolute change of its lower bound).
        max_iter, init_params, random_state: as in scikit-learn.
    """
    if isinstance(resp0, Tensor):
        resp0 = resp0.detach().cpu().double().numpy()
    return FixedStartMixture(
        resp0=resp0,
        n_components=k,
        covariance_type="spherical",
        tol=tol,
        max_iter=max_iter,
        n_init=1,
        init_params=init_params,
        random_state=random_state,
        weight_concentration_prior_type="dirichlet_distribution",
        weight_concentration_prior=HUGE,
        mean_prior=np.zeros(d),
        mean_precision_prior=1 / prior_std**2,
        degrees_of_freedom_prior=HUGE,
        covariance_prior=HUGE,
        reg_covar=0.0,
    )


def sklearn_posterior(estimator: BayesianGaussianMixture) -> tuple[np.ndarray, np.ndarray]:
    r"""``(means, variances)`` of :math:`q(\mu_k) = \mathcal N(m_k, s_k^2 I)` of a fitted
    estimator: ``means_`` and ``1 / mean_precision_``."""
    return estimator.means_, 1 / estimator.mean_precision_
