"""Binary image data for VAEs: digits and IDX sets (Fashion-MNIST, MNIST), binarized."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowvi import data
from flowvi._checks import check_choice

DATASETS = ("digits", "fashion-mnist", "mnist")
BINARIZATIONS = ("static", "dynamic", "none")


@dataclass
class BinarySplits:
    """Train, validation and test images, ``(n, D)`` float64 in ``[0, 1]``.

    ``train`` holds pixel intensities for dynamic binarization (a fresh Bernoulli draw per
    batch, see :meth:`batch`) and binary pixels for static binarization; ``valid`` and ``test``
    are then binary, fixed once. Without binarization (``none``) all three hold the grey
    levels. ``image_shape`` is ``(C, H, W)``.
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    image_shape: tuple[int, int, int]
    dynamic: bool

    def batch(self, index: Tensor) -> Tensor:
        """The training images ``index``, binarized afresh (torch's global generator) if dynamic."""
        x = self.train[index]
        return torch.bernoulli(x) if self.dynamic else x

    def facts(self) -> dict[str, Any]:
        """What a run records of its data: pixels ``D``, ``image_shape`` and the split sizes."""
        return {
            "D": self.train.shape[1],
            "image_shape": list(self.image_shape),
            "n": {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)},
        }


class EpochOrder:
    """The minibatches of training by epochs: epoch ``e`` visits the ``n`` training images in
    the order of a permutation drawn from ``seed + 1000 + e``, so a resumed run, every
    data-parallel rank and a nonlinear PCA with the same seed meet the same batches; iteration
    ``t`` is batch ``t % per_epoch`` of epoch ``t // per_epoch`` (the last one may be short).

    Calling it with ``t`` gives that batch's indices, ``(batch,)`` int64 on ``device``.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | None = None):
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self.per_epoch = math.ceil(n / batch_size)
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, t: int) -> Tensor:
        epoch, batch = divmod(t, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + 1000 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=g).to(self.device)
        return self._order[batch * self.batch_size : (batch + 1) * self.batch_size]


def load_binary(
    name: str,
    *,
    binarize: str = "static",
    data_dir: str | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> BinarySplits:
    """Binarized images, split reproducibly from ``seed``.

    - ``digits`` (scikit-learn, 1797 8×8 images, levels 0..16): intensity ``level / 16``; a
      random ``test_fraction`` / ``valid_fraction`` / rest split.
    - ``fashion-mnist`` (``/usr/share/datasets/fashion-mnist`` or ``data_dir``), ``mnist``
      (``data_dir`` of IDX files): intensity ``level / 255``; the official test set, and
      ``valid_fraction`` of the training set for validation.

    ``static`` binarization thresholds the intensity at 0.5 (Fashion-MNIST as in Cremer et al.
    2018); ``dynamic`` draws ``Bernoulli(intensity)`` for each training batch and once, from
    ``seed``, for the held-out images; ``none`` keeps the grey levels (for the continuous
    likelihoods of :class:`flowvi.vae.PixelLikelihood`).

    Raises:
        ValueError: for an unknown name or binarization, or fractions outside (0, 0.5).
        FileNotFoundError: for a missing IDX directory or file.
    """
    check_choice(name, DATASETS, "data set")
    check_choice(binarize, BINARIZATIONS, "binarization")
    for value, what in ((valid_fraction, "valid_fraction"), (test_fraction, "test_fraction")):
        if not 0 < value < 0.5:
            raise ValueError(f"{what} must lie in (0, 0.5), got {value}")
    g = torch.Generator().manual_seed(seed)
    if name == "digits":
        x, _, shape = data.digits()
        x = x / 16
        order = torch.randperm(len(x), generator=g)
        n_valid, n_test = round(valid_fraction * len(x)), round(test_fraction * len(x))
        test, valid = x[order[:n_test]], x[order[n_test : n_test + n_valid]]
        train = x[order[n_test + n_valid :]]
    else:
        if name == "mnist" and data_dir is None:
            raise ValueError("MNIST is not installed here: give --data-dir with its IDX files")
        directory = data_dir or data.FASHION_MNIST
        images, _ = data.read_idx(directory, "train", dtype=torch.float64)
        test, _ = data.read_idx(directory, "test", dtype=torch.float64)
        images, test = images / 255, test / 255
        order = torch.randperm(len(images), generator=g)
        n_valid = round(valid_fraction * len(images))
        valid, train = images[order[:n_valid]], images[order[n_valid:]]
        side = round(images.shape[1] ** 0.5)
        shape = (1, side, side)
    if binarize == "static":
        train, valid, test = ((x > 0.5).double() for x in (train, valid, test))
    elif binarize == "dynamic":
        valid, test = (torch.bernoulli(x, generator=g) for x in (valid, test))
    return BinarySplits(train, valid, test, tuple(shape), binarize == "dynamic")
