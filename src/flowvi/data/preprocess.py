r"""Image pre-processing for density estimation: uniform dequantization, the logit map, bits/dim.

Units. Pixels are integer levels :math:`k \in \{0, \dots, L-1\}^D` (``L = levels``: 256 for
8-bit images, 17 for scikit-learn's digits). Dequantized data :math:`x = k + u`,
:math:`u \sim U[0, 1)^D`, live in :math:`[0, L)^D` *in level units* (not rescaled to
:math:`[0, 1)`). A model density :math:`p` on that space defines the discrete model
:math:`P(k) = \int_{[0,1)^D} p(k + u)\,du`, and by Jensen's inequality

.. math:: -\ln P(k) \le \mathbb E_u[-\ln p(k + u)]

(Theis et al. 2016, Section 3.1), so the mean of :math:`-\ln p(x)` in nats over dequantized test
images bounds the discrete negative log-likelihood, and :func:`bits_per_dim` turns it into the
bits per dimension reported in the literature (RealNVP, Glow, ...). The logit map itself is
:class:`flowvi.transforms.LogitPreprocessingTransform`. Because the unit cube of
level space has volume 1, no :math:`D \ln L` correction is needed (it would be, had the data
been rescaled to :math:`[0, 1)`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowvi._checks import check_dim


def dequantize(x_int: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantization :math:`x = k + u`, :math:`u \sim U[0, 1)`, elementwise.

    Args:
        x_int: integer levels :math:`k`, any shape, integer or floating dtype.
        generator: optional ``torch.Generator`` on ``x_int``'s device, for reproducible noise.

    Returns:
        ``x_int``'s shape, on its device, in its dtype if floating (else the default dtype),
        values in :math:`[k, k + 1)`.
    """
    dtype = x_int.dtype if x_int.is_floating_point() else torch.get_default_dtype()
    u = torch.rand(x_int.shape, generator=generator, dtype=dtype, device=x_int.device)
    return x_int.to(dtype) + u


def bits_per_dim(nll_nats: Tensor | float, D: int) -> Tensor:
    r"""Bits per dimension :math:`\mathrm{nll} / (D \ln 2)`.

    Args:
        nll_nats: :math:`-\ln p(x)` in nats per example (any shape, e.g. a mean over a test set),
            where :math:`p` is the density of dequantized data in level units,
            :math:`x \in [0, L)^D`. Its value in bits/dim is then an upper bound on the discrete
            data's :math:`-\log_2 P(k)` per dimension (module docstring).
        D: the number of dimensions (pixels × channels), e.g. 784 for 28×28 grey images.

    Example:
        A uniform density on :math:`[0, 256)^D` has :math:`\mathrm{nll} = D \ln 256`, i.e.
        8 bits/dim: ``bits_per_dim(torch.tensor(784 * math.log(256)), 784) == 8``.

    Raises:
        ValueError: if ``D`` is not a positive integer.
    """
    check_dim(D, "number of dimensions D")
    return torch.as_tensor(nll_nats) / (D * math.log(2))
