"""Coupling layers (NICE, RealNVP, NSF, monotone): part A of the coordinates conditions, through
a network, an elementwise map of the rest (Dinh et al. 2014, 2016; Durkan et al. 2019).

Each module's call ``layer(context=None)`` returns a
:class:`flowvi.transforms.coupling.CouplingTransform` holding the network as a function; with
``context_dim`` set, the network also reads a context (conditional flows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowvi._checks import check_choice, check_hidden
from flowvi.flows.base import TransformerLayer
from flowvi.nn import MLP, with_context
from flowvi.transforms.base import Transform
from flowvi.transforms.coupling import CouplingTransform, contiguous_parts

MASKS = ("half", "alternate", "checkerboard")
_MASK_ALIASES = {"alternating": "alternate"}  # the name of "alternate" in flowvi's first release


def _image_shape(d: int, image_shape: Sequence[int] | None) -> tuple[int, ...]:
    """``image_shape`` as a ``(C, H, W)`` or ``(H, W)`` tuple of ``d`` pixels; ``None`` means a
    square ``(H, H)`` image."""
    if image_shape is None:
        side = math.isqrt(d)
        if side * side != d:
            raise ValueError(
                f"mask='checkerboard' needs image_shape=(C, H, W) or (H, W); d = {d} is not a "
                "square, so it cannot be taken as an H × H image"
            )
        return (side, side)
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape
    ):
        raise ValueError(f"image_shape must be (C, H, W) or (H, W) positive ints, got {shape}")
    if math.prod(shape) != d:
        raise ValueError(f"image_shape {shape} holds {math.prod(shape)} values, not d = {d}")
    return shape


def coupling_mask(
    d: int, mask: str = "half", *, image_shape: Sequence[int] | None = None
) -> Tensor:
    """The conditioning part A of a coupling layer, as a boolean ``(d,)`` (``True``: in A).

    - ``"half"``: the first ``d // 2`` coordinates.
    - ``"alternate"``: the even coordinates ``0, 2, 4, …``.
    - ``"checkerboard"``: ``x`` is an image flattened in C order from ``image_shape`` =
      ``(C, H, W)`` or ``(H, W)`` (``None``: a square ``H × H``); pixel ``(i, j)`` of every
      channel is in A iff ``(i + j)`` is even (Dinh et al. 2016, Section 3.4, Figure 3).

    Raises:
        ValueError: for an unknown mask, an image shape that does not hold ``d`` values, or a
            mask that leaves A or its complement empty.
    """
    mask = _MASK_ALIASES.get(mask, mask)
    check_choice(mask, MASKS, "mask")
    index = torch.arange(d)
    if mask == "half":
        part = index < d // 2
    elif mask == "alternate":
        part = index % 2 == 0
    else:
        *_, h, w = _image_shape(d, image_shape)
        i, j = (index % (h * w)) // w, index % w
        part = (i + j) % 2 == 0
    if part.all() or not part.any():
        raise ValueError(
            f"mask {mask!r} leaves no coordinate "
            f"{'to transform' if part.all() else 'to condition on'} (d = {d})"
        )
    return part


class Coupling(TransformerLayer):
    """Coupling layer: part A of the coordinates conditions an elementwise map of the rest, B.

    A and B are index sets (see :func:`coupling_mask`): the conditioner reads exactly the
    ``|A|`` coordinates of A and emits parameters for the ``|B|`` of B, with no input wasted on
    masked-out zeros.

    Args:
        d: dimension.
        mask: ``"half"`` (A = the first ``d // 2`` coordinates), ``"alternate"`` (A = even
            indices) or ``"checkerboard"`` (images flattened from ``image_shape``; A = pixels
            with ``i + j`` even). ``"alternating"`` is read as ``"alternate"``.
        image_shape: ``(C, H, W)`` or ``(H, W)`` of a checkerboard mask; ``None`` takes a
            square ``H × H`` image. Only for ``mask="checkerboard"``.
        swap: exchange A and B (alternate it along a stack so every coordinate is transformed).
        hidden: hidden sizes of the conditioner MLP, whose last layer starts at zero (so the
            layer starts at its transformer's zero-parameter point: the identity for additive,
            affine and spline, a contraction by ln 2 for softplus-affine).
        context_dim: size of a context fed to the conditioner, or ``None``.
        transformer, monotone_hidden: the elementwise map (see :class:`TransformerLayer`).

    Raises:
        ValueError: for ``d < 2``, an unknown mask or transformer, a bad image shape, a bad
            hidden size, or ``monotone_hidden`` for another transformer.
    """

    alternate = "swap"

    def __init__(
        self,
        d: int,
        *,
        mask: str = "half",
        image_shape: Sequence[int] | None = None,
        swap: bool = False,
        hidden: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        transformer: str | None = None,
        monotone_hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__(d, context_dim=context_dim)
        if d < 2:
            raise ValueError(
                "a coupling layer needs d >= 2 (it conditions some coordinates on others)"
            )
        mask = _MASK_ALIASES.get(mask, mask)
        check_choice(mask, MASKS, "mask")
        if mask == "checkerboard":
            image_shape = _image_shape(d, image_shape)
        elif image_shape is not None:
            raise ValueError(f"image_shape applies to mask='checkerboard' only, not {mask!r}")
        self.spec = {"mask": mask, "swap": swap, "hidden": list(check_hidden(hidden))}
        if image_shape is not None:
            self.spec["image_shape"] = list(image_shape)
        part = coupling_mask(d, mask, image_shape=image_shape) ^ swap
        self.register_buffer("mask", part)
        # the index sets, derived from the mask (so not saved): A's coordinates, then B's
        self.register_buffer("index_a", torch.nonzero(part).squeeze(-1), persistent=False)
        self.register_buffer("index_b", torch.nonzero(~part).squeeze(-1), persistent=False)
        join_order = torch.argsort(torch.cat([self.index_a, self.index_b]))
        self.register_buffer("join_order", join_order, persistent=False)
        self._slices = contiguous_parts(part)  # views instead of gathers where A, B are ranges
        self._set_transformer(transformer, monotone_hidden)
        n_a = len(self.index_a)
        self.k = self.transformer.num_params
        self.net = MLP(n_a + (context_dim or 0), (d - n_a) * self.k, hidden)

    def forward(self, context: Tensor | None = None) -> Transform:
        context = self.check_context(context)

        def conditioner(x_a: Tensor) -> Tensor:
            return self.net(with_context(x_a, context)).unflatten(-1, (-1, self.k))

        a, b = self._slices or (self.index_a, self.index_b)
        return CouplingTransform(a, b, conditioner, self.transformer, self.join_order)


class NICE(Coupling):
    """Additive coupling (Dinh et al. 2014): volume preserving; add :class:`Affine` to rescale."""

    transformer_name = "additive"


class RealNVP(Coupling):
    """Affine coupling with a soft-clamped log-scale (Dinh et al. 2016)."""

    transformer_name = "affine"


class NSF(Coupling):
    """Rational-quadratic spline coupling (neural spline flow, Durkan et al. 2019): K = 8 bins
    on [-3, 3], identity tails."""

    transformer_name = "spline"


class MonotoneCoupling(Coupling):
    """Coupling layer with a strictly monotone MLP transformer (positive weights, ``tanh``
    units, a positive linear term; Huang et al. 2018, NAF; Wehenkel & Louppe 2019, UMNN): see
    :class:`flowvi.transforms.transformers.MonotoneTransformer`. Exact log-derivative; inverse by
    bracketed Newton bisection, to machine precision."""

    transformer_name = "monotone"
