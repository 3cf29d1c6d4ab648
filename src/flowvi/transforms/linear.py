r"""Linear flow layers: a lower-triangular affine map, LU- and QR-decomposed invertible matrices.

A linear flow of a Gaussian is Gaussian: these layers add no non-Gaussianity on their own; they
mix coordinates between nonlinear layers, or make a full-rank Gaussian family. Composed, any
stack of them is one affine map :math:`x = A z + c`, so applied to :math:`\mathcal N(0, I)` it
gives :math:`\mathcal N(c, A A^\top)`, however many layers there are.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.transforms.base import Transform
from flowvi.transforms.sylvester import householder


def _matvec(matrix: Tensor, x: Tensor) -> Tensor:
    """``matrix @ x`` over the last axis, ``matrix: (*p, d, d)``, ``x: (*batch, d)``: one GEMM
    for a matrix shared by the whole batch instead of a batch of matrix-vector products."""
    if matrix.dim() == 2:
        return x @ matrix.mT
    return (matrix @ x.unsqueeze(-1)).squeeze(-1)


def _solve(matrix: Tensor, y: Tensor, *, upper: bool, unitriangular: bool = False) -> Tensor:
    r"""``matrix⁻¹ y`` over the last axis for a triangular ``matrix`` (see :func:`_matvec`).

    A shared matrix solves :math:`X A^\top = Y` once for all rows of ``y`` (one triangular
    solve with many right-hand sides) instead of broadcasting ``A`` over the batch.
    """
    if matrix.dim() == 2:
        flat = y.reshape(-1, y.shape[-1])
        x = torch.linalg.solve_triangular(
            matrix.mT, flat, upper=not upper, left=False, unitriangular=unitriangular
        )
        return x.reshape(y.shape)
    x = torch.linalg.solve_triangular(
        matrix, y.unsqueeze(-1), upper=upper, unitriangular=unitriangular
    )
    return x.squeeze(-1)


class TriangularAffineTransform(Transform):
    r"""Affine map :math:`y = \mu + L x` with :math:`L` lower triangular and positive diagonal.

    :math:`L = \mathrm{diag}(e^{r_{ii}}) (I + \mathrm{tril}(R, -1))`: a unit lower-triangular
    matrix from the strictly lower part of the raw matrix :math:`R`, its rows scaled by the
    exponential of the diagonal, so every raw matrix gives an invertible map and
    :math:`\ln|\det J| = \sum_i r_{ii}`. Applied to a standard normal it gives
    :math:`\mathcal N(\mu, L L^\top)`, any Gaussian. Scaling the rows (as Pyro's
    ``AutoMultivariateNormal`` parametrizes its Cholesky factor) makes a step on an
    off-diagonal entry move the factor in proportion to its row's scale: a full-rank guide of a
    narrow 500-d posterior then learns its correlations without noise swamping its scales.

    Args:
        loc: shift :math:`\mu`, shape ``(*p, d)``.
        matrix: raw matrix, shape ``(*p, d, d)``; only its lower triangle is used.
    """

    def __init__(self, loc: Tensor, matrix: Tensor) -> None:
        super().__init__()
        self.loc = loc
        self.log_diag = torch.diagonal(matrix, dim1=-2, dim2=-1)
        eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
        unit = torch.tril(matrix, -1) + eye
        self.scale_tril = torch.exp(self.log_diag)[..., None] * unit

    def _ladj(self, x: Tensor) -> Tensor:
        return torch.broadcast_to(self.log_diag.sum(-1), x.shape[:-1])

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.loc + _matvec(self.scale_tril, x), self._ladj(x)

    def _inverse(self, y: Tensor) -> Tensor:
        return _solve(self.scale_tril, y - self.loc, upper=False)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._inverse(y), -self._ladj(y)

    def __repr__(self) -> str:
        return f"TriangularAffineTransform(d={self.loc.shape[-1]})"


class LUTransform(Transform):
    r"""Invertible linear map :math:`y = L U x + c` (Kingma & Dhariwal 2018, Section 3.2).

    :math:`L` is unit lower triangular (the strictly lower part of ``lower``) and :math:`U` is
    upper triangular with diagonal :math:`e^{\ell}` (the strictly upper part of ``upper``), so
    every raw parameter value gives an invertible matrix, with
    :math:`\ln|\det J| = \sum_i \ell_i`. Compose with a :class:`PermutationTransform` for
    Glow's :math:`P L U`. The inverse is two triangular solves.

    Args:
        lower: shape ``(*p, d, d)``; only the strictly lower triangle is used.
        upper: shape ``(*p, d, d)``; only the strictly upper triangle is used.
        log_diag: :math:`\ell`, shape ``(*p, d)``.
        bias: :math:`c`, shape ``(*p, d)``.
    """

    def __init__(self, lower: Tensor, upper: Tensor, log_diag: Tensor, bias: Tensor) -> None:
        super().__init__()
        eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
        self.lower = torch.tril(lower, -1) + eye
        self.upper = torch.triu(upper, 1) + torch.diag_embed(torch.exp(log_diag))
        self.log_diag, self.bias = log_diag, bias

    def _ladj(self, x: Tensor) -> Tensor:
        return torch.broadcast_to(self.log_diag.sum(-1), x.shape[:-1])

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _matvec(self.lower, _matvec(self.upper, x)) + self.bias, self._ladj(x)

    def _inverse(self, y: Tensor) -> Tensor:
        v = _solve(self.lower, y - self.bias, upper=False, unitriangular=True)
        return _solve(self.upper, v, upper=True)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._inverse(y), -self._ladj(y)

    def __repr__(self) -> str:
        return f"LUTransform(d={self.bias.shape[-1]})"


class QRTransform(Transform):
    r"""Invertible linear map :math:`y = Q R x + c`, :math:`Q` orthogonal, :math:`R` upper
    triangular with a positive diagonal: the QR parametrization of the 1×1 convolution of
    Hoogeboom, van den Berg & Welling 2019 ("Emerging convolutions"), beside Glow's LU.

    :math:`Q = H_1 \cdots H_K` is a product of Householder reflections
    :math:`H_k = I - 2 v_k v_k^\top / \|v_k\|^2` (:func:`flowvi.transforms.sylvester.householder`;
    :math:`K \ge d` reflections reach every orthogonal matrix);
    :math:`R = \mathrm{diag}(e^{\ell}) (I + N)` with :math:`N` the strictly upper part of
    ``upper``, so :math:`r_{ii} = e^{\ell_i}` and :math:`r_{ij} = e^{\ell_i} n_{ij}`. Every raw
    parameter value gives an invertible matrix, and since :math:`|\det Q| = 1`,

    .. math:: \ln|\det J| = \sum_i \ln r_{ii} = \sum_i \ell_i \quad \text{(nats)}.

    The inverse is :math:`x = R^{-1} Q^\top (y - c)`: one matrix product and one triangular
    solve, no matrix inverse.

    Args:
        v: reflection vectors, shape ``(*p, K, d)``.
        upper: shape ``(*p, d, d)``; only the strictly upper triangle is used.
        log_diag: :math:`\ell`, shape ``(*p, d)``.
        bias: :math:`c`, shape ``(*p, d)``.
    """

    def __init__(self, v: Tensor, upper: Tensor, log_diag: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.q = householder(v)
        # R = diag(e^ℓ)(I + N): the diagonal scales whole rows. Adding a small e^ℓ_i to O(1)
        # off-diagonal entries instead (LU's form) makes random raw values give far worse
        # conditioned R, and x = R⁻¹Qᵀ(y - c) amplifies the rounding of y by ‖R⁻¹‖: over 300
        # random d = 5 layers (raw entries N(0, 2²), |z| ~ 10) the worst float64 round trip
        # was 8.7e-8 that way and 4.5e-9 this way.
        eye = torch.eye(upper.shape[-1], dtype=upper.dtype, device=upper.device)
        self.upper = torch.exp(log_diag).unsqueeze(-1) * (torch.triu(upper, 1) + eye)
        self.log_diag, self.bias = log_diag, bias

    def _ladj(self, x: Tensor) -> Tensor:
        return torch.broadcast_to(self.log_diag.sum(-1), x.shape[:-1])

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _matvec(self.q, _matvec(self.upper, x)) + self.bias, self._ladj(x)

    def _inverse(self, y: Tensor) -> Tensor:
        return _solve(self.upper, _matvec(self.q.mT, y - self.bias), upper=True)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._inverse(y), -self._ladj(y)

    def __repr__(self) -> str:
        return f"QRTransform(d={self.bias.shape[-1]})"
