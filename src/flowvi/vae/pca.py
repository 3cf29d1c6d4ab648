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

Run it as ``flowvi vae train --model nlpca`` (a :class:`flowvi.vae.run.VAEConfig` with
``model = "nlpca"``): the same data, splits, batches, optimizer, early stopping and run
directory as a VAE, through the one training loop :func:`flowvi.train.train`.
"""

from __future__ import annotations

import csv
import io as _io
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowvi._checks import check_dim
from flowvi.io import (
    CHECKPOINT,
    RunError,
    atomic_write,
    check_memory,
    checkpoint_iteration,
    read_json,
    run_directory,
    save_weights,
    write_config,
    write_json,
)
from flowvi.settings import DTYPES, resolve_device
from flowvi.train import EarlyStopping, train
from flowvi.vae.evaluate import mean_and_se
from flowvi.vae.networks import BernoulliDecoder, Encoder

WEIGHTS = "model.safetensors"


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
    """The nonlinear PCA of a :class:`flowvi.vae.run.VAEConfig` (``latent``, ``hidden``)."""
    return NonlinearPCA(D, config.latent, config.hidden)


def run_nlpca(
    config, directory: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train a nonlinear PCA through :func:`flowvi.train.train` and write one run.

    ``config`` is a :class:`flowvi.vae.run.VAEConfig` with ``model = "nlpca"``; it uses
    ``data``, ``data_dir``, ``binarize``, ``latent``, ``hidden``, ``epochs``, ``batch_size``,
    ``lr``, ``optimizer``, ``patience``, the split fractions, ``seed``, ``device``, ``dtype`` and
    ``checkpoint_every`` as a VAE run does (the same splits and batch order), and ignores the
    posterior, prior, objective and warm-up settings. The loss is the mean reconstruction loss
    :math:`-\\ln p(x \\mid f(x))` of a minibatch; validation, every epoch, is the same on the
    validation images; training stops after ``patience`` epochs without improvement and keeps
    the best parameters.

    Writes ``config.json``, ``checkpoint.safetensors``, ``model.safetensors`` (with the code
    Gaussian fitted to the training images), ``trace.csv``, ``train.json``, ``metrics.json``
    (:func:`evaluate_nlpca`) and the figures ``samples.png`` and ``reconstructions.png``.

    Raises:
        ValueError: for invalid settings, or an existing run without ``resume``.
        flowvi.train.NonFiniteLossError: for a NaN or infinite loss (epoch and batch named).
    """
    from flowvi.vae.run import _provenance, _splits, check_resume, vae_bytes

    config.validate()
    directory = run_directory(directory, resume=resume, kind="nlpca")
    check_memory(vae_bytes(config, 28 * 28), "the model's parameters and one batch")
    splits = _splits(config)
    device, dtype = resolve_device(config.device), DTYPES[config.dtype]
    torch.manual_seed(config.seed)
    model = make_nlpca(config, splits.train.shape[1])
    model.decoder.init_bias(splits.train.mean(0))
    model = model.to(device=device, dtype=dtype)
    n = len(splits.train)
    per_epoch = math.ceil(n / config.batch_size)
    if resume:  # every check before anything on disk changes
        check_resume(directory, model, config, per_epoch)
    train_x = splits.train.to(device=device, dtype=dtype)
    valid_x = splits.valid.to(device=device, dtype=dtype)
    record = asdict(config) | {"kind": "nlpca"} | _provenance(splits, device)
    write_config(directory, record, resume=resume, changed=("epochs", "compile"))
    orders: dict[int, Tensor] = {}

    def loss_fn(t: int) -> tuple[Tensor, dict[str, Tensor]]:
        epoch, batch = divmod(t, per_epoch)
        if epoch not in orders:  # the permutation of a VAE run with the same seed
            orders.clear()
            g = torch.Generator().manual_seed(config.seed + 1000 + epoch)
            orders[epoch] = torch.randperm(n, generator=g).to(device)
        x = train_x[orders[epoch][batch * config.batch_size : (batch + 1) * config.batch_size]]
        if splits.dynamic:
            x = torch.bernoulli(x)
        log_lik = model.log_lik(x)
        return -log_lik.mean(), {"ln p(x | f(x))": log_lik}

    stopper = EarlyStopping(
        lambda: -model.log_lik(valid_x).mean(), every=per_epoch, patience=config.patience
    )
    start = time.perf_counter()
    trace = train(
        model,
        loss_fn,
        iters=config.epochs * per_epoch,
        lr=config.lr,
        optimizer=config.optimizer,
        directory=directory,
        resume=resume,
        checkpoint_every=config.checkpoint_every * per_epoch,
        progress=progress,
        desc="nlpca",
        label="recon",
        early_stopping=stopper,
        iters_per_epoch=per_epoch,
    )
    seconds = time.perf_counter() - start
    model.eval()
    model.fit_codes(train_x)
    done = int((~torch.isnan(trace)).sum())
    save_weights(model, directory, iteration=checkpoint_iteration(directory / CHECKPOINT) or done)
    _write_trace(directory / "trace.csv", trace, stopper.trace, per_epoch)
    summary = {
        "valid_reconstruction": stopper.best,
        "best_epoch": stopper.best_iteration // per_epoch,
        "epochs": math.ceil(done / per_epoch),
        "iterations": done,
        "iterations_per_epoch": per_epoch,
        "stopped_early": stopper.stopped,
        "train_seconds_this_session": seconds,
        "units": "nats per image (-ln p(x | f(x)), binary cross-entropy summed over pixels)",
    }
    write_json(directory / "train.json", summary)
    evaluate_nlpca(directory, device=config.device)
    _figures(model, splits, directory)
    return summary


def load_nlpca(
    directory: str | Path, *, device: str = "cpu", unfinished: bool = False
) -> tuple[NonlinearPCA, Any]:
    """The trained model of a ``--model nlpca`` run directory and its configuration (as
    :func:`flowvi.vae.run.load_vae`: on ``device``, in the run's dtype; ``unfinished``: the
    last checkpoint of a run still training, with a ``UserWarning``).

    Raises:
        flowvi.io.RunError: (a ``ValueError``) if ``directory`` holds no finished
            nonlinear-PCA run, or weights that do not fit its model.
    """
    from flowvi.vae.run import _saved_run, _with_weights

    config, saved = _saved_run(directory, "vae")
    if config.model != "nlpca":
        raise RunError(f"{directory} holds a VAE run, not a nonlinear PCA (--model nlpca)")
    model = _with_weights(make_nlpca(config, saved["D"]), directory, unfinished=unfinished)
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


@torch.no_grad()
def evaluate_nlpca(directory: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    r"""Test reconstruction scores (:func:`reconstruction_metrics`) of a nonlinear-PCA run,
    written to ``metrics.json`` and returned; deterministic (no sampling)."""
    from flowvi.vae.run import _splits

    model, config = load_nlpca(directory, device=device)
    model.eval()
    p = next(model.parameters())
    x = _splits(config).test.to(p)
    z = model.encode(x)
    out = model.decoder(z)
    metrics = reconstruction_metrics(out.log_prob(x), x, out.base_dist.probs)
    metrics |= {
        "model": "nlpca",
        "n_test": len(x),
        "units": "nats per binarized image: -ln p(x | z = f(x)); pixel error: a fraction",
    }
    train_json = Path(directory) / "train.json"
    if train_json.exists():
        metrics["training"] = read_json(train_json)
    write_json(Path(directory) / "metrics.json", metrics)
    return metrics


@torch.no_grad()
def _figures(model: NonlinearPCA, splits, directory: Path) -> None:
    from flowvi.plot import vae_grid

    p = next(model.parameters())
    title = "decoded draws from a Gaussian fitted to the training codes"
    vae_grid(model.sample(64), directory / "samples.png", shape=splits.image_shape, title=title)
    x = splits.test[:32].to(p)
    recon = model.decoder(model.encode(x)).base_dist.probs
    pairs = torch.stack([x.reshape(4, 8, -1), recon.reshape(4, 8, -1)], 1).reshape(64, -1)
    vae_grid(
        pairs,
        directory / "reconstructions.png",
        shape=splits.image_shape,
        title="test images (odd rows) and reconstructions (even rows)",
    )


def _write_trace(path: Path, trace: Tensor, valid, per_epoch: int) -> None:
    at = {t - 1: value for t, value in valid}
    buffer = _io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["iteration", "epoch", "train_loss", "valid_reconstruction"])
    for t, value in enumerate(trace.tolist()):
        if not math.isnan(value):
            writer.writerow([t, t // per_epoch, f"{value:.6g}", f"{at[t]:.6g}" if t in at else ""])
    text = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
