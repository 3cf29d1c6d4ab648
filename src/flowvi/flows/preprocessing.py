"""Fixed (untrained) layers at the data end of a flow: standardization and logit pre-processing.

Placed last in a flow (base → data), they map the space the trained layers work in to data
units, so that ``log_prob`` of data includes the pre-processing's Jacobian and is reported in
the data's own units (:mod:`flowvi.transforms.preprocessing` holds the math).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.flows.base import Layer
from flowvi.transforms.base import Transform
from flowvi.transforms.preprocessing import LogitPreprocessingTransform, StandardizationTransform


class Standardization(Layer):
    r"""Data-end layer :math:`x = \mu + \sigma \odot y`:
    ``StandardizationTransform(mean, std).inv``.

    ``log_prob`` of raw data then includes the standardization's Jacobian,
    :math:`\ln p(x) = \ln q(y) - \sum_i \ln \sigma_i`, :math:`y = (x - \mu)/\sigma`. The
    statistics are buffers (saved with the weights, moved by ``.to``); floating tensors keep
    their dtype, so float64 statistics stay exact until the module is cast. Starts at the
    identity; ``context`` is accepted and ignored.

    Args:
        d: dimension.
        mean: :math:`\mu`, shape ``(d,)`` (default zeros).
        std: :math:`\sigma > 0`, shape ``(d,)`` (default ones).

    Raises:
        ValueError: if the shapes are not ``(d,)`` or a ``std`` is not positive and finite.
    """

    def __init__(
        self,
        d: int,
        *,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__(d, context_dim=context_dim)
        mean = torch.zeros(d) if mean is None else torch.as_tensor(mean)
        if not mean.is_floating_point():
            mean = mean.to(torch.get_default_dtype())
        std = (torch.ones(d) if std is None else torch.as_tensor(std)).to(mean.dtype)
        if mean.shape != (d,):
            raise ValueError(f"mean must have shape ({d},), got {tuple(mean.shape)}")
        StandardizationTransform(mean, std)  # validates
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, context: Tensor | None = None) -> Transform:
        # the statistics were checked in __init__
        return StandardizationTransform(self.mean, self.std, validate=False).inv


class LogitPreprocessing(Layer):
    r"""Data-end layer mapping the flow's :math:`y \in \mathbb R^D` to dequantized pixels
    :math:`x = L(\sigma(y) - \alpha)/(1 - 2\alpha)`:
    ``LogitPreprocessingTransform(levels, alpha).inv`` (Dinh et al. 2017, Section 4.1).

    ``log_prob`` of dequantized pixels :math:`x \in [0, L)^D` is then in nats in level units,
    and :func:`flowvi.data.bits_per_dim` of its negative bounds the discrete data's bits/dim.
    Outside the layer's image, :math:`-\alpha L/(1 - 2\alpha) < x_i < L(1 - \alpha)/(1 - 2\alpha)`
    for every :math:`i`, the density is zero and ``log_prob`` is ``-inf`` (not NaN).
    No parameters; ``context`` is accepted and ignored.

    Args:
        d: dimension ``D``.
        levels: :math:`L`, pixel levels (256 for 8-bit images, 17 for scikit-learn's digits).
        alpha: :math:`\alpha \in [0, 0.5)`.

    Raises:
        ValueError: for ``levels < 2`` or ``alpha`` outside ``[0, 0.5)``.
    """

    def __init__(
        self, d: int, *, levels: int = 256, alpha: float = 0.05, context_dim: int | None = None
    ) -> None:
        super().__init__(d, context_dim=context_dim)
        LogitPreprocessingTransform(levels, alpha)  # validates
        self.levels, self.alpha = levels, alpha
        self.spec = {"levels": levels, "alpha": alpha}

    def forward(self, context: Tensor | None = None) -> Transform:
        return LogitPreprocessingTransform(self.levels, self.alpha).inv
