"""Classical variational inference (no flows needed): the curriculum's road to flows.

- Conjugate inference for the normal mean with known variance
  (:mod:`flowvi.inference.conjugate`) and the Gaussian KL identities
  (:mod:`flowvi.inference.gaussian`): exact oracles for tests.
- CAVI for the Bayesian mixture of unit-variance Gaussians of Blei, Kucukelbir & McAuliffe (2017,
  Section 3) (:mod:`flowvi.inference.cavi`).
- SVI for the same model (Hoffman et al. 2013) (:mod:`flowvi.inference.svi`).
- BBVI (Ranganath et al. 2014) for any log joint and a mean-field guide, discrete latents
  included: score-function gradients with Rao-Blackwellization and control variates,
  reparameterization and sticking the landing (:mod:`flowvi.inference.bbvi`); the study of
  their variances (:mod:`flowvi.inference.estimators`); Gaussian and flow guides compared with
  reference posterior draws, PSIS k̂ included (:mod:`flowvi.inference.guides`).
"""

from flowvi.inference.bbvi import (
    BernoulliFactors,
    CategoricalFactors,
    GaussianMixtureModel,
    MeanField,
    NormalFactors,
    elbo_gradient,
    elbo_loss,
    fit_bbvi,
    guide_elbo,
)
from flowvi.inference.cavi import CAVIResult, MixtureSample, cavi, mixture_elbo
from flowvi.inference.cavi import log_predictive as mixture_log_predictive
from flowvi.inference.cavi import simulate as simulate_mixture
from flowvi.inference.conjugate import NormalMean
from flowvi.inference.gaussian import gaussian_kl, kl_standard_normal
from flowvi.inference.guides import build_guide, psis_khat
from flowvi.inference.guides import compare as compare_guides
from flowvi.inference.svi import SVIResult, svi

__all__: list[str] = [
    "BernoulliFactors",
    "CAVIResult",
    "CategoricalFactors",
    "GaussianMixtureModel",
    "MeanField",
    "MixtureSample",
    "NormalFactors",
    "NormalMean",
    "SVIResult",
    "build_guide",
    "cavi",
    "compare_guides",
    "elbo_gradient",
    "elbo_loss",
    "fit_bbvi",
    "gaussian_kl",
    "guide_elbo",
    "kl_standard_normal",
    "mixture_elbo",
    "mixture_log_predictive",
    "psis_khat",
    "simulate_mixture",
    "svi",
]
