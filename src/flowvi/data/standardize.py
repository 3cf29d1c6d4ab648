r"""Standardization as an exact bijection, so that densities stay in data units.

A flow fitted to standardized data :math:`y = T(x) = (x - \mu)/\sigma` gives the density of the
raw data by the change of variables :math:`p_x(x) = p_y(T(x))\,|\det \partial T/\partial x|`,
:math:`\ln|\det \partial T/\partial x| = -\sum_i \ln\sigma_i`. Placing :class:`Standardize` at the
data end of the flow keeps that Jacobian inside ``log_prob``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.transforms.base import Transform


class Standardize(Transform):
    r"""Elementwise :math:`y = (x - \mu) / \sigma`, :math:`\ln|\det J| = -\sum_i \ln \sigma_i`.

    Maps data :math:`x` to standardized :math:`y`; ``.inv`` maps back
    (:math:`x = \mu + \sigma y`, log-determinant :math:`+\sum_i \ln\sigma_i`). In a flow whose
    layers run base → data, the last layer is ``Standardize(mean, std).inv``.

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
    def fit(cls, x: Tensor) -> Standardize:
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
    def from_state(cls, state: dict[str, Tensor]) -> Standardize:
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
        return f"Standardize(d={self.mean.shape[-1]})"
