"""Full affine map through a lower-triangular matrix (the full-rank Gaussian as a flow layer)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.transforms.base import Transform


class TriangularAffineTransform(Transform):
    r"""Affine map :math:`y = \mu + L x` with :math:`L` lower triangular and positive diagonal.

    :math:`L` is the strictly lower part of the raw matrix plus the exponential of its diagonal,
    so every raw matrix gives an invertible map; :math:`\ln|\det J| = \sum_i \mathrm{raw}_{ii}`.
    Applied to a standard normal it gives :math:`\mathcal N(\mu, L L^\top)`, any Gaussian.

    Args:
        loc: shift :math:`\mu`, shape ``(*p, d)``.
        matrix: raw matrix, shape ``(*p, d, d)``; only its lower triangle is used.
    """

    def __init__(self, loc: Tensor, matrix: Tensor) -> None:
        super().__init__()
        self.loc = loc
        self.log_diag = torch.diagonal(matrix, dim1=-2, dim2=-1)
        self.scale_tril = torch.tril(matrix, -1) + torch.diag_embed(torch.exp(self.log_diag))

    def _ladj(self, x: Tensor) -> Tensor:
        return torch.broadcast_to(self.log_diag.sum(-1), x.shape[:-1])

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.loc + (self.scale_tril @ x.unsqueeze(-1)).squeeze(-1)
        return y, self._ladj(x)

    def _inverse(self, y: Tensor) -> Tensor:
        rhs = (y - self.loc).unsqueeze(-1)
        return torch.linalg.solve_triangular(self.scale_tril, rhs, upper=False).squeeze(-1)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._inverse(y), -self._ladj(y)

    def __repr__(self) -> str:
        return f"TriangularAffineTransform(d={self.loc.shape[-1]})"
