"""Layers whose parameters come from a network of the input: couplings, MADE and recurrent
autoregressive layers.

Each module's call ``layer(context=None)`` returns a transform holding the network as a
function; with ``context_dim`` set, the network also reads a context (conditional flows, IAF
posteriors of a VAE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowvi._checks import check_choice, check_dim
from flowvi.nn import MADE, MLP, RecurrentConditioner, _with_context
from flowvi.transforms.autoregressive import AutoregressiveTransform, RecurrentTransform
from flowvi.transforms.base import Transform
from flowvi.transforms.coupling import CouplingTransform, contiguous_parts
from flowvi.transforms.transformers import TRANSFORMERS, Monotone

MASKS = ("half", "alternate", "checkerboard")
_MASK_ALIASES = {"alternating": "alternate"}  # the name of "alternate" in flowvi's first release
ORDERS = ("natural", "reverse", "random")


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    hidden = tuple(hidden)
    for size in hidden:
        check_dim(size, "hidden layer size")
    return hidden


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


class _Networked(nn.Module):
    transformer_name: str

    def _set_transformer(
        self, transformer: str | None, monotone_hidden: Sequence[int] | None
    ) -> None:
        """The elementwise map: the class's own, or ``transformer``; a monotone one of
        ``monotone_hidden`` units if given (both recorded in ``spec``)."""
        if transformer is not None:
            check_choice(transformer, TRANSFORMERS, "transformer")
            if transformer != self.transformer_name:
                self.spec["transformer"] = transformer
        name = transformer or self.transformer_name
        self.transformer = TRANSFORMERS[name]
        if monotone_hidden is not None:
            if name != "monotone":
                raise ValueError(
                    f"monotone_hidden applies to the monotone transformer only, not {name!r}"
                )
            self.transformer = Monotone(_check_hidden(monotone_hidden))
            self.spec["monotone_hidden"] = list(self.transformer.hidden)

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
        transformer: the elementwise map, a name in
            :data:`flowvi.transforms.transformers.TRANSFORMERS` (``additive``, ``affine``,
            ``softplus-affine``, ``spline``, ``monotone``); ``None`` takes the class's own.
        monotone_hidden: hidden sizes of the monotone transformer's scalar network (default
            ``(8,)``, see :class:`flowvi.transforms.transformers.Monotone`); monotone only.

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
        super().__init__()
        check_dim(d)
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
        self.d, self.context_dim = d, context_dim
        self.spec = {"mask": mask, "swap": swap, "hidden": list(_check_hidden(hidden))}
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
        context = self._context(context)

        def conditioner(x_a: Tensor) -> Tensor:
            return self.net(_with_context(x_a, context)).unflatten(-1, (-1, self.k))

        a, b = self._slices or (self.index_a, self.index_b)
        return CouplingTransform(a, b, conditioner, self.transformer, self.join_order)


class NICE(Coupling):
    """Additive coupling (Dinh et al. 2014): volume preserving; add :class:`Affine` to rescale."""

    transformer_name = "additive"


class RealNVP(Coupling):
    """Affine coupling with a soft-clamped log-scale (Dinh et al. 2016)."""

    transformer_name = "affine"


class _MaskedAutoregressive(_Networked):
    """MADE-conditioned autoregressive layer; see :class:`MAF` and :class:`IAF`.

    Args:
        d: dimension.
        hidden: MADE hidden sizes (any number of layers).
        order: the autoregressive order: ``"natural"`` (``0 … d-1``), ``"reverse"``
            (``d-1 … 0``; alternate the two along a stack), ``"random"`` (a permutation drawn
            from ``seed``, with MADE's random hidden-unit degrees from the same seed, Germain et
            al. 2015, Section 4), or an explicit permutation of ``0 … d-1``.
        seed: the seed of ``order="random"``; ``None`` draws one from torch's global generator
            (so ``torch.manual_seed`` fixes it). It is recorded in :attr:`spec`, and the order
            and masks are buffers, saved with the weights.
        context_dim: size of a context fed to every first-layer hidden unit of the MADE, or
            ``None``.
        transformer: the elementwise map, a name in
            :data:`flowvi.transforms.transformers.TRANSFORMERS` (``additive``, ``affine``,
            ``softplus-affine``, ``spline``, ``monotone``); ``None`` takes the class's own.
        monotone_hidden: hidden sizes of the monotone transformer's scalar network (default
            ``(8,)``, see :class:`flowvi.transforms.transformers.Monotone`); monotone only.

    Raises:
        ValueError: for an unknown order or transformer, a list that is not a permutation, a
            ``seed`` with a non-random order, a bad hidden size, or ``monotone_hidden`` for
            another transformer.
    """

    transformer_name = "affine"
    inverted: bool

    def __init__(
        self,
        d: int,
        *,
        hidden: Sequence[int] = (64, 64),
        order: str | Sequence[int] = "natural",
        seed: int | None = None,
        context_dim: int | None = None,
        transformer: str | None = None,
        monotone_hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_dim(d)
        hidden = _check_hidden(hidden)
        self.spec: dict = {"hidden": list(hidden), "order": order}
        generator = None
        if isinstance(order, str):
            check_choice(order, ORDERS, "order")
            if order == "random":
                if seed is None:
                    seed = int(torch.randint(2**31 - 1, ()))
                elif isinstance(seed, bool) or not isinstance(seed, int):
                    raise ValueError(f"seed must be an int, got {seed!r}")
                generator = torch.Generator().manual_seed(seed)
                permutation = torch.randperm(d, generator=generator)
                self.spec["seed"] = seed
            else:
                permutation = torch.arange(d)
                if order == "reverse":
                    permutation = permutation.flip(0)
        else:
            permutation = torch.as_tensor(list(order), dtype=torch.long)
            self.spec["order"] = permutation.tolist()
        if seed is not None and generator is None:
            raise ValueError(f"seed applies to order='random' only, not order={order!r}")
        self.d, self.context_dim = d, context_dim
        self._set_transformer(transformer, monotone_hidden)
        self._network(permutation, hidden, generator)

    def _network(
        self, permutation: Tensor, hidden: tuple[int, ...], generator: torch.Generator | None
    ) -> None:
        self.made = MADE(
            self.d,
            self.transformer.num_params,
            hidden,
            order=permutation,
            degrees="cyclic" if generator is None else "random",
            generator=generator,
            context_dim=self.context_dim,
        )

    def _transform(self, context: Tensor | None) -> AutoregressiveTransform:
        return AutoregressiveTransform(lambda x: self.made(x, context), self.transformer, self.d)

    def forward(self, context: Tensor | None = None) -> Transform:
        transform = self._transform(self._context(context))
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


class MonotoneCoupling(Coupling):
    """Coupling layer with a strictly monotone MLP transformer (positive weights, ``tanh``
    units, a positive linear term; Huang et al. 2018, NAF; Wehenkel & Louppe 2019, UMNN): see
    :class:`flowvi.transforms.transformers.Monotone`. Exact log-derivative; inverse by
    bracketed Newton bisection, to machine precision."""

    transformer_name = "monotone"


class MonotoneAutoregressive(MAF):
    """Autoregressive layer with a strictly monotone MLP transformer in the MAF direction (the
    neural autoregressive flow of Huang et al. 2018 with a MADE conditioner): one-pass
    density, ``d`` passes (each a bisection solve) for sampling."""

    transformer_name = "monotone"


class RecurrentAutoregressive(MAF):
    r"""Autoregressive layer whose conditioner is a GRU reading :math:`x_{<i}` (TAN, Oliva et
    al. 2018; see :class:`flowvi.nn.RecurrentConditioner`), in the MAF direction: one GRU pass
    for the density, ``d`` single GRU steps for sampling. Affine transformer by default
    (``transformer="spline"`` or ``"monotone"`` for the others).

    ``hidden = (H, *head)``: the GRU state size, then the hidden sizes of the head that maps the
    state (and the context) to the transformer parameters; the other arguments are those of
    :class:`MAF` (``order="random"`` draws only the order: there are no MADE degrees).
    """

    def _network(
        self, permutation: Tensor, hidden: tuple[int, ...], generator: torch.Generator | None
    ) -> None:
        self.rnn = RecurrentConditioner(
            self.d,
            self.transformer.num_params,
            hidden,
            order=permutation,
            context_dim=self.context_dim,
        )

    def _transform(self, context: Tensor | None) -> RecurrentTransform:
        return RecurrentTransform(
            lambda x: self.rnn(x, context),
            lambda previous, state: self.rnn.step(previous, state, context),
            self.rnn.steps,
            self.transformer,
        )
