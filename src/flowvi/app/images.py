"""What ``flowvi vae train`` runs of a VAE and of the nonlinear-PCA baseline share: the image
splits, the model built and placed, the batches by epochs, the resume check, the training by
epochs with early stopping, and what ``train.json`` says of it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from flowvi.app.rundir import check_resume
from flowvi.train import EarlyStopping, train
from flowvi.vae.config import VAEConfig, load_splits
from flowvi.vae.data import BinarySplits, EpochOrder


class ImageRun(NamedTuple):
    """A model ready to train on ``splits``: ``train`` and ``valid`` on its device and dtype."""

    model: nn.Module
    splits: BinarySplits
    batches: EpochOrder
    train: Tensor
    valid: Tensor


def prepare(
    config: VAEConfig,
    make: Callable[[VAEConfig, int], nn.Module],
    directory: str | Path,
    *,
    resume: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> ImageRun:
    """Load the images of ``config``, build ``make(config, D)`` from the seed with its
    decoder's bias at the training images' mean, on ``device`` in ``dtype``, and on ``resume``
    check the run's checkpoint and ``--epochs`` (before anything on disk changes).

    Raises:
        ValueError: for data that cannot be read; on ``resume``, ``--epochs`` below the epochs
            done, or a checkpoint that is unreadable or does not fit the model
            (:class:`flowvi.io.RunError`).
    """
    splits = load_splits(config)
    torch.manual_seed(config.seed)
    model = make(config, splits.train.shape[1])
    model.decoder.init_bias(splits.train.mean(0))
    model = model.to(device=device, dtype=dtype)
    batches = EpochOrder(len(splits.train), config.batch_size, config.seed, device)
    if resume:
        check_resume(
            directory,
            model,
            iters=config.epochs * batches.per_epoch,
            flag="--epochs",
            per_epoch=batches.per_epoch,
            early_stopping=True,
        )
    train, valid = (x.to(device=device, dtype=dtype) for x in (splits.train, splits.valid))
    return ImageRun(model, splits, batches, train, valid)


def train_by_epochs(
    config: VAEConfig,
    model: nn.Module,
    loss: Any,
    valid_loss: Callable[[], Tensor],
    per_epoch: int,
    directory: str | Path,
    *,
    resume: bool,
    **options: Any,
) -> tuple[Tensor, EarlyStopping, float]:
    """Train ``model`` through :func:`flowvi.train.train` for ``config.epochs`` epochs of
    ``per_epoch`` iterations, with ``config``'s rate, optimizer and checkpoints (every
    ``config.checkpoint_every`` epochs), stopping after ``config.patience`` epochs without a
    better ``valid_loss()``; ``options`` go to ``train`` (``progress``, ``desc``, ...).

    Returns:
        ``(trace, stopper, seconds)``: the loss per iteration, the early stopping (its best
        validation loss and iteration), and the wall time of this call.
    """
    stopper = EarlyStopping(valid_loss, every=per_epoch, patience=config.patience)
    start = time.perf_counter()
    trace = train(
        model,
        loss,
        iters=config.epochs * per_epoch,
        lr=config.lr,
        optimizer=config.optimizer,
        directory=directory,
        resume=resume,
        checkpoint_every=config.checkpoint_every * per_epoch,
        early_stopping=stopper,
        iters_per_epoch=per_epoch,
        **options,
    )
    return trace, stopper, time.perf_counter() - start


def epoch_summary(
    stopper: EarlyStopping,
    trace: Tensor,
    per_epoch: int,
    seconds: float,
    *,
    valid: str,
    units: str,
) -> dict[str, Any]:
    """What ``train.json`` says of a run trained by epochs: the best validation loss (under
    the name ``valid``), its epoch, the epochs and iterations done, the seconds, the units."""
    done = int((~torch.isnan(trace)).sum())
    return {
        valid: stopper.best,
        "best_epoch": stopper.best_iteration // per_epoch,
        "epochs": math.ceil(done / per_epoch),
        "iterations": done,
        "iterations_per_epoch": per_epoch,
        "stopped_early": stopper.stopped,
        "train_seconds_this_session": seconds,
        "units": units,
    }
