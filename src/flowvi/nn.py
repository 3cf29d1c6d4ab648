"""The networks that produce flow parameters: an MLP conditioner and MADE's masked MLP."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch >= 2.3


def with_context(x: Tensor, context: Tensor | None) -> Tensor:
    """``x: (*batch, n)`` with the context ``(*cbatch, c)`` broadcast and appended."""
    if context is None:
        return x
    batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    return torch.cat([x.expand(*batch, -1), context.expand(*batch, -1)], -1)


class ReLU(nn.ReLU):
    r"""``max(x, 0)``; in compiled code computed as :math:`(x + |x|)/2`.

    The two are equal in floating point (``x + |x|`` is ``2x`` or ``+0`` exactly, for
    ``|x|`` below half the largest float), but ReLU's backward needs the boolean mask
    ``x > 0``, and inductor's CPU code stores boolean tensors slowly (≈ 150 µs for 256 × 64
    values on an AVX-512 CPU, against 10 µs eager: it made a compiled MAF step slower than an
    eager one; see ``benchmarks/RESULTS.md``). The form with ``|x|`` needs no mask. Its
    gradient at exactly 0 is the subgradient 1/2 instead of 0. Eager code runs ``torch.relu``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if _is_compiling():
            return (x + x.abs()) * 0.5
        return torch.relu(x)


class MLP(nn.Sequential):
    """``in_features -> hidden… -> out_features`` with ReLU activations.

    The last layer starts at zero, so a flow layer it conditions starts at the identity
    (its transformer's zero-parameter point) — the usual stable initialization of couplings.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int]) -> None:
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), ReLU()]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a buffer)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


DEGREES = ("cyclic", "random")


def hidden_degrees(
    d: int,
    sizes: Sequence[int],
    kind: str = "cyclic",
    generator: torch.Generator | None = None,
    *,
    lowest: int = 1,
) -> list[Tensor]:
    r"""MADE degrees :math:`m^l(k) \in \{\text{lowest}, \dots, d-1\}` of the hidden units, one
    tensor per layer.

    A hidden unit of degree ``m`` may see the inputs of rank ``<= m`` in the order; an output of
    rank ``r`` may see the hidden units of degree ``< r``. Units of degree ``d`` would reach no
    output, hence the upper end ``d - 1`` (for ``d = 1`` every degree is 1 and the outputs are
    constants).

    - ``"cyclic"``: unit ``k`` gets ``k mod (d-1) + 1``, deterministic; every degree appears as
      soon as a layer has ``d - 1`` units, so every permitted dependency is realised.
    - ``"random"``: Germain et al. (2015, Section 4, deep MADE): each degree is drawn uniformly
      from the integers ``min(previous layer's degrees) … d-1``, so no unit is left without input.
      In addition, when a layer has at least as many units as that range has values, its first
      units take each value once: a mask fixed for good (a flow layer) then loses no permitted
      input-output dependency, which an unlucky draw could otherwise cut.

    Args:
        d: input dimension.
        sizes: hidden layer sizes.
        kind: ``"cyclic"`` or ``"random"``.
        generator: the random source of ``"random"`` (default: torch's global generator).
        lowest: the lowest degree: 1, or 0 for a conditional MADE, whose degree-0 units see
            the context alone and so reach every output, the first included.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    if kind not in DEGREES:
        raise ValueError(f"unknown MADE degrees {kind!r}; valid: {', '.join(DEGREES)}")
    top = max(d - 1, 1)
    degrees, low = [], lowest
    for size in sizes:
        if kind == "cyclic":
            degree = torch.arange(size) % (top + 1 - lowest) + lowest
        else:
            degree = torch.randint(low, top + 1, (size,), generator=generator)
            span = top + 1 - low
            if size >= span:
                degree[:span] = torch.arange(low, top + 1)
            low = int(degree.min())
        degrees.append(degree)
    return degrees


class MADE(nn.Module):
    r"""Masked autoencoder for distribution estimation (Germain et al. 2015).

    Maps ``x: (*batch, d)`` (and an optional ``context: (*batch, c)``, seen by every hidden
    unit of the first layer) to parameters ``(*batch, d, k)`` such that output ``i`` depends
    only on the inputs that come before ``i`` in ``order``: the Jacobian of the parameters in
    ``x`` is strictly triangular in that order. With a context, hidden degrees start at 0: those
    units see the context alone, so every output, the first included, depends on the context
    (with degrees from 1 the first output would be a constant). Input ``j`` gets degree
    ``rank(j) + 1``; the masks follow Germain et al. (2015, Section 4, deep MADE): hidden unit
    of degree ``m`` sees inputs and units of degree ``<= m``, output ``i`` sees units of degree
    ``< rank(i) + 1``. The masks and the order are buffers, saved with the weights.

    Args:
        d: dimension.
        k: parameters per dimension.
        hidden: hidden layer sizes (any number of layers, including none, each >= 1).
        order: a permutation of ``0 … d-1`` (the autoregressive order); default natural.
        degrees: hidden-unit degrees, ``"cyclic"`` or ``"random"`` (see :func:`hidden_degrees`).
        generator: the random source of ``degrees="random"`` (default: torch's global one).
        context_dim: size of the context, or ``None``.

    Raises:
        ValueError: if ``order`` is not a permutation of ``0 … d-1`` or ``degrees`` is unknown.
    """

    def __init__(
        self,
        d: int,
        k: int,
        hidden: Sequence[int] = (64, 64),
        *,
        order: Sequence[int] | Tensor | None = None,
        degrees: str = "cyclic",
        generator: torch.Generator | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.d, self.k = d, k
        order_t = torch.arange(d) if order is None else torch.as_tensor(order).long().cpu()
        if sorted(order_t.tolist()) != list(range(d)):
            raise ValueError(f"order must be a permutation of 0..{d - 1}, got {order_t.tolist()}")
        degree_in = torch.empty(d, dtype=torch.long)
        degree_in[order_t] = torch.arange(1, d + 1)  # rank of each input in the order, from 1
        self.register_buffer("order", order_t)
        c = context_dim or 0
        lowest = 0 if context_dim else 1
        layer_degrees = [
            degree_in,
            *hidden_degrees(d, hidden, degrees, generator, lowest=lowest),
        ]
        masks = [
            after[:, None] >= before[None, :] for before, after in itertools.pairwise(layer_degrees)
        ]
        out_degree = degree_in.repeat_interleave(k)
        masks.append(out_degree[:, None] > layer_degrees[-1][None, :])
        # context columns connect to every unit of the first layer
        masks[0] = torch.cat([masks[0], torch.ones(masks[0].shape[0], c, dtype=torch.bool)], 1)
        layers: list[nn.Module] = []
        for i, mask in enumerate(masks):
            layers.append(MaskedLinear(mask))
            if i < len(masks) - 1:
                layers.append(ReLU())
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        out = self.net(with_context(x, context))
        return out.unflatten(-1, (self.d, self.k))


class RecurrentConditioner(nn.Module):
    r"""Recurrent autoregressive conditioner: a GRU reads :math:`x_{<i}` and a head maps its
    state :math:`h_i` (and the context) to the parameters of coordinate ``i``.

    In the order :math:`\pi`, step ``r`` reads the previous coordinate :math:`x_{\pi(r-1)}`
    (0 at the first step) and updates :math:`h_r = \mathrm{GRU}(h_{r-1}, x_{\pi(r-1)})`; the
    parameters of coordinate :math:`\pi(r)` are :math:`\mathrm{head}(h_r, c)`. The GRU and the
    head are shared across ``i``, so the parameter count does not grow with ``d``; and
    :math:`h_r` depends on :math:`x_{\pi(0)}, \dots, x_{\pi(r-1)}` only, so the parameters'
    Jacobian in ``x`` is strictly triangular in the order. This is the recurrent conditioner of
    TAN (Oliva et al. 2018, Section 3.2), the recurrent counterpart of MADE's masks (Germain et
    al. 2015). :meth:`forward` runs the GRU once over the shifted input (all parameters, one
    pass); :meth:`step` advances it by one coordinate (the ``d`` sequential steps of inversion).

    Args:
        d: dimension.
        k: parameters per dimension.
        hidden: ``(H, *head)``: the GRU state size ``H``, then the head MLP's hidden sizes (its
            last layer starts at zero, so a flow layer it conditions starts at its transformer's
            zero-parameter point).
        order: a permutation of ``0 … d-1`` (the autoregressive order); default natural.
        context_dim: size of a context, fed to the GRU at every step and to the head, or
            ``None``.

    Raises:
        ValueError: for an empty ``hidden`` or an ``order`` that is not a permutation.
    """

    def __init__(
        self,
        d: int,
        k: int,
        hidden: Sequence[int] = (64, 64),
        *,
        order: Sequence[int] | Tensor | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        hidden = tuple(hidden)
        if not hidden:
            raise ValueError("hidden must give at least the GRU state size")
        order_t = torch.arange(d) if order is None else torch.as_tensor(order).long().cpu()
        if sorted(order_t.tolist()) != list(range(d)):
            raise ValueError(f"order must be a permutation of 0..{d - 1}, got {order_t.tolist()}")
        self.d, self.k, self.context_dim = d, k, context_dim
        c = context_dim or 0
        self.register_buffer("order", order_t)
        self.register_buffer("rank", torch.argsort(order_t), persistent=False)
        self.steps = tuple(order_t.tolist())  # the order as Python ints, for the step loop
        self.gru = nn.GRU(1 + c, hidden[0], batch_first=True)
        self.head = MLP(hidden[0] + c, k, hidden[1:])

    def _flat_context(self, context: Tensor | None, batch: torch.Size) -> Tensor | None:
        return (
            None if context is None else context.expand(*batch, -1).reshape(-1, context.shape[-1])
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Parameters ``(*batch, d, k)`` of every coordinate from ``x: (*batch, d)`` (and
        ``context: (*batch, c)``, broadcast), in one GRU pass."""
        batch = (
            x.shape[:-1]
            if context is None
            else torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        )
        flat = x.expand(*batch, -1).reshape(-1, self.d)[:, self.order]
        # shifted input: step r reads x_{π(r-1)}, and a zero at the first step
        inputs = torch.cat([torch.zeros_like(flat[:, :1]), flat[:, :-1]], -1).unsqueeze(-1)
        ctx = self._flat_context(context, batch)
        if ctx is not None:
            ctx = ctx.unsqueeze(1).expand(-1, self.d, -1)
            inputs = torch.cat([inputs, ctx], -1)
        states, _ = self.gru(inputs)
        params = self.head(with_context(states, ctx))[:, self.rank]
        return params.reshape(*batch, self.d, self.k)

    def step(
        self, previous: Tensor, state: Tensor | None, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One step: from the previous coordinate's value ``previous: (*batch,)`` (zeros at the
        first step) and the GRU ``state`` (``None`` at the first step), the next coordinate's
        parameters ``(*batch, k)`` and the new state (an opaque tensor to pass back)."""
        batch = (
            previous.shape
            if context is None
            else torch.broadcast_shapes(previous.shape, context.shape[:-1])
        )
        inputs = previous.expand(batch).reshape(-1, 1)
        ctx = self._flat_context(context, batch)
        if ctx is not None:
            inputs = torch.cat([inputs, ctx], -1)
        out, state = self.gru(inputs.unsqueeze(1), state)
        params = self.head(with_context(out.squeeze(1), ctx))
        return params.reshape(*batch, self.k), state
