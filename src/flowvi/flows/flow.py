"""A base distribution pushed through a stack of layers: the flow as a torch distribution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, TransformedDistribution, constraints

from flowvi.flows.layer import Layer
from flowvi.transforms.base import ComposeTransform, Transform

_SHAPE = torch.Size()


class FlowDistribution(TransformedDistribution):
    r"""The distribution of :math:`x = f_K \circ \dots \circ f_1(z_0)`, :math:`z_0 \sim q_0`.

    A ``TransformedDistribution`` whose density uses each layer's ``call_and_ladj`` once:

    .. math:: \ln q_K(x) = \ln q_0(z_0) - \sum_k \ln|\det \partial f_k / \partial z_{k-1}|

    (Rezende & Mohamed 2015, Eq. 7). ``log_prob`` inverts the layers, so it is exact at any
    point, including points the flow did not sample.
    """

    has_rsample = True

    def __init__(
        self,
        base: Distribution,
        transforms: Sequence[Transform],
        *,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(base, list(transforms), validate_args=validate_args)
        self.flow = ComposeTransform(self.transforms)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = _SHAPE) -> Tensor:
        """Reparameterized samples, shape ``(*sample_shape, *batch_shape, d)``."""
        return self.flow(self.base_dist.rsample(torch.Size(sample_shape)))

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | Sequence[int] = _SHAPE
    ) -> tuple[Tensor, Tensor]:
        """Samples ``x: (*sample_shape, *batch_shape, d)`` and their exact ``ln q(x)`` (nats),
        shape ``(*sample_shape, *batch_shape)``, in one forward pass through the layers."""
        z = self.base_dist.rsample(torch.Size(sample_shape))
        x, ladj = self.flow.call_and_ladj(z)
        return x, self.base_dist.log_prob(z) - ladj

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact ``ln q(x)`` in nats, shape ``(*batch,)`` for ``value: (*batch, d)``.

        Raises:
            ValueError: if ``value`` holds NaN or inf, or its last dimension is not ``d``
                (with argument validation on, torch's default).
        """
        if value.numel() == 0 and value.shape[-1:] == self.event_shape:
            return value.new_zeros(value.shape[:-1])  # torch's Independent cannot sum nothing
        if self._validate_args:
            self._validate_sample(value)
            if not bool(torch.isfinite(value).all()):
                raise ValueError("log_prob needs finite values: the input holds NaN or inf")
        z, ladj = self.flow.inv.call_and_ladj(value)
        return self.base_dist.log_prob(z) + ladj


def build_transforms(layers: Sequence[nn.Module], context: Tensor | None = None) -> list[Transform]:
    """The transforms of ``layers``, equal to ``[layer(context) for layer in layers]``.

    Runs of consecutive :class:`Layer` s of one class and shapes (free, or amortized on the same
    context) are built as one stacked transform and unbound (see :meth:`Transform.unbind`): the
    per-layer parameter work (the amortized heads, the invertibility constraints) becomes a few
    vectorized operations instead of a few per layer, which roughly halves the autograd graph of
    a long planar flow.
    """
    runs: list[list[nn.Module]] = []  # a loop, not itertools.groupby: torch.compile traces it
    for layer in layers:
        key = _stack_key(layer)
        if runs and key is not None and key == _stack_key(runs[-1][0]):
            runs[-1].append(layer)
        else:
            runs.append([layer])
    out: list[Transform] = []
    for run in runs:
        if len(run) == 1:
            out.extend(layer(context) for layer in run)
            continue
        out.extend(run[0].transform(**Layer.stacked_raw(run, context)).unbind())
    return out


def _stack_key(layer: nn.Module) -> object:
    """Layers with equal keys can be stacked; ``None`` for those that cannot."""
    stackable = isinstance(layer, Layer) and type(layer).forward is Layer.forward
    if not stackable:
        return None
    return (type(layer), layer.context_dim, tuple(layer.shapes.items()))


class _Fixed(nn.Module):
    """A fixed torch distribution as a base module."""

    def __init__(self, distribution: Distribution) -> None:
        super().__init__()
        if not isinstance(distribution, Distribution) or len(distribution.event_shape) != 1:
            raise ValueError(
                "base must be an nn.Module returning a distribution, or a torch distribution "
                f"with event shape (d,); got {distribution!r}"
            )
        self.distribution = distribution

    def forward(self, context: Tensor | None = None) -> Distribution:
        return self.distribution


class NormalizingFlow(nn.Module, Distribution):
    r"""A normalizing flow: a base distribution module and a list of layer modules.

    It is an ``nn.Module`` (its parameters train, it moves with ``.to(device, dtype)``, its
    ``state_dict`` saves) and also behaves as a ``torch.distributions.Distribution``:
    ``sample``, ``rsample``, ``log_prob`` and ``rsample_and_log_prob`` act on the distribution
    that its call returns, ``flow(context=None) -> FlowDistribution``, built afresh from the
    current parameters. Pass ``context`` to amortized layers (see :class:`flowvi.flows.Layer`).

    Args:
        base: a module whose call returns the base distribution, e.g.
            :class:`flowvi.distributions.StandardNormal`, event shape ``(d,)``; or a fixed
            torch distribution with event shape ``(d,)`` (which then does not follow ``.to()``).
        layers: modules whose call returns a :class:`flowvi.transforms.Transform`, applied in
            order (``layers[0]`` acts on the base sample).

    Example:
        >>> flow = NormalizingFlow(StandardNormal(2), [Planar(2) for _ in range(8)])
        >>> x, log_q = flow.rsample_and_log_prob((256,))   # x: (256, 2), log_q: (256,)
        >>> torch.allclose(flow.log_prob(x), log_q, atol=1e-4)
        True
    """

    arg_constraints: dict = {}  # noqa: RUF012
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, base: nn.Module | Distribution, layers: Sequence[nn.Module]) -> None:
        nn.Module.__init__(self)
        self.base = base if isinstance(base, nn.Module) else _Fixed(base)
        self.layers = nn.ModuleList(layers)
        q0 = self.base()
        Distribution.__init__(self, q0.batch_shape, q0.event_shape, validate_args=False)

    def forward(
        self, context: Tensor | None = None, *, validate_args: bool | None = None
    ) -> FlowDistribution:
        """The flow's distribution; with ``context: (*batch, c)`` its batch shape is ``*batch``
        (the base is expanded to it), one conditional distribution per context row.
        ``validate_args=False`` skips the input checks of ``log_prob`` (two host syncs): for
        training loops whose data were checked once up front."""
        q0 = self.base(context)
        if context is not None:
            q0 = q0.expand(torch.broadcast_shapes(q0.batch_shape, context.shape[:-1]))
        layers = build_transforms(self.layers, self.layer_context(context))
        return FlowDistribution(q0, layers, validate_args=validate_args)

    def layer_context(self, context: Tensor | None) -> Tensor | None:
        """The context the layers read, given the flow's: ``context`` itself here (the base
        reads it too); a subclass may map it first (:class:`flowvi.vae.ProjectedPosterior`)."""
        return context

    def rsample(
        self, sample_shape: torch.Size | Sequence[int] = _SHAPE, context: Tensor | None = None
    ) -> Tensor:
        return self(context).rsample(sample_shape)

    def sample(
        self, sample_shape: torch.Size | Sequence[int] = _SHAPE, context: Tensor | None = None
    ) -> Tensor:
        with torch.no_grad():
            return self(context).rsample(sample_shape)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | Sequence[int] = _SHAPE, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self(context).rsample_and_log_prob(sample_shape)

    def log_prob(self, value: Tensor, context: Tensor | None = None) -> Tensor:
        return self(context).log_prob(value)

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)
