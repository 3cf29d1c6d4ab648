"""Sylvester normalizing flows (van den Berg, Hasenclever, Tomczak & Welling 2018).

One transform, :class:`SylvesterTransform`, holds the math for a given ``Q`` with orthonormal
columns; the orthogonal (O-SNF), Householder (H-SNF) and triangular (T-SNF) variants differ only
in how ``Q`` is made: :func:`orthonormalize` (their Section 3.1, iterative), :func:`householder`
(their Section 3.2, a product of reflections), or a fixed permutation (their Section 3.3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvi.transforms._solve import solve_increasing
from flowvi.transforms.base import Transform

MAX_ITER = 100


def orthonormalize(q: Tensor, *, max_iter: int = MAX_ITER) -> Tensor:
    r"""The orthonormal polar factor of ``q``, by the iteration of van den Berg et al. 2018 (§3.1).

    .. math:: Q^{(k+1)} = Q^{(k)} \left(I + \tfrac12 (I - Q^{(k)\top} Q^{(k)})\right)

    maps each singular value :math:`\sigma \mapsto \sigma (3 - \sigma^2) / 2` and keeps the
    singular vectors, so it converges (quadratically near the end) to :math:`U V^\top` for
    :math:`q = U \Sigma V^\top` when every :math:`\sigma \in (0, \sqrt 3)`. ``q`` is first divided
    by :math:`\|q^\top q\|_F^{1/2} \ge \sigma_{\max}` (the polar factor does not depend on the
    scale). The loop stops once :math:`\|I - Q^\top Q\|_F \le \sqrt{\varepsilon}` of the
    dtype, after one more step (which squares the error down to about :math:`\varepsilon`), so
    ``Q`` is orthonormal to machine precision in float32 and float64.

    The gradient is the polar factor's own, not the unrolled iteration's (which would keep
    every step for the backward pass): with :math:`q = Q H`, :math:`H = Q^\top q`,

    .. math:: \bar q = (I - Q Q^\top)\, \bar Q H^{-1} + Q (B - B^\top),
        \qquad B H + H B = Q^\top \bar Q,

    from :math:`dQ = (I - QQ^\top)\, dq\, H^{-1} + Q\Omega`, :math:`\Omega H + H \Omega =
    Q^\top dq - dq^\top Q` (the Sylvester equation solved in :math:`H`'s eigenbasis).

    Args:
        q: raw matrices, shape ``(*p, d, M)`` with ``M <= d``.
        max_iter: most iterations (a singular value grows by 1.5x per step while small, so 100
            steps reach about 1e-16 of the largest).

    Returns:
        ``Q``, shape ``(*p, d, M)``, with :math:`Q^\top Q = I_M`.

    Raises:
        ValueError: if ``M > d``, or if the iteration did not converge: ``q`` has (numerically)
            linearly dependent columns, or non-finite entries.
    """
    d, m = q.shape[-2:]
    if m > d:
        raise ValueError(f"cannot make {m} orthonormal columns in dimension {d} (need M <= d)")
    return _PolarFactor.apply(q, max_iter)


class _PolarFactor(torch.autograd.Function):
    """:func:`orthonormalize`'s iteration forward, the polar factor's derivative backward."""

    @staticmethod
    def forward(q: Tensor, max_iter: int) -> Tensor:
        # flattened to (n, d, M), so that the products run as fused batched ones (baddbmm)
        # rather than as 4-D matmuls, which copy a transposed operand first
        p = q.reshape(-1, *q.shape[-2:])
        eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand(len(p), -1, -1)
        scale = torch.linalg.matrix_norm(p.mT @ p).sqrt().clamp_min(torch.finfo(q.dtype).tiny)
        p = p / scale[:, None, None]
        tol = math.sqrt(torch.finfo(q.dtype).eps)
        for _ in range(max_iter):
            residual = torch.baddbmm(eye, p.mT, p, alpha=-1)  # I - PᵀP
            error = torch.linalg.matrix_norm(residual).max()
            p = torch.baddbmm(p, p, residual, alpha=0.5)  # P (I + (I - PᵀP) / 2)
            if bool(error <= tol):
                return p.reshape(q.shape)
        raise ValueError(
            "the orthogonalization of Q did not converge: its raw matrix has linearly dependent "
            "columns (rank < M) or non-finite entries"
        )

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, int], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        q, p = (t.reshape(-1, *t.shape[-2:]) for t in ctx.saved_tensors)
        grad = grad.reshape(p.shape)
        h = p.mT @ q
        lam, v = torch.linalg.eigh(0.5 * (h + h.mT))  # H = V diag(λ) Vᵀ, λ = singular values
        a = v.mT @ (p.mT @ grad) @ v
        b = v @ (a / (lam[:, :, None] + lam[:, None, :])) @ v.mT
        h_inv = (v / lam[:, None, :]) @ v.mT
        grad_q = torch.baddbmm(grad, p, p.mT @ grad, alpha=-1) @ h_inv + p @ (b - b.mT)
        return grad_q.reshape(ctx.saved_tensors[0].shape), None


def householder(v: Tensor) -> Tensor:
    r"""The orthogonal matrix :math:`Q = H_1 H_2 \cdots H_K`, :math:`H_k = I - 2 v_k v_k^\top /
    \|v_k\|^2` (Householder reflections; van den Berg et al. 2018, §3.2).

    Each :math:`v_k` is first divided by its largest absolute entry (a detached scale: the
    reflection depends only on the direction), so no norm under- or overflows; :math:`v_k = 0`
    gives :math:`H_k = I`.

    Args:
        v: reflection vectors, shape ``(*p, K, d)``.

    Returns:
        ``Q``, shape ``(*p, d, d)``, orthogonal to rounding (a product of exact reflections).
    """
    with torch.no_grad():
        big = v.abs().amax(-1, keepdim=True)
        big = torch.where(big > 0, big, torch.ones_like(big))
    v = v / big
    norm_sq = (v * v).sum(-1, keepdim=True)
    u = v * torch.rsqrt(torch.where(norm_sq > 0, norm_sq, torch.ones_like(norm_sq)))
    d = v.shape[-1]
    q = torch.eye(d, dtype=v.dtype, device=v.device).expand(*v.shape[:-2], d, d)
    for uk in u.unbind(-2):
        # Q <- Q H_k = Q - 2 (Q u)(u)ᵀ: O(d²) per reflection, never a d x d product
        q = q - 2 * (q @ uk.unsqueeze(-1)) * uk.unsqueeze(-2)
    return q


def _log_cosh(x: Tensor) -> Tensor:
    """``ln cosh x = |x| + ln(1 + e^{-2|x|}) - ln 2``, without overflow."""
    a = x.abs()
    return a + F.softplus(-2 * a) - math.log(2)


def strict_upper(x: Tensor) -> Tensor:
    """The strictly upper triangle of ``x: (*p, M, M)``, zeros elsewhere.

    A ``where`` on an index mask rather than ``torch.triu``, whose CPU kernel starts a parallel
    region even for tiny matrices (milliseconds per call on a busy machine).
    """
    i = torch.arange(x.shape[-1], device=x.device)
    return torch.where(i.unsqueeze(-1) < i, x, 0.0)


def _vecmat(x: Tensor, m: Tensor) -> Tensor:
    """``x @ m`` per sample: ``x: (*batch, d)``, ``m: (d, M)`` or ``(*p, d, M)`` -> ``(*, M)``."""
    if m.dim() == 2:
        return x @ m
    return (x.unsqueeze(-2) @ m).squeeze(-2)


class SylvesterTransform(Transform):
    r"""Sylvester map :math:`f(z) = z + Q R\, h(\tilde R Q^\top z + b)`, :math:`h = \tanh`.

    ``Q`` has orthonormal columns; :math:`R, \tilde R` are upper triangular. By Sylvester's
    determinant identity (van den Berg et al. 2018, Section 2),

    .. math:: \ln|\det J| = \sum_{i=1}^M \ln\left|1 + r_{ii} \tilde r_{ii}\, h'(a_i)\right|,
        \quad a = \tilde R Q^\top z + b,

    in nats. The strictly upper triangles of ``r`` and ``r_tilde`` are used as given (their
    lower triangles are ignored); their diagonals are raw and constrained by construction, as
    in the paper's experiments: :math:`r_{ii} = \tanh(\rho_i)`, :math:`\tilde r_{ii} =
    \tanh(\tilde\rho_i)`. Then :math:`c_i = r_{ii}\tilde r_{ii} \ge -1` even after rounding,
    and the exact

    .. math:: s_i = 1 + \tanh\rho_i \tanh\tilde\rho_i
        = \frac{\cosh(\rho_i + \tilde\rho_i)}{\cosh\rho_i \cosh\tilde\rho_i} > 0

    is computed from the right-hand form (no cancellation when :math:`c_i \to -1`), so the
    Jacobian factor :math:`1 + c_i(1 - t_i^2) = s_i - c_i t_i^2 > 0`, :math:`t = \tanh(a)`:
    every raw value gives an invertible map, and ``ladj`` stays finite and exact.

    The inverse (which the paper, sampling only, does not use) has no closed form but is exact:
    :math:`y - z \in \mathrm{span}(Q)`, so with :math:`v = Q^\top z` the map on the span is
    :math:`v + R\,h(\tilde R v + b) = Q^\top y`, upper triangular in ``v``; it is solved from the
    last coordinate to the first, each a scalar increasing equation (safeguarded Newton, see
    :func:`flowvi.transforms._solve.solve_increasing`), vectorized over the batch.

    Args:
        q: ``Q``, orthonormal columns (see :func:`orthonormalize`, :func:`householder`), shape
            ``(*p, d, M)``, ``M <= d``. Not checked.
        r: raw :math:`R`, shape ``(*p, M, M)``: strictly upper part and diagonal :math:`\rho`.
        r_tilde: raw :math:`\tilde R`, shape ``(*p, M, M)``: strictly upper part and diagonal
            :math:`\tilde\rho`.
        b: bias, shape ``(*p, M)``.

    ``*p`` is empty for an ordinary layer and a batch shape for an amortized one; it broadcasts
    against the inputs' ``(*batch,)``.

    Example:
        >>> import torch
        >>> from flowvi.transforms.sylvester import SylvesterTransform, orthonormalize
        >>> q = orthonormalize(torch.randn(5, 2))            # d = 5, M = 2
        >>> t = SylvesterTransform(q, torch.randn(2, 2), torch.randn(2, 2), torch.zeros(2))
        >>> y, ladj = t.call_and_ladj(torch.randn(100, 5))
        >>> y.shape, ladj.shape
        (torch.Size([100, 5]), torch.Size([100]))
    """

    def __init__(self, q: Tensor, r: Tensor, r_tilde: Tensor, b: Tensor) -> None:
        super().__init__()
        rho = torch.diagonal(r, dim1=-2, dim2=-1)
        rho_tilde = torch.diagonal(r_tilde, dim1=-2, dim2=-1)
        self.q, self.b = q, b
        self.r = strict_upper(r) + torch.diag_embed(torch.tanh(rho))
        self.r_tilde = strict_upper(r_tilde) + torch.diag_embed(torch.tanh(rho_tilde))
        self.c = torch.tanh(rho) * torch.tanh(rho_tilde)
        log_s = _log_cosh(rho + rho_tilde) - _log_cosh(rho) - _log_cosh(rho_tilde)
        # the floor keeps s > 0 where it underflows (|ρ|, |ρ̃| > ~370 in float64)
        self.s = torch.exp(log_s).clamp_min(torch.finfo(log_s.dtype).tiny)
        self.qr = q @ self.r  # A = Q R, (*p, d, M)
        self.q_rt = q @ self.r_tilde.mT  # Bᵀ = Q R̃ᵀ, (*p, d, M)

    def _slope(self, t: Tensor) -> Tensor:
        """``1 + c (1 - t²) = s - c t² > 0``: the diagonal of the triangular Jacobian factor."""
        return self.s - self.c * t * t

    def call_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.tanh(_vecmat(z, self.q_rt) + self.b)
        y = z + _vecmat(t, self.qr.mT)
        return y, torch.log(self._slope(t)).sum(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._inverse_and_ladj(y)[0]

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        # 1. y - z = Q R t lies in span(Q), so with v = Qᵀz and w = Qᵀy:  v + R t = w,
        #    t = tanh(R̃ v + b). Both R and R̃ are upper triangular.
        # 2. Row i: v_i + r_ii tanh(r̃_ii v_i + β_i) = ω_i, with β_i = b_i + Σ_{k>i} R̃_ik v_k and
        #    ω_i = w_i - Σ_{j>i} R_ij t_j, known once v_{i+1}, …, v_M are: solve i = M, …, 1.
        # 3. Each row's left side has slope s_i - c_i t_i² > 0 and |tanh| <= 1 puts the root
        #    within |r_ii| of ω_i: a bracketed increasing scalar equation.
        # 4. z = y - Q R t, with the same t as the forward pass.
        omega = _vecmat(y, self.q)
        beta = torch.broadcast_to(self.b, omega.shape)
        r_diag = torch.diagonal(self.r, dim1=-2, dim2=-1)
        rt_diag = torch.diagonal(self.r_tilde, dim1=-2, dim2=-1)
        ts: list[Tensor] = []
        for i in reversed(range(omega.shape[-1])):
            v_i, t_i = _solve_row(
                omega[..., i],
                beta[..., i],
                r_diag[..., i],
                rt_diag[..., i],
                self.s[..., i],
                self.c[..., i],
            )
            ts.append(t_i)
            # move coordinate i's now-known terms into the rows above it
            beta = beta + self.r_tilde[..., :, i] * v_i.unsqueeze(-1)
            omega = omega - self.r[..., :, i] * t_i.unsqueeze(-1)
        t = torch.stack(ts[::-1], -1)
        z = y - _vecmat(t, self.qr.mT)
        return z, -torch.log(self._slope(t)).sum(-1)

    def __repr__(self) -> str:
        d, m = self.q.shape[-2:]
        return f"SylvesterTransform(d={d}, M={m})"


def _solve_row(
    omega: Tensor, beta: Tensor, r: Tensor, rt: Tensor, s: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """Solve ``v + r tanh(rt v + beta) = omega`` for ``v`` (increasing: slope ``s - c t²``);
    return ``(v, t)``, ``t = tanh(rt v + beta)``, shape of ``omega``."""

    def g(v: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.tanh(rt * v + beta)
        return v + r * t - omega, s - c * t * t

    radius = torch.broadcast_to(r.abs(), omega.shape)
    v = solve_increasing(g, omega - radius, omega + radius)
    return v, torch.tanh(rt * v + beta)
