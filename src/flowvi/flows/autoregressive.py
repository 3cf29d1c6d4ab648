"""Autoregressive layers: MADE-conditioned (IAF, MAF, NSF-AR, monotone) and recurrent (TAN)
ones (Kingma et al. 2016; Papamakarios et al. 2017; Durkan et al. 2019; Oliva et al. 2018).

Each module's call ``layer(context=None)`` returns a
:class:`flowvi.transforms.autoregressive.AutoregressiveTransform` (or its inverse) holding the
network as a function; with ``context_dim`` set, the network also reads a context (conditional
flows, IAF posteriors of a VAE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowvi._checks import check_choice, check_dim, check_hidden
from flowvi.flows.base import TransformerLayer
from flowvi.nn import MADE, RecurrentConditioner
from flowvi.transforms.autoregressive import AutoregressiveTransform, RecurrentTransform
from flowvi.transforms.base import Transform

ORDERS = ("natural", "reverse", "random")


class _MaskedAutoregressive(TransformerLayer):
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
        transformer, monotone_hidden: the elementwise map (see :class:`TransformerLayer`).

    Raises:
        ValueError: for an unknown order or transformer, a list that is not a permutation, a
            ``seed`` with a non-random order, a bad hidden size, or ``monotone_hidden`` for
            another transformer.
    """

    transformer_name = "affine"
    inverted: bool

    @classmethod
    def stack(
        cls, d: int, length: int, *, order: str | None = None, **options: object
    ) -> list[TransformerLayer]:
        """``length`` layers; ``order=None`` alternates ``natural`` and ``reverse`` along the
        stack, any other order is given to every layer (``random``: each its own seed)."""
        check_dim(length, "flow length K")
        layers = []
        for k in range(length):
            layers += super().stack(d, 1, order=order or ("natural", "reverse")[k % 2], **options)
        return layers

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
        super().__init__(d, context_dim=context_dim)
        hidden = check_hidden(hidden)
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
        transform = self._transform(self.check_context(context))
        return transform.inv if self.inverted else transform


class IAF(_MaskedAutoregressive):
    """Inverse autoregressive flow (Kingma et al. 2016): one-pass sampling, ``d``-pass density
    of arbitrary points (its own samples' density is free)."""

    inverted = False


class MAF(_MaskedAutoregressive):
    """Masked autoregressive flow (Papamakarios et al. 2017): one-pass density, ``d``-pass
    sampling. It is the inverse of :class:`IAF`."""

    inverted = True


class NSFAutoregressive(MAF):
    """Autoregressive rational-quadratic spline layer in the MAF direction (Durkan et al.
    2019, RQ-NSF (AR)): one-pass density, ``d``-pass sampling."""

    transformer_name = "spline"


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
