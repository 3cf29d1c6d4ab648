"""Layers whose parameters come from a network of the input: couplings and MADE layers.

Each module's call ``layer(context=None)`` returns a transform holding the network as a
function; with ``context_dim`` set, the network also reads a context (conditional flows, IAF
posteriors of a VAE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowvi._checks import check_choice, check_dim
from flowvi.nn import MADE, MLP, _with_context
from flowvi.transforms.autoregressive import AutoregressiveTransform
from flowvi.transforms.base import Transform
from flowvi.transforms.coupling import CouplingTransform
from flowvi.transforms.transformers import TRANSFORMERS

MASKS = ("half", "alternating")


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    hidden = tuple(hidden)
    for size in hidden:
        check_dim(size, "hidden layer size")
    return hidden


class _Networked(nn.Module):
    transformer_name: str
    alternate: str  # the keyword that a stack builder flips on every other layer

    def _context(self, context: Tensor | None) -> Tensor | None:
        if self.context_dim is not None and (
            context is None or context.shape[-1] != self.context_dim
        ):
            got = None if context is None else tuple(context.shape)
            raise ValueError(
                f"{type(self).__name__} is conditional: it needs a context of shape "
                f"(*batch, {self.context_dim}), got {got}"
            )
        return context


class Coupling(_Networked):
    """Coupling layer: half the coordinates (A) condition an elementwise map of the rest (B).

    Args:
        d: dimension.
        mask: ``"half"`` (A = the first ``d // 2`` coordinates) or ``"alternating"`` (A = even
            indices).
        swap: exchange A and B (alternate it along a stack so every coordinate is transformed).
        hidden: hidden sizes of the conditioner MLP, whose last layer starts at zero (so the
            layer starts at the identity).
        context_dim: size of a context fed to the conditioner, or ``None``.

    Raises:
        ValueError: for ``d < 2``, an unknown mask, or a bad hidden size.
    """

    alternate = "swap"

    def __init__(
        self,
        d: int,
        *,
        mask: str = "half",
        swap: bool = False,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_dim(d)
        if d < 2:
            raise ValueError(
                "a coupling layer needs d >= 2 (it conditions some coordinates on others)"
            )
        check_choice(mask, MASKS, "mask")
        self.d, self.context_dim = d, context_dim
        self.spec = {"mask": mask, "swap": swap, "hidden": list(_check_hidden(hidden))}
        index = torch.arange(d)
        conditioning = index < d // 2 if mask == "half" else index % 2 == 0
        self.register_buffer("mask", conditioning ^ swap)
        self.transformer = TRANSFORMERS[self.transformer_name]
        n_a = int(self.mask.sum())
        self.k = self.transformer.num_params
        self.net = MLP(n_a + (context_dim or 0), (d - n_a) * self.k, hidden)

    def forward(self, context: Tensor | None = None) -> Transform:
        context = self._context(context)

        def conditioner(x_a: Tensor) -> Tensor:
            return self.net(_with_context(x_a, context)).unflatten(-1, (-1, self.k))

        return CouplingTransform(self.mask, conditioner, self.transformer)


class NICE(Coupling):
    """Additive coupling (Dinh et al. 2014): volume preserving; add :class:`Affine` to rescale."""

    transformer_name = "additive"


class RealNVP(Coupling):
    """Affine coupling with a soft-clamped log-scale (Dinh et al. 2016)."""

    transformer_name = "affine"


class _MaskedAutoregressive(_Networked):
    """MADE-conditioned affine autoregressive layer; see :class:`MAF` and :class:`IAF`.

    Args:
        d: dimension.
        hidden: MADE hidden sizes (any number of layers).
        reverse: use the reversed order ``d-1, …, 0`` (alternate it along a stack).
        order: an explicit autoregressive order (a permutation of ``0 … d-1``), overriding
            ``reverse``; e.g. ``torch.randperm(d).tolist()`` for a random order.
        context_dim: size of a context fed to every hidden unit of the MADE, or ``None``.
    """

    alternate = "reverse"
    transformer_name = "affine"
    inverted: bool

    def __init__(
        self,
        d: int,
        *,
        hidden: Sequence[int] = (64, 64),
        reverse: bool = False,
        order: Sequence[int] | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_dim(d)
        if order is None:
            order = list(range(d))[::-1] if reverse else list(range(d))
        if sorted(order) != list(range(d)):
            raise ValueError(f"order must be a permutation of 0..{d - 1}, got {list(order)}")
        self.d, self.context_dim = d, context_dim
        self.spec = {"hidden": list(_check_hidden(hidden)), "order": list(order)}
        self.transformer = TRANSFORMERS[self.transformer_name]
        self.made = MADE(
            d, self.transformer.num_params, hidden, order=order, context_dim=context_dim
        )

    def forward(self, context: Tensor | None = None) -> Transform:
        context = self._context(context)
        transform = AutoregressiveTransform(
            lambda x: self.made(x, context), self.transformer, self.d
        )
        return transform.inv if self.inverted else transform


class IAF(_MaskedAutoregressive):
    """Inverse autoregressive flow (Kingma et al. 2016): one-pass sampling, ``d``-pass density
    of arbitrary points (its own samples' density is free)."""

    inverted = False


class MAF(_MaskedAutoregressive):
    """Masked autoregressive flow (Papamakarios et al. 2017): one-pass density, ``d``-pass
    sampling. It is the inverse of :class:`IAF`."""

    inverted = True


class NSF(Coupling):
    """Rational-quadratic spline coupling (neural spline flow, Durkan et al. 2019): K = 8 bins
    on [-3, 3], identity tails."""

    transformer_name = "spline"


class NSFAutoregressive(MAF):
    """Autoregressive rational-quadratic spline layer in the MAF direction (Durkan et al.
    2019, RQ-NSF (AR)): one-pass density, ``d``-pass sampling."""

    transformer_name = "spline"
