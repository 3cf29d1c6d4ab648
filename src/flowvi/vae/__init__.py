"""Amortized variational inference: VAEs whose encoder outputs the flow of the posterior."""

from flowvi.vae.config import VAEConfig, load_vae, make_vae
from flowvi.vae.evaluate import layer_statistics, log_likelihood, mean_and_se, mean_elbo
from flowvi.vae.latent2d import posterior_grids
from flowvi.vae.model import VAE
from flowvi.vae.networks import (
    BernoulliDecoder,
    ConvBernoulliDecoder,
    ConvEncoder,
    Encoder,
    GatedConv2d,
    LinearGaussianDecoder,
    PixelLikelihood,
)
from flowvi.vae.pca import NonlinearPCA
from flowvi.vae.posterior import POSTERIORS, GaussianBase, ProjectedPosterior, make_posterior
from flowvi.vae.prior import PRIORS, make_prior

__all__ = [
    "POSTERIORS",
    "PRIORS",
    "VAE",
    "BernoulliDecoder",
    "ConvBernoulliDecoder",
    "ConvEncoder",
    "Encoder",
    "GatedConv2d",
    "GaussianBase",
    "LinearGaussianDecoder",
    "NonlinearPCA",
    "PixelLikelihood",
    "ProjectedPosterior",
    "VAEConfig",
    "layer_statistics",
    "load_vae",
    "log_likelihood",
    "make_posterior",
    "make_prior",
    "make_vae",
    "mean_and_se",
    "mean_elbo",
    "posterior_grids",
]
