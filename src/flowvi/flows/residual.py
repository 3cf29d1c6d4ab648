r"""The residual flow layer (invertible ResNet block): parameters and spectral normalization."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowvi._checks import check_choice, check_dim, check_hidden
from flowvi.flows.base import Layer
from flowvi.transforms.residual import LOGDETS, ResidualTransform

POWER_MAX_ITER = 200  # power iteration steps per call, at most


def power_iteration(weight: Tensor, v: Tensor) -> Tensor:
    r"""Top right singular vectors of a stack ``weight: (L, m, n)`` by power iteration,
    warm-started from the unit vectors ``v: (L, n)``; returns the new ``v`` (no autograd).

    Iterates :math:`v \leftarrow A v / \|A v\|` on the Gram matrices :math:`A = W^\top W` (one
    batched product per step for all ``L`` matrices; :math:`\|A v\|` estimates
    :math:`\sigma_{\max}^2`) until every estimate changes by at most ``1000 eps`` relative
    (about 1e-4 in float32, 2e-13 in float64), or :data:`POWER_MAX_ITER` steps. ``A v`` gets
    :math:`\sqrt{\text{tiny}}\, v` added so that a vector is kept where ``W = 0`` (and the
    iteration resumes once ``W`` is non-zero), a negligible shift otherwise. Zero-padding ``W``
    to a common shape (``v`` zero on the padding) changes neither its singular values nor
    its singular vectors.

    Power iteration *underestimates*: :math:`\|W v\| \le \sigma_{\max}(W)` for any unit
    ``v``, the relative error decaying like :math:`(\sigma_2/\sigma_1)^{4k}` after :math:`k`
    steps. When the top singular values cluster (spectral normalization tends to push them
    together) the decay is slow, but the error is then at most about the cluster's width.
    """
    info = torch.finfo(weight.dtype)
    tol = 1000 * info.eps
    with torch.no_grad():
        gram = weight.mT @ weight
        v = v.unsqueeze(-1)
        previous = None
        for _ in range(POWER_MAX_ITER):
            av = torch.baddbmm(v, gram, v, beta=info.tiny**0.5)
            estimate = torch.linalg.vector_norm(av, dim=-2, keepdim=True)
            v = av / estimate
            if previous is not None and bool(((estimate - previous).abs() <= tol * estimate).all()):
                break
            previous = estimate
    return v.squeeze(-1)


def _unit(n: int) -> Tensor:
    x = torch.randn(n)
    return x / torch.linalg.vector_norm(x)


class Residual(Layer):
    r"""Residual flow layer :math:`x = z + g(z)`, :math:`\mathrm{Lip}(g) \le c^L < 1`
    (Behrmann et al. 2019; Chen et al. 2019). See :class:`flowvi.transforms.ResidualTransform`.

    :math:`g` is an MLP ``d -> hidden… -> d`` with LipSwish activations
    (:math:`|\varphi'| \le 1`). Every weight matrix is spectrally normalized on each call,
    :math:`\tilde W = W / \max(1, \hat\sigma(W)/c)`, so :math:`\|\tilde W\|_2 \le c` and
    :math:`\mathrm{Lip}(g) \le c^L` for the :math:`L = ` ``len(hidden) + 1`` layers: any raw
    weights give an invertible layer.

    :math:`\hat\sigma = \|W v\|` comes from :func:`power_iteration` with the estimate of the
    top right singular vector of each weight kept in the buffer ``right`` (saved with the
    weights; it warm-starts the next call). Power iteration underestimates :math:`\sigma`, and
    then :math:`\|\tilde W\|_2 = c\,\sigma/\hat\sigma` exceeds :math:`c`. So instead of the one
    step per call of Miyato et al. (2018) (which left :math:`\|\tilde W\|_2` up to 15% above
    :math:`c` in a 2-d fit with Adam, lr 1e-3, hidden (64, 64)), every call iterates until
    :math:`\hat\sigma` is stable to ``1000 eps`` relative (at most :data:`POWER_MAX_ITER`
    steps per call): near rounding level once the weights rest (after construction or a load,
    in evaluation); while training in float32 about 20 steps (~2 ms on a CPU) per call, leaving
    :math:`\|\tilde W\|_2 \le 1.01\,c` in that fit. The margin
    is ample: the layer stays invertible while every :math:`\hat\sigma` is within
    :math:`1 - c` relative (10% at ``c = 0.9``) of :math:`\sigma`. Gradients flow through
    :math:`\hat\sigma = u^\top W v` with ``u, v`` held fixed, as in Miyato et al. (2018).

    Sampling (base ``z`` -> ``x``) is one pass through :math:`g`; ``log_prob`` inverts by the
    fixed-point iteration :math:`z_{k+1} = x - g(z_k)`, converging like :math:`(c^L)^k`.
    The last layer starts at zero, so the layer starts at the identity.

    Args:
        d: dimension.
        hidden: hidden sizes of :math:`g` (may be empty: then :math:`g` is affine).
        coeff: :math:`c \in (0, 1)`, the bound on each weight's spectral norm; larger ``c``
            is more expressive but makes the inverse and the series converge more slowly.
        logdet: ``"exact"`` (Jacobian + ``slogdet``), ``"series"`` (truncated power series
            with Hutchinson traces: biased by at most ``series_bias_bound(d, c^L, n_terms)``,
            random), or ``"auto"`` (exact for ``d <= 4``).
        n_terms: series terms.
        n_probes: Hutchinson probes per sample.
        context_dim: must be ``None``: this layer is not amortized (``context`` passed to the
            call is ignored).

    Raises:
        ValueError: for a bad ``d``, hidden size, ``coeff`` outside ``(0, 1)``, unknown
            ``logdet``, non-positive ``n_terms`` / ``n_probes``, or a ``context_dim``.
    """

    def __init__(
        self,
        d: int,
        *,
        hidden: Sequence[int] = (64, 64),
        coeff: float = 0.9,
        logdet: str = "auto",
        n_terms: int = 10,
        n_probes: int = 1,
        context_dim: int | None = None,
    ) -> None:
        super().__init__(d, context_dim=context_dim)
        hidden = check_hidden(hidden)
        if isinstance(coeff, bool) or not isinstance(coeff, int | float) or not 0 < coeff < 1:
            raise ValueError(f"coeff must be a number in (0, 1), got {coeff!r}")
        check_choice(logdet, LOGDETS, "logdet")
        check_dim(n_terms, "number of series terms")
        check_dim(n_probes, "number of Hutchinson probes")
        self.coeff, self.logdet = float(coeff), logdet
        self.n_terms, self.n_probes = n_terms, n_probes
        self.spec = {
            "hidden": list(hidden),
            "coeff": self.coeff,
            "logdet": logdet,
            "n_terms": n_terms,
            "n_probes": n_probes,
        }
        sizes = [d, *hidden, d]
        self.net = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        # right singular vector estimates of every weight, zero-padded to the widest layer
        v = torch.zeros(len(self.net), max(sizes))
        for i, n_in in enumerate(sizes[:-1]):
            v[i, :n_in] = _unit(n_in)
        self.register_buffer("right", v)
        with torch.no_grad():  # converge the estimates for the initial weights
            self.right.copy_(power_iteration(self._padded(), self.right))

    def _padded(self) -> Tensor:
        """The weights zero-padded to ``(L, width, width)``, stacked (differentiable)."""
        width = self.right.shape[-1]
        return torch.stack(
            [
                nn.functional.pad(
                    lin.weight, (0, width - lin.in_features, 0, width - lin.out_features)
                )
                for lin in self.net
            ]
        )

    def normalized_weights(self) -> list[Tensor]:
        r""":math:`\tilde W_l = W_l / \max(1, \hat\sigma_l / c)`, after updating the power
        iteration buffer ``right`` for the current weights (:func:`power_iteration`);
        differentiable in :math:`W_l` through
        :math:`\hat\sigma_l = u_l^\top W_l v_l` with ``u, v`` held fixed (Miyato et al. 2018)."""
        weights = [linear.weight for linear in self.net]
        padded = self._padded()
        v = power_iteration(padded.detach(), self.right)
        with torch.no_grad():
            self.right.copy_(v)
            wv = padded @ v.unsqueeze(-1)
            norm = torch.linalg.vector_norm(wv, dim=-2, keepdim=True)
            u = torch.where(norm > 0, wv / norm, 0.0)
        sigma = (u.mT @ padded @ v.unsqueeze(-1)).flatten()
        scale = torch.clamp_min(sigma / self.coeff, 1.0)
        return [w / s for w, s in zip(weights, scale.unbind(), strict=True)]

    def forward(self, context: Tensor | None = None) -> ResidualTransform:
        return ResidualTransform(
            self.normalized_weights(),
            [linear.bias for linear in self.net],
            lipschitz=self.coeff ** len(self.net),
            logdet=self.logdet,
            n_terms=self.n_terms,
            n_probes=self.n_probes,
        )
