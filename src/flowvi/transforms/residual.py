r"""Residual flow :math:`x = z + g(z)` with a contractive residual block.

Invertible residual networks (Behrmann et al. 2019) and Residual Flows (Chen et al. 2019): if
:math:`\mathrm{Lip}(g) \le L < 1`, then :math:`z \mapsto z + g(z)` is a bijection of
:math:`\mathbb{R}^d` (its inverse is the unique fixed point of :math:`z \mapsto x - g(z)`, a
contraction, by Banach's theorem) and every eigenvalue of :math:`J_g` has modulus below 1, so
:math:`\det(I + J_g) > 0` and :math:`\ln\det(I + J_g)` has a convergent power series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from flowvi._checks import check_choice, check_dim
from flowvi.transforms.base import Transform

LOGDETS = ("auto", "exact", "series")
EXACT_MAX_DIM = 4  # "auto" takes the exact log-determinant up to this dimension


def lipswish(a: Tensor) -> Tensor:
    r"""LipSwish :math:`\varphi(a) = a\,\sigma(a) / 1.1` (Chen et al. 2019, Section 4.2).

    :math:`\sup_a |\tfrac{d}{da}\, a\sigma(a)| \approx 1.0998`, so :math:`|\varphi'| \le 1`:
    1-Lipschitz, smooth (unlike ELU, whose second derivative jumps; the log-determinant's
    gradient involves :math:`\varphi''`) and non-saturating (unlike tanh). The slope parameter
    :math:`\beta` of the paper is fixed at 1 here.
    """
    return a * torch.sigmoid(a) / 1.1


def lipswish_slope(a: Tensor) -> Tensor:
    r""":math:`\varphi'(a) = \sigma(a)(1 + a\,\sigma(-a)) / 1.1`, in :math:`(-0.091, 1)`."""
    return torch.sigmoid(a) * (1 + a * torch.sigmoid(-a)) / 1.1


def mlp(z: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
    """``g(z)``: affine layers ``(weights[l]: (out, in), biases[l]: (out,))`` with LipSwish
    between them (none after the last); ``z: (*batch, d)`` -> ``(*batch, d)``."""
    h = z
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = torch.nn.functional.linear(h if i == 0 else lipswish(h), w, b)
    return h


def log_det_series(jacobian: Tensor, n_terms: int) -> Tensor:
    r"""The truncated series :math:`\sum_{k=1}^{n} (-1)^{k+1} \operatorname{tr}(J^k) / k` with
    exact traces (Behrmann et al. 2019, Eq. 6 without the trace estimator).

    It converges to :math:`\ln\det(I + J)` when the spectral radius of :math:`J` is below 1;
    for reference and tests (it needs the whole Jacobian).

    Args:
        jacobian: :math:`J`, shape ``(*batch, d, d)``.
        n_terms: ``n >= 1``.

    Returns:
        shape ``(*batch,)``, nats.
    """
    check_dim(n_terms, "number of series terms")
    power, total = jacobian, jacobian.new_zeros(jacobian.shape[:-2])
    for k in range(1, n_terms + 1):
        if k > 1:
            power = power @ jacobian
        total = total + (-1) ** (k + 1) * power.diagonal(dim1=-2, dim2=-1).sum(-1) / k
    return total


def series_bias_bound(d: int, lipschitz: float, n_terms: int) -> float:
    r"""Bound on the truncation error of :func:`log_det_series` for :math:`\|J\|_2 \le L < 1`:

    .. math:: \Big|\ln\det(I + J) - \sum_{k=1}^{n} \frac{(-1)^{k+1}}{k}\operatorname{tr}(J^k)\Big|
        \le \sum_{k>n} \frac{|\operatorname{tr}(J^k)|}{k}
        \le \sum_{k>n} \frac{d L^k}{k} = d\Big(-\ln(1 - L) - \sum_{k=1}^{n} \frac{L^k}{k}\Big),

    since :math:`|\operatorname{tr} A| \le d \|A\|_2` and :math:`\|J^k\|_2 \le L^k`
    (Behrmann et al. 2019, Theorem 3). In nats.

    Raises:
        ValueError: unless ``0 <= lipschitz < 1``.
    """
    if not 0 <= lipschitz < 1:
        raise ValueError(f"the Lipschitz bound must be in [0, 1), got {lipschitz}")
    head = sum(lipschitz**k / k for k in range(1, n_terms + 1))
    return d * max(-math.log1p(-lipschitz) - head, 0.0)


def fixed_point_tolerance(dtype: torch.dtype, lipschitz: float) -> float:
    r"""Relative tolerance of the inverse's fixed-point iteration for a contraction with
    constant :math:`L`: ``max(1e-10, 16 eps / (1 - L))``.

    Each computed step :math:`\tilde F(z) = F(z) + e`, :math:`|e| \le \delta` (a few ``eps``
    times the row's scale), gives :math:`|\Delta_{k+1}| \le L|\Delta_k| + 2\delta`: the
    changes settle at up to :math:`2\delta/(1 - L)`, not at zero, and a tolerance below that
    floor would refuse a valid contraction. Float64 keeps ``1e-10`` (far above its floor).
    """
    return max(1e-10, 16 * torch.finfo(dtype).eps / (1 - lipschitz))


class ResidualTransform(Transform):
    r"""Residual map :math:`x = z + g(z)`, :math:`g` an MLP with :math:`\mathrm{Lip}(g) < 1`.

    :math:`g(z) = W_L \varphi(\cdots \varphi(W_1 z + b_1) \cdots) + b_{L}` with LipSwish
    :math:`\varphi` (:func:`lipswish`, :math:`|\varphi'| \le 1`), so
    :math:`\mathrm{Lip}(g) \le \prod_l \|W_l\|_2`. The weights given here are already
    normalized (:class:`flowvi.flows.Residual` divides each by :math:`\max(1, \hat\sigma/c)`);
    ``lipschitz`` is the bound :math:`L` they satisfy, used for the inverse's iteration cap.

    Sampling direction (cheap): :math:`x = z + g(z)`, one pass.

    Inverse (Behrmann et al. 2019, Algorithm 1): Banach's fixed-point iteration
    :math:`z_{k+1} = x - g(z_k)`, :math:`z_0 = x`, vectorized over the batch. The error shrinks
    geometrically, :math:`\|z_k - z^*\| \le L^k \|z_0 - z^*\|`, and a posteriori
    :math:`\|z_k - z^*\| \le \frac{L}{1 - L}\|z_k - z_{k-1}\|`. It stops when the largest change
    :math:`|z_k - z_{k-1}|` is at most ``tol`` :math:`\cdot (1 + \|x\|_\infty)`, the scale of
    each row (a matrix product mixes the components, so a component's rounding error follows
    the row's largest one), with ``tol = max(1e-10, 16 eps / (1 - L))``: rounding each step by
    :math:`\delta` leaves changes up to :math:`2\delta/(1 - L)`, so the tolerance grows with
    the dtype's ``eps`` and with :math:`1/(1 - L)` (float32 at ``L = 0.729``: ``7e-6``; float64:
    ``1e-10``). Gradients of the inverse are
    implicit, not unrolled: :math:`\partial z^*/\partial(x, \theta) = (I + J_g)^{-1}
    \partial(x - g)/\partial(x, \theta)`, the adjoint :math:`(I + J_g)^{-\top} v` found by the
    same kind of contraction, so memory does not grow with the iteration count (a custom
    ``autograd.Function``: ``torch.func`` transforms of the inverse are not supported).

    Log-determinant :math:`\ln|\det J| = \ln\det(I + J_g)` (positive determinant as
    :math:`\rho(J_g) < 1`), by ``logdet``:

    - ``"exact"``: the batched Jacobian :math:`J_g = W_L D_{L-1} W_{L-1} \cdots D_1 W_1`,
      :math:`D_l = \mathrm{diag}\,\varphi'(a_l)`, then ``slogdet``; :math:`O(d\,h^2)` per sample.
    - ``"series"``: :math:`\sum_{k=1}^{n} (-1)^{k+1} \operatorname{tr}(J_g^k)/k` (Behrmann et al.
      2019, Eq. 6), each trace by Hutchinson's estimator :math:`\operatorname{tr} A =
      \mathbb{E}[\varepsilon^\top A \varepsilon]` with ``n_probes`` Rademacher probes per sample,
      :math:`\varepsilon^\top J_g^k` by :math:`k` vector-Jacobian products (the same probes for
      all :math:`k`). *Bias*: the truncation, :math:`|\text{bias}| \le
      \sum_{k>n} d L^k / k` (:func:`series_bias_bound`); the estimate is unbiased for the
      truncated series :math:`S_n = \operatorname{tr} P`, :math:`P = \sum_{k \le n}
      (-1)^{k+1} J_g^k/k`. *Variance* (Rademacher probes): :math:`2 \sum_{i \ne j}
      \big((P_{ij} + P_{ji})/2\big)^2 / m` for :math:`m` probes (Gaussian probes would add the
      diagonal terms). Each call draws fresh probes from torch's generator.
    - ``"auto"``: exact for :math:`d \le 4`, series above.

    Args:
        weights: :math:`W_l`, shapes ``(h_1, d), (h_2, h_1), …, (d, h_{L-1})``.
        biases: :math:`b_l`, shapes ``(h_1,), …, (d,)``.
        lipschitz: the bound :math:`L < 1` on :math:`\mathrm{Lip}(g)` the weights satisfy.
        logdet: ``"auto"``, ``"exact"`` or ``"series"``.
        n_terms: number of series terms :math:`n`.
        n_probes: Hutchinson probes per sample :math:`m`.

    Shapes: ``z, x: (*batch, d)``; ``ladj: (*batch,)`` in nats.

    Raises:
        ValueError: for mismatched shapes, ``lipschitz`` outside ``(0, 1)``, an unknown
            ``logdet``, or non-positive ``n_terms`` / ``n_probes``.
        ValueError: from the inverse, for an input holding NaN or inf.
        RuntimeError: from the inverse, if the iteration has not converged after the number of
            steps the Banach rate allows (the weights break the Lipschitz bound).

    References:
        Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen (2019), Invertible Residual Networks.
        Chen, Behrmann, Duvenaud, Jacobsen (2019), Residual Flows for Invertible Generative
        Modeling.
    """

    def __init__(
        self,
        weights: Sequence[Tensor],
        biases: Sequence[Tensor],
        *,
        lipschitz: float,
        logdet: str = "auto",
        n_terms: int = 10,
        n_probes: int = 1,
    ) -> None:
        super().__init__()
        if len(weights) != len(biases) or not weights:
            raise ValueError("weights and biases must be non-empty lists of equal length")
        d = weights[0].shape[1]
        sizes = [d] + [w.shape[0] for w in weights]
        for w, b, n_in, n_out in zip(weights, biases, sizes[:-1], sizes[1:], strict=True):
            if tuple(w.shape) != (n_out, n_in) or tuple(b.shape) != (n_out,):
                raise ValueError(
                    f"layer shapes must chain d -> … -> d: got weight {tuple(w.shape)} and "
                    f"bias {tuple(b.shape)} after width {n_in}"
                )
        if sizes[-1] != d:
            raise ValueError(f"the last layer must map back to d = {d}, got {sizes[-1]}")
        if not 0 < lipschitz < 1:
            raise ValueError(f"lipschitz must be in (0, 1) for an invertible map, got {lipschitz}")
        check_choice(logdet, LOGDETS, "logdet")
        check_dim(n_terms, "number of series terms")
        check_dim(n_probes, "number of Hutchinson probes")
        self.weights, self.biases = list(weights), list(biases)
        self.d, self.lipschitz = d, float(lipschitz)
        self.exact = logdet == "exact" or (logdet == "auto" and d <= EXACT_MAX_DIM)
        self.n_terms, self.n_probes = n_terms, n_probes

    def g(self, z: Tensor) -> Tensor:
        """The residual block ``g(z)``, ``(*batch, d)``."""
        return mlp(z, self.weights, self.biases)

    def _slopes(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``g(z)`` and the hidden layers' activation slopes ``φ'(a_l): (*batch, h_l)``."""
        h, slopes = z, []
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i > 0:  # φ and φ' from one sigmoid: σ(-a) = 1 - σ(a)
                sig = torch.sigmoid(h)
                slopes.append(sig * (1 + h * (1 - sig)) / 1.1)
                h = h * sig / 1.1
            h = torch.nn.functional.linear(h, w, b)
        return h, slopes

    def _jacobian(self, slopes: list[Tensor]) -> Tensor:
        # J_gᵀ = W_1ᵀ D_1 W_2ᵀ … D_{L-1} W_Lᵀ, built from the input side as (*batch, d, h_l):
        # each step is one (batch·d, h_l) x (h_l, h_{l+1}) product
        jac_t = self.weights[0].mT
        for w, s in zip(self.weights[1:], slopes, strict=True):
            jac_t = (jac_t * s.unsqueeze(-2)) @ w.mT
        return jac_t.mT

    def _vjp(self, v: Tensor, slopes: list[Tensor]) -> Tensor:
        """``vᵀ J_g``: ``v: (*probes, *batch, d)`` -> same shape."""
        for w, s in zip(reversed(self.weights[1:]), reversed(slopes), strict=True):
            v = (v @ w) * s
        return v @ self.weights[0]

    def jacobian_g(self, z: Tensor) -> Tensor:
        """The Jacobian ``∂g/∂z`` at ``z: (*batch, d)``, shape ``(*batch, d, d)``."""
        return self._jacobian(self._slopes(z)[1]).expand(*z.shape, self.d)

    def call_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        gz, slopes = self._slopes(z)
        x = z + gz
        if self.exact:
            eye = torch.eye(self.d, dtype=z.dtype, device=z.device)
            jac = self._jacobian(slopes).expand(*z.shape, self.d)
            return x, torch.linalg.slogdet(eye + jac)[1]
        # Hutchinson: ε Rademacher, (m, *batch, d); w_k = εᵀ J^k; term_k = mean_m(w_k · ε)
        probe = torch.empty(self.n_probes, *z.shape, dtype=z.dtype, device=z.device)
        probe = probe.bernoulli_(0.5).mul_(2).sub_(1)
        w, ladj = probe, z.new_zeros(z.shape[:-1])
        for k in range(1, self.n_terms + 1):
            w = self._vjp(w, slopes)
            ladj = ladj + (-1) ** (k + 1) / k * torch.linalg.vecdot(w, probe).mean(0)
        return x, ladj

    def _inverse(self, x: Tensor) -> Tensor:
        return _FixedPointInverse.apply(self, x, *self.weights, *self.biases)

    def _fixed_point(
        self, step: Callable[[Tensor], Tensor], start: Tensor, scale: Tensor
    ) -> Tensor:
        """Iterate ``step`` from ``start`` until ``max |Δ| <= tol · scale`` elementwise.

        Successive changes contract by ``L``: ``‖Δ_k‖ <= L^{k-1} ‖Δ_1‖``, so convergence takes at
        most ``1 + ln(tol·scale / ‖Δ_1‖) / ln L`` steps; twice that (+ 10 for rounding) is the
        cap, beyond which the Lipschitz bound must be broken.
        """
        tol = fixed_point_tolerance(start.dtype, self.lipschitz)
        bound = tol * scale
        z = step(start)
        first = (z - start).norm(dim=-1, keepdim=True)
        ratio = bound.amin(-1, keepdim=True) / first.clamp_min(torch.finfo(start.dtype).tiny)
        need = 1 + math.log(max(float(ratio.min()), 1e-300)) / math.log(self.lipschitz)
        cap = 2 * max(math.ceil(need), 1) + 10
        change = (z - start).abs()
        for _ in range(cap):
            if bool((change <= bound).all()):
                return z
            new = step(z)
            change, z = (new - z).abs(), new
        if bool((change <= bound).all()):
            return z
        raise RuntimeError(
            f"residual fixed-point iteration did not converge in {cap} steps (largest change "
            f"{float((change / scale).max()):.3g} relative, tolerance {tol:.1g}); the residual "
            f"block is not a contraction with Lipschitz bound {self.lipschitz:.3g}"
        )

    def __repr__(self) -> str:
        hidden = [w.shape[0] for w in self.weights[:-1]]
        mode = "exact" if self.exact else f"series(n={self.n_terms}, probes={self.n_probes})"
        return f"ResidualTransform(d={self.d}, hidden={hidden}, L={self.lipschitz:.3g}, {mode})"


class _FixedPointInverse(torch.autograd.Function):
    """``z* = x - g(z*)`` by fixed-point iteration, with implicit gradients.

    Differentiating ``z* + g(z*; θ) = x``: ``(I + J_g) dz* = dx - (∂g/∂θ) dθ``. For an upstream
    gradient ``v``, the adjoint ``w = (I + J_g)^{-T} v`` solves ``w = v - J_gᵀ w``, again a
    contraction with rate ``L``; then ``∂/∂x = w`` and ``∂/∂θ = -wᵀ ∂g/∂θ``.
    """

    @staticmethod
    def forward(ctx, t: ResidualTransform, x: Tensor, *params: Tensor) -> Tensor:
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the residual inverse needs a finite input (no NaN or inf)")
        scale = 1 + x.abs().amax(-1, keepdim=True)  # per row: see ResidualTransform
        z = t._fixed_point(lambda z: x - t.g(z), x, scale)
        ctx.t = t
        ctx.save_for_backward(z, *params)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        t: ResidualTransform = ctx.t
        z, *params = ctx.saved_tensors
        slopes = t._slopes(z)[1]
        scale = grad_z.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        w = t._fixed_point(lambda w: grad_z - t._vjp(w, slopes), grad_z, scale.expand_as(z))
        n = len(t.weights)
        grads: list[Tensor | None] = [None] * len(params)
        wanted = [i for i in range(len(params)) if ctx.needs_input_grad[2 + i]]
        if wanted:
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_(i in wanted) for i, p in enumerate(params)]
                gz = mlp(z, leaves[:n], leaves[n:])
                found = torch.autograd.grad(gz, [leaves[i] for i in wanted], -w)
            for i, grad in zip(wanted, found, strict=True):
                grads[i] = grad
        return None, w, *grads
