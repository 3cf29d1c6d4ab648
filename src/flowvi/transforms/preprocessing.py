r"""The data-end pre-processing bijections: standardization and the logit map of pixels.

Placed at the data end of a flow (their ``.inv``, base → data), they keep the pre-processing's
Jacobian inside ``log_prob``, so that densities are in the data's own units. A flow fitted to
standardized data :math:`y = T(x) = (x - \mu)/\sigma` gives the density of the raw data by the
change of variables :math:`p_x(x) = p_y(T(x))\,|\det \partial T/\partial x|`,
:math:`\ln|\det \partial T/\partial x| = -\sum_i \ln\sigma_i`. The units of the logit map
(dequantized pixels in level units) are described in :mod:`flowvi.data.preprocess`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvi._checks import check_dim
from flowvi.transforms.base import Transform


class StandardizationTransform(Transform):
    r"""Elementwise :math:`y = (x - \mu) / \sigma`, :math:`\ln|\det J| = -\sum_i \ln \sigma_i`.

    Maps data :math:`x` to standardized :math:`y`; ``.inv`` maps back
    (:math:`x = \mu + \sigma y`, log-determinant :math:`+\sum_i \ln\sigma_i`). In a flow whose
    layers run base → data, the last layer is ``StandardizationTransform(mean, std).inv`` (the
    :class:`flowvi.flows.Standardization` layer).

    The statistics are plain tensors, kept in the dtype given (float64 from :meth:`fit`) and
    cast to the input's dtype and device at each call; :meth:`state` / :meth:`from_state` store
    them, e.g. in a safetensors file.

    Args:
        mean: :math:`\mu`, shape ``(d,)``.
        std: :math:`\sigma`, shape ``(d,)``, every entry positive and finite.
        validate: check the values (two host syncs); ``False`` for statistics checked before,
            as in a flow's forward pass.

    Raises:
        ValueError: if the shapes differ or are not ``(d,)``, ``mean`` is not finite, or a
            ``std`` entry is not positive and finite.
    """

    def __init__(self, mean: Tensor, std: Tensor, *, validate: bool = True) -> None:
        super().__init__()
        mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        if mean.dim() != 1 or mean.shape != std.shape or mean.numel() == 0:
            raise ValueError(
                f"mean and std must both have shape (d,), got {tuple(mean.shape)} and "
                f"{tuple(std.shape)}"
            )
        if validate and not bool(torch.isfinite(mean).all()):
            raise ValueError("every mean must be finite")
        if validate and not bool((torch.isfinite(std) & (std > 0)).all()):
            bad = int((~(torch.isfinite(std) & (std > 0))).nonzero()[0])
            raise ValueError(
                f"every std must be positive and finite; column {bad} has {std[bad].item()}"
            )
        self.mean, self.std = mean, std
        self.log_std = std.log()

    @classmethod
    def fit(cls, x: Tensor) -> StandardizationTransform:
        """The standardization of training data ``x: (n, d)``: column means and standard
        deviations (maximum likelihood, divisor ``n``), computed in float64.

        Raises:
            ValueError: if ``x`` is not ``(n >= 2, d)``, holds NaN or inf, or has a constant
                column (naming it).
        """
        if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] == 0:
            raise ValueError(f"fit needs data of shape (n >= 2, d), got {tuple(x.shape)}")
        x = x.detach().to(torch.float64)
        if not bool(torch.isfinite(x).all()):
            row = int((~torch.isfinite(x)).any(1).nonzero()[0])
            raise ValueError(f"fit: row {row} of the data holds NaN or inf")
        std = x.std(0, correction=0)
        if bool((std == 0).any()):
            cols = (std == 0).nonzero().flatten().tolist()
            raise ValueError(f"fit: column(s) {cols} of the data are constant (zero variance)")
        return cls(x.mean(0), std)

    def state(self) -> dict[str, Tensor]:
        """``{"mean": (d,), "std": (d,)}``, contiguous, ready for ``safetensors``' ``save_file``."""
        return {"mean": self.mean.contiguous(), "std": self.std.contiguous()}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> StandardizationTransform:
        """The inverse of :meth:`state`."""
        return cls(state["mean"], state["std"])

    def _ladj(self, x: Tensor) -> Tensor:
        return torch.broadcast_to(-self.log_std.sum().to(x), x.shape[:-1])

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.mean.to(x)) / self.std.to(x), self._ladj(x)

    def _inverse(self, y: Tensor) -> Tensor:
        return self.mean.to(y) + self.std.to(y) * y

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._inverse(y), -self._ladj(y)

    def __repr__(self) -> str:
        return f"StandardizationTransform(d={self.mean.shape[-1]})"


class LogitPreprocessingTransform(Transform):
    r"""RealNVP's logit pre-processing of dequantized pixels (Dinh et al. 2017, Section 4.1).

    .. math::
        s = \alpha + (1 - 2\alpha)\,\frac{x}{L}, \qquad y = \mathrm{logit}(s) = \ln s - \ln(1-s),

        \ln|\det \partial y/\partial x| = \sum_i \big[\ln(1-2\alpha) - \ln L - \ln s_i
            - \ln(1 - s_i)\big].

    ``α`` keeps :math:`s` inside :math:`[\alpha, 1-\alpha)` so that :math:`y` stays finite at the
    edges of :math:`[0, L)`. Maps data :math:`x` to the flow's space :math:`y`; the inverse is
    :math:`x = L(\sigma(y) - \alpha)/(1 - 2\alpha)`. In a flow whose layers run base → data, the
    last layer is ``LogitPreprocessingTransform(levels, alpha).inv`` (the
    :class:`flowvi.flows.LogitPreprocessing` layer), and ``log_prob`` of dequantized pixels
    then includes this Jacobian (in nats, level units: see :mod:`flowvi.data.preprocess`).

    :math:`1 - s` is formed as :math:`\alpha + (1 - 2\alpha)(L - x)/L`, not as one minus
    :math:`s`, so the log-determinant keeps full precision at both edges.

    Its domain is the :math:`x` with :math:`0 < s < 1`, i.e. :math:`-\alpha L/(1 - 2\alpha) < x
    < L(1 - \alpha)/(1 - 2\alpha)`, the image of the inverse. A row with a component outside it
    (or on its edge) has no image: :meth:`call_and_ladj` returns ``ladj = -inf`` for it and
    ``y = 0`` in place of the missing values, so that a flow ending in ``.inv`` gives ``log_prob
    = -inf`` (density zero) there rather than NaN.

    Args:
        levels: :math:`L`, the number of pixel levels (256 for 8-bit images).
        alpha: :math:`\alpha \in [0, 0.5)`; with ``alpha = 0`` the domain is
            :math:`x \in (0, L)` (a pixel dequantized to exactly 0 is on its edge).

    Shapes: ``x, y: (*batch, D)``; ``ladj: (*batch,)``.

    Raises:
        ValueError: if ``levels`` is not an integer >= 2 or ``alpha`` is not in ``[0, 0.5)``.
    """

    def __init__(self, levels: int, alpha: float = 0.05) -> None:
        super().__init__()
        check_dim(levels, "levels")
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5), got {alpha!r}")
        self.levels, self.alpha = levels, float(alpha)
        self.width = (1 - 2 * self.alpha) / levels  # ds/dx
        self.log_width = math.log1p(-2 * self.alpha) - math.log(levels)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + self.width * x
        one_minus_s = self.alpha + self.width * (self.levels - x)
        # 1. outside the domain (s <= 0 or s >= 1) there is no image: such a row gets
        #    ln|det| = -inf and the placeholder y = 0 (s = 1/2), so that a flow's log density
        #    there is -inf (density zero), not NaN; NaN inputs fail both tests and stay NaN
        # 2. the placeholder is substituted before the logs, so gradients stay finite (zero)
        outside = (s <= 0) | (one_minus_s <= 0)
        log_s = torch.log(torch.where(outside, 0.5, s))
        log_1ms = torch.log(torch.where(outside, 0.5, one_minus_s))
        ladj = (self.log_width - log_s - log_1ms).sum(-1)
        return log_s - log_1ms, torch.where(outside.any(-1), -math.inf, ladj)

    def _inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / self.width

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        # ln s = ln σ(y), ln(1 - s) = ln σ(-y): the log-determinant from y without cancellation
        ladj = (F.logsigmoid(y) + F.logsigmoid(-y) - self.log_width).sum(-1)
        return self._inverse(y), ladj

    def __repr__(self) -> str:
        return f"LogitPreprocessingTransform(levels={self.levels}, alpha={self.alpha})"
