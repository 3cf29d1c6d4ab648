r"""Nonlinear PCA: the deterministic autoencoder the VAE is compared with.

A nonlinear PCA (Kramer 1991, "Nonlinear principal component analysis using autoassociative
neural networks") maps an image to a code :math:`z = f(x) \in \mathbb R^d` and back, and is
trained on the reconstruction loss alone,

.. math:: \min_{f, g}\ \frac1n \sum_i -\ln p_g(x_i \mid z = f(x_i)),

here with the VAE's Bernoulli decoder (the loss is the binary cross-entropy summed over pixels,
nats per image). It has the VAE's encoder trunk and decoder (same MLP sizes); where the VAE's
encoder has two heads (:math:`\mu`, :math:`\sigma`), it has one (:math:`f`). With no noise
and no KL term nothing ties the codes to a known distribution, so there is no principled way to
generate: the usual recipe, followed here, fits a Gaussian :math:`\mathcal N(m, C)` to the
training codes and decodes draws from it. Codes fill an irregular region of
:math:`\mathbb R^d` with holes, so those decodes can fall where the decoder was never trained;
a VAE's KL term instead pulls the aggregate posterior towards its prior, the distribution it
samples from. ``benchmarks/nlpca.py`` measures both sides: reconstruction at equal ``d``
(where nonlinear PCA should win, having no KL to pay) and samples.

Run it as ``flowvi vae train --model nlpca`` (a :class:`flowvi.vae.config.VAEConfig` with
``model = "nlpca"``; :func:`flowvi.app.nlpca.run_nlpca`): the same data, splits, batches,
optimizer, early stopping and run directory as a VAE, through the one training loop
:func:`flowvi.train.train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowvi._checks import check_dim
from flowvi.io import (
    RunError,
)
from flowvi.settings import DTYPES, resolve_device
from flowvi.vae.config import saved_run, with_weights
from flowvi.vae.evaluate import mean_and_se
from flowvi.vae.networks import BernoulliDecoder, Encoder


class NonlinearPCA(nn.Module):
    r"""A deterministic autoencoder :math:`x \to z = f(x) \to p(x \mid z)`.

    ``f`` is :class:`flowvi.vae.Encoder` (``x: (*batch, D) -> h``) then a linear head to
    ``d`` codes; the decoder is :class:`flowvi.vae.BernoulliDecoder` with the hidden sizes
    reversed. The buffers ``code_mean: (d,)`` and ``code_scale_tril: (d, d)`` hold the
    Gaussian fitted to the training codes (:meth:`fit_codes`), saved with the weights.

    Args:
        D: data dimension. d: code size. hidden: the encoder's hidden sizes (at least one).

    Raises:
        ValueError: for a size that is not a positive integer or an empty ``hidden``.
    """

    def __init__(self, D: int, d: int, hidden: Sequence[int] = (300, 300)) -> None:
        super().__init__()
        check_dim(d, "code size d")
        self.d = d
        self.encoder = Encoder(D, hidden)
        self.code = nn.Linear(self.encoder.context_dim, d)
        self.decoder = BernoulliDecoder(d, D, tuple(reversed(tuple(hidden))))
        self.register_buffer("code_mean", torch.zeros(d))
        self.register_buffer("code_scale_tril", torch.eye(d))

    def encode(self, x: Tensor) -> Tensor:
        """The code :math:`z = f(x)`, ``x: (*batch, D) -> (*batch, d)``."""
        return self.code(self.encoder(x))

    def log_lik(self, x: Tensor) -> Tensor:
        r""":math:`\ln p(x \mid z = f(x))`, ``(*batch,)`` nats: minus the reconstruction loss
        (for binary ``x``, minus the binary cross-entropy summed over pixels)."""
        return self.decoder(self.encode(x)).log_prob(x)

    @torch.no_grad()
    def fit_codes(self, x: Tensor, *, batch_size: int = 1000) -> None:
        r"""Fit :math:`\mathcal N(m, C)` to the codes of ``x: (n, D)`` (sample mean and
        covariance, :math:`C + 10^{-6} I` for a Cholesky factor) for :meth:`sample`.

        Raises:
            ValueError: if ``x`` holds fewer than ``d + 1`` images (a singular covariance).
        """
        if len(x) <= self.d:
            raise ValueError(f"fitting a {self.d}-d Gaussian needs more than {self.d} codes")
        z = torch.cat([self.encode(xb) for xb in x.split(batch_size)])
        m = z.mean(0)
        cov = (z - m).mT @ (z - m) / (len(z) - 1)
        eye = torch.eye(self.d, dtype=z.dtype, device=z.device)
        self.code_mean.copy_(m)
        self.code_scale_tril.copy_(torch.linalg.cholesky(cov + 1e-6 * eye))

    def code_distribution(self) -> torch.distributions.MultivariateNormal:
        """The Gaussian fitted to the training codes, event shape ``(d,)``."""
        return torch.distributions.MultivariateNormal(
            self.code_mean, scale_tril=self.code_scale_tril
        )

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        r"""Decoder means (pixel probabilities) ``(n, D)`` at :math:`z \sim \mathcal N(m, C)`."""
        return self.decoder(self.code_distribution().sample((n,))).base_dist.probs


def make_nlpca(config, D: int) -> NonlinearPCA:
    """The nonlinear PCA of a :class:`flowvi.vae.config.VAEConfig` (``latent``, ``hidden``)."""
    return NonlinearPCA(D, config.latent, config.hidden)


def load_nlpca(
    directory: str | Path, *, device: str = "cpu", unfinished: bool = False
) -> tuple[NonlinearPCA, Any]:
    """The trained model of a ``--model nlpca`` run directory and its configuration (as
    :func:`flowvi.vae.config.load_vae`: on ``device``, in the run's dtype; ``unfinished``: the
    last checkpoint of a run still training, with a ``UserWarning``).

    Raises:
        flowvi.io.RunError: (a ``ValueError``) if ``directory`` holds no finished
            nonlinear-PCA run, or weights that do not fit its model.
    """
    config, saved = saved_run(directory, "vae")
    if config.model != "nlpca":
        raise RunError(f"{directory} holds a VAE run, not a nonlinear PCA (--model nlpca)")
    model = with_weights(make_nlpca(config, saved["D"]), directory, unfinished=unfinished)
    return model.to(device=resolve_device(device), dtype=DTYPES[config.dtype]), config


def reconstruction_metrics(log_lik: Tensor, x: Tensor, probs: Tensor) -> dict[str, float]:
    r"""Test reconstruction scores of a model that decoded ``x: (n, D)`` to pixel
    probabilities ``probs: (n, D)`` with :math:`\ln p(x \mid z)` = ``log_lik: (n,)``.

    Returns ``test_reconstruction`` (mean :math:`-\ln p(x \mid z)`, nats per image) and its
    standard error, and ``test_pixel_error`` (the fraction of pixels whose thresholded
    probability, ``probs > 0.5``, differs from ``x``).
    """
    mean, se = mean_and_se(-log_lik.double())
    wrong = ((probs > 0.5).to(x.dtype) != x).double().mean()
    return {
        "test_reconstruction": mean,
        "test_reconstruction_se": se,
        "test_pixel_error": float(wrong),
    }


@torch.no_grad()
def vae_reconstruction(model, x: Tensor) -> tuple[Tensor, Tensor]:
    r"""A VAE's deterministic reconstruction of ``x: (n, D)``, for comparison with
    :class:`NonlinearPCA` at the same latent size: :math:`\ln p(x \mid z^*)` ``(n,)`` nats and
    the pixel probabilities ``(n, D)`` at :math:`z^*` = the posterior's base mean pushed
    through its flow layers (for a diagonal posterior, the posterior mean :math:`\mu(x)`).

    This is the VAE's most favourable single code; its ELBO's reconstruction term
    :math:`E_q \ln p(x \mid z)` averages over the posterior's spread instead.
    """
    q = model.q(x)
    z = q.base_dist.mean
    for transform in q.transforms:
        z = transform(z)
    out = model.decoder(z)
    return out.log_prob(x), out.base_dist.probs
