"""``flowvi vae train --model nlpca``: train and evaluate the nonlinear-PCA baseline
(:mod:`flowvi.vae.pca`) as a run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowvi.app.images import epoch_summary, prepare, train_by_epochs
from flowvi.app.rundir import record, save_final, training
from flowvi.io import (
    check_memory,
    read_json,
    run_directory,
    write_csv,
    write_json,
)
from flowvi.settings import DTYPES, resolve_device
from flowvi.vae.config import load_splits, vae_bytes
from flowvi.vae.pca import NonlinearPCA, load_nlpca, make_nlpca, reconstruction_metrics


def run_nlpca(
    config, directory: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train a nonlinear PCA through :func:`flowvi.train.train` and write one run.

    ``config`` is a :class:`flowvi.vae.config.VAEConfig` with ``model = "nlpca"``; it uses
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
    config.validate()
    directory = run_directory(directory, resume=resume, kind="nlpca")
    device, dtype = resolve_device(config.device), DTYPES[config.dtype]
    check_memory(vae_bytes(config, 28 * 28), "the model's parameters and one batch", device)
    model, splits, batches, train_x, valid_x = prepare(
        config, make_nlpca, directory, resume=resume, device=device, dtype=dtype
    )
    per_epoch = batches.per_epoch

    def loss_fn(t: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = train_x[batches(t)]  # the batches of a VAE run with the same seed
        if splits.dynamic:
            x = torch.bernoulli(x)
        log_lik = model.log_lik(x)
        return -log_lik.mean(), {"ln p(x | f(x))": log_lik}

    config_record = record(config, "nlpca", device, **splits.facts())
    with training(directory, config_record, resume=resume, changed=("epochs", "compile")):
        trace, stopper, seconds = train_by_epochs(
            config,
            model,
            loss_fn,
            lambda: -model.log_lik(valid_x).mean(),
            per_epoch,
            directory,
            resume=resume,
            progress=progress,
            desc="nlpca",
            label="recon",
        )
        model.eval()
        model.fit_codes(train_x)
        save_final(model, directory, trace)
        _write_trace(directory / "trace.csv", trace, stopper.trace, per_epoch)
        summary = epoch_summary(
            stopper,
            trace,
            per_epoch,
            seconds,
            valid="valid_reconstruction",
            units="nats per image (-ln p(x | f(x)), binary cross-entropy summed over pixels)",
        )
        write_json(directory / "train.json", summary)
        evaluate_nlpca(directory, device=config.device)
        _figures(model, splits, directory)
    return summary


@torch.no_grad()
def evaluate_nlpca(directory: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    r"""Test reconstruction scores (:func:`reconstruction_metrics`) of a nonlinear-PCA run,
    written to ``metrics.json`` and returned; deterministic (no sampling)."""
    model, config = load_nlpca(directory, device=device)
    model.eval()
    p = next(model.parameters())
    x = load_splits(config).test.to(p)
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
    from flowvi.plot import reconstructions_grid, vae_grid

    p = next(model.parameters())
    title = "decoded draws from a Gaussian fitted to the training codes"
    vae_grid(model.sample(64), directory / "samples.png", shape=splits.image_shape, title=title)
    x = splits.test[:32].to(p)
    recon = model.decoder(model.encode(x)).base_dist.probs
    reconstructions_grid(x, recon, directory / "reconstructions.png", shape=splits.image_shape)


def _write_trace(path: Path, trace: Tensor, valid, per_epoch: int) -> None:
    at = {t - 1: f"{value:.6g}" for t, value in valid}
    rows = (
        [t, t // per_epoch, f"{value:.6g}", at.get(t, "")]
        for t, value in enumerate(trace.tolist())
        if not math.isnan(value)
    )
    write_csv(path, ["iteration", "epoch", "train_loss", "valid_reconstruction"], rows)
