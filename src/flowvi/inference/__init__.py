"""Classical variational inference (no flows needed): the curriculum's road to flows.

- Conjugate inference for the normal mean with known variance
  (:mod:`flowvi.inference.conjugate`) and the Gaussian KL identities
  (:mod:`flowvi.inference.gaussian`): exact oracles for tests.
- CAVI for the Bayesian mixture of unit-variance Gaussians of Blei, Kucukelbir & McAuliffe (2017,
  Section 3) (:mod:`flowvi.inference.cavi`).
- SVI for the same model (Hoffman et al. 2013) (:mod:`flowvi.inference.svi`).
"""

from flowvi.inference.cavi import CAVIResult, MixtureSample, cavi
from flowvi.inference.cavi import elbo as mixture_elbo
from flowvi.inference.cavi import log_predictive as mixture_log_predictive
from flowvi.inference.cavi import simulate as simulate_mixture
from flowvi.inference.conjugate import NormalMean
from flowvi.inference.gaussian import gaussian_kl, kl_standard_normal
from flowvi.inference.svi import SVIResult, svi

__all__: list[str] = [
    "CAVIResult",
    "MixtureSample",
    "NormalMean",
    "SVIResult",
    "cavi",
    "gaussian_kl",
    "kl_standard_normal",
    "mixture_elbo",
    "mixture_log_predictive",
    "simulate_mixture",
    "svi",
]
