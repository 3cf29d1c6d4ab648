"""Amortized variational inference: VAEs whose encoder outputs the flow of the posterior."""

from flowvi.vae.evaluate import log_likelihood, mean_and_se, mean_elbo
from flowvi.vae.model import VAE
from flowvi.vae.networks import BernoulliDecoder, Encoder, LinearGaussianDecoder
from flowvi.vae.posterior import POSTERIORS, GaussianBase, make_posterior
from flowvi.vae.prior import PRIORS, make_prior

__all__ = [
    "POSTERIORS",
    "PRIORS",
    "VAE",
    "BernoulliDecoder",
    "Encoder",
    "GaussianBase",
    "LinearGaussianDecoder",
    "log_likelihood",
    "make_posterior",
    "make_prior",
    "mean_and_se",
    "mean_elbo",
]
