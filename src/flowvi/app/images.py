"""What ``flowvi vae train`` runs of a VAE and of the nonlinear-PCA baseline share: the image
splits, the model built and placed, the batches by epochs, and the resume check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from flowvi.app.rundir import check_resume
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
