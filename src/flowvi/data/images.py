"""Image data sets as flat tensors of integer pixel levels: scikit-learn's digits and IDX files.

IDX is the format of MNIST and Fashion-MNIST (LeCun et al. 1998): a 4-byte magic number
``00 00 08 NDIM`` (``08``: unsigned bytes), ``NDIM`` big-endian uint32 sizes, then the bytes in
row-major order. Images are ``idx3`` (count, rows, columns), labels ``idx1`` (count). Files may
be gzipped (detected from their content, not their name). Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowvi._checks import check_choice

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST (IDX, gzipped)."""

PREFIXES = {"train": "train", "test": "t10k"}


def digits(*, dtype: torch.dtype = torch.float64) -> tuple[Tensor, int, tuple[int, int, int]]:
    """scikit-learn's handwritten digits (UCI optical recognition; ships with scikit-learn).

    Returns:
        ``(x, levels, image_shape)``: ``x`` of shape ``(1797, 64)``, integer levels ``0..16``
        stored as ``dtype``; ``levels = 17``; ``image_shape = (1, 8, 8)`` (channels, rows,
        columns; rows of ``x`` are the images flattened row-major).
    """
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().data).to(dtype)
    return x, 17, (1, 8, 8)


def _find(directory: Path, stem: str) -> Path:
    """The file ``stem`` in ``directory``, gzipped or not, with ``-`` or ``.`` before ``idx``."""
    dotted = stem.replace("-idx", ".idx")
    names = [stem, stem + ".gz", dotted, dotted + ".gz"]
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: no IDX file {stem}; looked for {', '.join(names)}")


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({err})") from err


def read_idx_file(path: str | Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes with ``ndim`` dimensions, as a ``uint8`` array.

    Raises:
        ValueError: naming the file, for a wrong magic number (not IDX, a type other than
            unsigned bytes, or a different number of dimensions), a truncated header or data,
            trailing bytes, or a corrupt gzip stream.
    """
    path = Path(path)
    raw = _read_bytes(path)
    expected = bytes([0, 0, 0x08, ndim])
    if len(raw) < 4 or raw[:4] != expected:
        raise ValueError(
            f"{path}: wrong magic number {raw[:4].hex(' ') or '(empty file)'}, expected "
            f"{expected.hex(' ')} (IDX, unsigned bytes, {ndim} dimensions)"
        )
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes, expected {start})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(raw) - start != size:
        state = "truncated" if len(raw) - start < size else "longer than its header says"
        raise ValueError(
            f"{path}: {state}: shape {shape} needs {size} data bytes, found {len(raw) - start}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


def read_idx(
    directory: str | Path = FASHION_MNIST,
    split: str = "train",
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Images and labels of an MNIST-style IDX data set (MNIST, Fashion-MNIST, KMNIST).

    Reads ``{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte`` from ``directory``
    (``prefix`` is ``train`` or ``t10k``), each optionally gzipped (``.gz``) and with ``.idx``
    in place of ``-idx``.

    Args:
        directory: default: Fashion-MNIST as installed by Debian's ``dataset-fashion-mnist``.
        split: ``"train"`` (60,000 images for MNIST) or ``"test"`` (10,000).
        dtype: of the images (``float32`` holds the levels exactly and halves the memory).

    Returns:
        ``(images, labels)``: ``images`` of shape ``(n, H*W)``, integer levels ``0..255`` stored
        as ``dtype`` (rows: images flattened row-major; ``H, W = 28, 28`` for MNIST);
        ``labels`` ``(n,)`` int64.

    Raises:
        FileNotFoundError: if the directory or a file is missing (listing the names tried).
        ValueError: for an unknown split, a wrong magic number, truncated or corrupt files, or
            image and label counts that differ.
    """
    check_choice(split, PREFIXES, "split")
    directory = Path(directory)
    if not directory.is_dir():
        hint = (
            " (install Debian's dataset-fashion-mnist, or give the directory of the IDX files)"
            if str(directory) == FASHION_MNIST
            else ""
        )
        raise FileNotFoundError(f"no such data directory: {directory}{hint}")
    prefix = PREFIXES[split]
    image_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    label_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx_file(image_path, 3)
    labels = read_idx_file(label_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{image_path} holds {images.shape[0]} images but {label_path} {labels.shape[0]} labels"
        )
    x = torch.from_numpy(images.reshape(images.shape[0], -1).copy()).to(dtype)
    return x, torch.from_numpy(labels.astype(np.int64))
