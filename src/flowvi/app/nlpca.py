"""``flowvi vae train --model nlpca``: train and evaluate the nonlinear-PCA baseline
(:mod:`flowvi.vae.pca`) as a run."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowvi.app.rundir import record, training
from flowvi.io import (
    CHECKPOINT,
    check_checkpoint,
    check_iterations,
    check_memory,
    checkpoint_iteration,
    read_json,
    run_directory,
    save_weights,
    write_csv,
    write_json,
)
from flowvi.settings import DTYPES, resolve_device
from flowvi.train import EarlyStopping, train
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
    splits = load_splits(config)
    torch.manual_seed(config.seed)
    model = make_nlpca(config, splits.train.shape[1])
    model.decoder.init_bias(splits.train.mean(0))
    model = model.to(device=device, dtype=dtype)
    n = len(splits.train)
    per_epoch = math.ceil(n / config.batch_size)
    if resume:  # every check before anything on disk changes
        done = check_checkpoint(directory, model, early_stopping=True)
        epochs = config.epochs * per_epoch
        check_iterations(done, epochs, directory=directory, flag="--epochs", per_epoch=per_epoch)
    train_x = splits.train.to(device=device, dtype=dtype)
    valid_x = splits.valid.to(device=device, dtype=dtype)
    config_record = record(config, "nlpca", device, **splits.facts())
    with training(directory, config_record, resume=resume, changed=("epochs", "compile")):
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
        save_weights(
            model, directory, iteration=checkpoint_iteration(directory / CHECKPOINT) or done
        )
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
    at = {t - 1: f"{value:.6g}" for t, value in valid}
    rows = (
        [t, t // per_epoch, f"{value:.6g}", at.get(t, "")]
        for t, value in enumerate(trace.tolist())
        if not math.isnan(value)
    )
    write_csv(path, ["iteration", "epoch", "train_loss", "valid_reconstruction"], rows)
