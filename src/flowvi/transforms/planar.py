"""Planar flow (Rezende & Mohamed 2015, Section 4.1 and Appendix A.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvi.transforms._solve import solve_increasing
from flowvi.transforms.base import Transform


class PlanarTransform(Transform):
    r"""Planar map :math:`f(z) = z + \hat u \tanh(w^\top z + b)`.

    The raw ``u`` is replaced by :math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2`
    with :math:`m(a) = -1 + \mathrm{softplus}(a)`, so that :math:`w^\top \hat u > -1` for any raw
    parameters and the map is invertible (Rezende & Mohamed 2015, Appendix A.1).

    Log-determinant (their Eq. 11): with :math:`t = \tanh(w^\top z + b)` and
    :math:`c = w^\top \hat u = -1 + s`, :math:`s = \mathrm{softplus}(w^\top u)`,

    .. math:: \ln|1 + c (1 - t^2)| = \ln(t^2 + s (1 - t^2)),

    the right-hand form being free of the cancellation at :math:`c \approx -1`.

    The inverse has no closed form: writing :math:`\alpha = w^\top z`, the image satisfies
    :math:`w^\top y = \alpha + c \tanh(\alpha + b)`, which is non-decreasing in :math:`\alpha`
    and is solved by a safeguarded Newton iteration in the bracket
    :math:`[w^\top y - |c|, w^\top y + |c|]`; then :math:`z = y - \hat u \tanh(\alpha + b)`.

    Args:
        u: raw direction, shape ``(*p, d)``.
        w: normal of the hyperplane, shape ``(*p, d)``.
        b: offset, shape ``(*p,)``.

    ``*p`` is empty for an ordinary layer and a batch shape for an amortized one; it broadcasts
    against the inputs' ``(*batch,)``.
    """

    def __init__(self, u: Tensor, w: Tensor, b: Tensor) -> None:
        super().__init__()
        wu = torch.linalg.vecdot(w, u)
        # c = w·û = s - 1 > -1; the floor keeps s > 0 where softplus underflows (w·u < -745
        # in float64, -104 in float32), so the determinant s + (1 - s) t² never reaches 0.
        self.s = F.softplus(wu).clamp_min(torch.finfo(wu.dtype).tiny)
        self.one_minus_s = 1 - self.s
        w_sq = torch.linalg.vecdot(w, w).clamp_min(torch.finfo(w.dtype).tiny)
        self.u_hat = torch.addcmul(u, ((self.s - 1 - wu) / w_sq).unsqueeze(-1), w)
        self.w, self.b = w, b

    def _slope(self, t: Tensor) -> Tensor:
        """``1 + c (1 - t²) = s + (1 - s) t²``: the Jacobian determinant, free of cancellation."""
        return torch.addcmul(self.s, self.one_minus_s, t * t)

    def call_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.w.dim() == 1 and z.dim() == 2:
            # Shared parameters on a (batch, d) input: the fused BLAS forms addmv and addr have
            # the cheapest backward (no broadcast reductions), which matters in long flows.
            t = torch.tanh(torch.addmv(self.b, z, self.w))
            y = torch.addr(z, t, self.u_hat)
        else:
            t = torch.tanh(torch.linalg.vecdot(z, self.w) + self.b)
            y = torch.addcmul(z, self.u_hat, t.unsqueeze(-1))
        return y, torch.log(self._slope(t))

    def _inverse(self, y: Tensor) -> Tensor:
        return self._inverse_and_ladj(y)[0]

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        # 1. Project onto w: w·y = α + c tanh(α + b), with α = w·z unknown and c = s - 1.
        # 2. g(α) = α + c tanh(α + b) - w·y has g' = t² + s(1 - t²) > 0: increasing.
        # 3. |tanh| <= 1 puts the root within |c| of w·y.
        wy = torch.linalg.vecdot(y, self.w)
        c = self.s - 1

        def g(alpha: Tensor) -> tuple[Tensor, Tensor]:
            t = torch.tanh(alpha + self.b)
            return alpha + c * t - wy, self._slope(t)

        radius = c.abs().expand_as(wy)
        alpha = solve_increasing(g, wy - radius, wy + radius)
        t = torch.tanh(alpha + self.b)
        return y - self.u_hat * t.unsqueeze(-1), -torch.log(self._slope(t))

    def __repr__(self) -> str:
        return f"PlanarTransform(d={self.w.shape[-1]})"
