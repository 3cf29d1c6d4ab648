"""A base distribution pushed through a stack of layers: the flow as a torch distribution."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, TransformedDistribution, constraints

from flowvi.flows.base import ParametricLayer
from flowvi.transforms.base import ComposeTransform, Transform, as_transform

_SHAPE = torch.Size()
SampleShape = int | torch.Size | Sequence[int]

# What a flow cannot give in closed form, and how to estimate it instead (n samples).
_NO_CLOSED_FORM = {
    "mean": "estimate it with flow.sample((n,)).mean(0)",
    "variance": "estimate it with flow.sample((n,)).var(0)",
    "standard deviation": "estimate it with flow.sample((n,)).std(0)",
    "mode": "search for it by maximizing flow.log_prob(x) over x, e.g. by gradient ascent from "
    "the best of flow.sample((n,))",
    "entropy": "estimate it (nats, differentiable) with "
    "-flow.rsample_and_log_prob((n,))[1].mean(0)",
    "CDF": "estimate P(X <= x) (every coordinate at most x's) with "
    "(flow.sample((n,)) <= x).all(-1).float().mean(0)",
    "inverse CDF (icdf)": "a vector has no single quantile function; quantile q of coordinate i: "
    "flow.sample((n,))[..., i].quantile(q, dim=0)",
}


def _no_closed_form(what: str) -> NotImplementedError:
    return NotImplementedError(f"a flow has no closed-form {what}: {_NO_CLOSED_FORM[what]}")


def _no_support_to_enumerate() -> NotImplementedError:
    return NotImplementedError(
        "a flow is a continuous distribution on R^d: it has no finite support to enumerate"
    )


def sample_shape_of(sample_shape: SampleShape) -> torch.Size:
    """``sample_shape`` as a ``torch.Size``: an int ``n`` means ``(n,)``.

    Raises:
        ValueError: for a negative size.
    """
    if isinstance(sample_shape, int) and not isinstance(sample_shape, bool):
        sample_shape = (sample_shape,)
    shape = torch.Size(sample_shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"sample sizes must be non-negative, got sample_shape {tuple(shape)}")
    return shape


def _float_dtype(distribution: Distribution) -> torch.dtype | None:
    """The dtype a distribution samples in, read from its ``mean`` (no sampling, no host sync);
    ``None`` if it has no tensor mean."""
    try:
        mean = distribution.mean
    except NotImplementedError:
        return None
    return mean.dtype if isinstance(mean, Tensor) and mean.is_floating_point() else None


def check_dtype(value: Tensor, dtype: torch.dtype | None, name: str) -> None:
    """Refuse ``value`` unless its dtype is ``dtype`` (nothing to check when ``None``).

    Raises:
        TypeError: naming both dtypes, instead of a matrix product's ``mat1 and mat2 must have
            the same dtype`` deep inside a layer.
    """
    if dtype is not None and value.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {value.dtype}, but the flow computes in {dtype}: convert it "
            f"with .to({dtype}) or the flow with .to({value.dtype})"
        )


class _NoClosedForm:
    """What a flow has no closed form for: each raises ``NotImplementedError`` saying how to
    estimate it from samples (shared by :class:`FlowDistribution` and :class:`NormalizingFlow`,
    ahead of ``Distribution`` in their bases)."""

    @property
    def mean(self) -> Tensor:
        raise _no_closed_form("mean")

    @property
    def variance(self) -> Tensor:
        raise _no_closed_form("variance")

    @property
    def stddev(self) -> Tensor:
        raise _no_closed_form("standard deviation")

    @property
    def mode(self) -> Tensor:
        raise _no_closed_form("mode")

    def entropy(self) -> Tensor:
        raise _no_closed_form("entropy")

    def cdf(self, value: Tensor) -> Tensor:
        raise _no_closed_form("CDF")

    def icdf(self, value: Tensor) -> Tensor:
        raise _no_closed_form("inverse CDF (icdf)")

    def enumerate_support(self, expand: bool = True) -> Tensor:  # noqa: FBT001, FBT002
        raise _no_support_to_enumerate()


class FlowDistribution(_NoClosedForm, TransformedDistribution):
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
        transforms: Sequence[torch.distributions.Transform],
        *,
        validate_args: bool | None = None,
    ) -> None:
        transforms = [as_transform(t) for t in transforms]
        super().__init__(base, transforms, validate_args=validate_args)
        self.flow = ComposeTransform(self.transforms)

    def rsample(self, sample_shape: SampleShape = _SHAPE) -> Tensor:
        """Reparameterized samples, shape ``(*sample_shape, *batch_shape, d)``; an int ``n``
        means ``(n,)``."""
        return self.flow(self.base_dist.rsample(sample_shape_of(sample_shape)))

    def sample(self, sample_shape: SampleShape = _SHAPE) -> Tensor:
        """Samples without gradients, shape ``(*sample_shape, *batch_shape, d)``; an int ``n``
        means ``(n,)``."""
        with torch.no_grad():
            return self.flow(self.base_dist.sample(sample_shape_of(sample_shape)))

    def rsample_and_log_prob(self, sample_shape: SampleShape = _SHAPE) -> tuple[Tensor, Tensor]:
        """Samples ``x: (*sample_shape, *batch_shape, d)`` and their exact ``ln q(x)`` (nats),
        shape ``(*sample_shape, *batch_shape)``, in one forward pass through the layers; an int
        ``n`` means ``(n,)``."""
        z = self.base_dist.rsample(sample_shape_of(sample_shape))
        x, ladj = self.flow.call_and_ladj(z)
        return x, self.base_dist.log_prob(z) - ladj

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact ``ln q(x)`` in nats, shape ``(*batch,)`` for ``value: (*batch, d)``.

        Raises:
            TypeError: if ``value``'s dtype is not the flow's (the message names both).
            ValueError: if ``value`` holds NaN or inf, or its last dimension is not ``d``
                (with argument validation on, torch's default).
        """
        check_dtype(value, _float_dtype(self.base_dist), "log_prob's value")
        if value.numel() == 0 and value.shape[-1:] == self.event_shape:
            return value.new_zeros(value.shape[:-1])  # torch's Independent cannot sum nothing
        if self._validate_args:
            self._validate_sample(value)
            if not bool(torch.isfinite(value).all()):
                raise ValueError("log_prob needs finite values: the input holds NaN or inf")
        z, ladj = self.flow.inv.call_and_ladj(value)
        return self.base_dist.log_prob(z) + ladj

    def expand(
        self, batch_shape: torch.Size | Sequence[int], _instance: FlowDistribution | None = None
    ) -> FlowDistribution:
        """A batch of independent copies: the same flow with batch shape ``batch_shape``.

        Follows torch's ``expand``: ``self.batch_shape`` must broadcast to ``batch_shape``
        (new leading dimensions, or size-1 dimensions grown); the base is expanded and the
        transforms, whose parameters broadcast, are shared. ``Independent(flow.expand((n,)),
        1)`` is then ``n`` independent draws as one event of shape ``(n, d)``.

        Raises:
            ValueError: if ``self.batch_shape`` does not broadcast to ``batch_shape``.
        """
        new = self._get_checked_instance(FlowDistribution, _instance)
        batch_shape = torch.Size(batch_shape)
        try:
            grown = torch.broadcast_shapes(self.batch_shape, batch_shape) == batch_shape
        except RuntimeError:
            grown = False
        if not grown:
            raise ValueError(
                f"cannot expand a flow of batch shape {tuple(self.batch_shape)} to "
                f"{tuple(batch_shape)}: the batch shape must broadcast to the new one"
            )
        new.base_dist = self.base_dist.expand(batch_shape)
        new.transforms, new.flow = self.transforms, self.flow
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


def build_transforms(layers: Sequence[nn.Module], context: Tensor | None = None) -> list[Transform]:
    """The transforms of ``layers``, equal to ``[layer(context) for layer in layers]``.

    Runs of consecutive :class:`ParametricLayer` s of one class and shapes (free, or amortized on
    the same context) are built as one stacked transform and unbound (see
    :meth:`Transform.unbind`): the per-layer parameter work (the amortized heads, the
    invertibility constraints) becomes a few vectorized operations instead of a few per layer,
    which roughly halves the autograd graph of
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
        out.extend(run[0].transform(**ParametricLayer.stacked_raw(run, context)).unbind())
    return out


def _stack_key(layer: nn.Module) -> object:
    """Layers with equal keys can be stacked; ``None`` for those that cannot."""
    stackable = (
        isinstance(layer, ParametricLayer) and type(layer).forward is ParametricLayer.forward
    )
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


class NormalizingFlow(_NoClosedForm, nn.Module, Distribution):
    r"""A normalizing flow: a base distribution module and a list of layer modules.

    It is an ``nn.Module`` (its parameters train, it moves with ``.to(device, dtype)``, its
    ``state_dict`` saves) and also behaves as a ``torch.distributions.Distribution``:
    ``sample``, ``rsample``, ``log_prob`` and ``rsample_and_log_prob`` act on the distribution
    that its call returns, ``flow(context=None) -> FlowDistribution``, built afresh from the
    current parameters. Pass ``context`` to amortized layers (see :class:`flowvi.flows.Layer`).

    Coming from zuko: there the module is ``zuko.flows.Flow`` and the distribution its call
    returns is ``zuko.distributions.NormalizingFlow``; here the module is
    :class:`NormalizingFlow` and the distribution :class:`FlowDistribution`.

    Quantities without a closed form (``mean``, ``variance``, ``stddev``, ``mode``,
    ``entropy``, ``cdf``, ``icdf``, ``enumerate_support``) raise ``NotImplementedError`` saying
    how to estimate them from samples. ``expand`` gives a batch of independent copies, so
    ``torch.distributions.Independent(flow.expand((n,)), 1)`` works, as does
    ``Independent(flow(context), 1)`` for a context with a batch dimension; ``Independent(flow,
    1)`` of a flow without a batch dimension is refused by torch (``ValueError``).

    Args:
        base: a module whose call returns the base distribution, e.g.
            :class:`flowvi.distributions.StandardNormal`, event shape ``(d,)``; or a fixed
            torch distribution with event shape ``(d,)`` (which then does not follow ``.to()``).
        layers: :class:`flowvi.flows.Layer` s (or any modules whose call returns a
            ``torch.distributions.Transform`` of ``event_dim`` 0 or 1), applied in order
            (``layers[0]`` acts on the base sample).

    Example:
        >>> import torch
        >>> from flowvi.distributions import StandardNormal
        >>> from flowvi.flows import NormalizingFlow, Planar
        >>> _ = torch.manual_seed(0)
        >>> flow = NormalizingFlow(StandardNormal(2), [Planar(2) for _ in range(8)])
        >>> x, log_q = flow.rsample_and_log_prob(256)   # x: (256, 2), log_q: (256,)
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
        training loops whose data were checked once up front.

        Raises:
            TypeError: if ``context``'s dtype is not the flow's (the message names both).
        """
        if context is not None:
            check_dtype(context, self._dtype(), "context")
        q0 = self.base(context)
        if context is not None:
            q0 = q0.expand(torch.broadcast_shapes(q0.batch_shape, context.shape[:-1]))
        layers = build_transforms(self.layers, self.layer_context(context))
        return FlowDistribution(q0, layers, validate_args=validate_args)

    def _dtype(self) -> torch.dtype | None:
        """The dtype of the flow's first floating parameter or buffer (``None`` if it has none)."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return None

    def layer_context(self, context: Tensor | None) -> Tensor | None:
        """The context the layers read, given the flow's: ``context`` itself here (the base
        reads it too); a subclass may map it first (:class:`flowvi.vae.ProjectedPosterior`)."""
        return context

    def rsample(self, sample_shape: SampleShape = _SHAPE, context: Tensor | None = None) -> Tensor:
        """Reparameterized samples ``x = f(z_0)``, differentiable in the flow's parameters.

        Args:
            sample_shape: the shape of independent draws; an int ``n`` means ``(n,)``.
            context: ``(*batch, c)`` for amortized layers or bases, or ``None``.

        Returns:
            ``x``, shape ``(*sample_shape, *batch, d)`` (``*batch`` empty without context).

        Raises:
            ValueError: for a negative sample size.
            TypeError: if ``context``'s dtype is not the flow's.
        """
        return self(context).rsample(sample_shape)

    def sample(self, sample_shape: SampleShape = _SHAPE, context: Tensor | None = None) -> Tensor:
        """Samples without gradients (no autograd graph is built).

        Args:
            sample_shape: the shape of independent draws; an int ``n`` means ``(n,)``.
            context: ``(*batch, c)`` for amortized layers or bases, or ``None``.

        Returns:
            ``x``, shape ``(*sample_shape, *batch, d)`` (``*batch`` empty without context).

        Raises:
            ValueError: for a negative sample size.
            TypeError: if ``context``'s dtype is not the flow's.
        """
        with torch.no_grad():  # rsample's draws (the same numbers as rsample with this seed)
            return self(context).rsample(sample_shape)

    def rsample_and_log_prob(
        self, sample_shape: SampleShape = _SHAPE, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Reparameterized samples and their exact log density, in one pass through the layers.

        :math:`\ln q(x) = \ln q_0(z_0) - \sum_k \ln|\det \partial f_k/\partial z_{k-1}|` along
        the sampling path (Rezende & Mohamed 2015, Eq. 7): no inverse is needed, so it is the
        cheap way to get the ELBO's :math:`\ln q` and works for layers without a closed-form
        inverse. Equal to ``log_prob(x)`` up to rounding.

        Args:
            sample_shape: the shape of independent draws; an int ``n`` means ``(n,)``.
            context: ``(*batch, c)`` for amortized layers or bases, or ``None``.

        Returns:
            ``(x, log_q)``: ``x`` of shape ``(*sample_shape, *batch, d)`` and ``log_q`` of shape
            ``(*sample_shape, *batch)`` in nats, both differentiable.

        Raises:
            ValueError: for a negative sample size.
            TypeError: if ``context``'s dtype is not the flow's.
        """
        return self(context).rsample_and_log_prob(sample_shape)

    def log_prob(self, value: Tensor, context: Tensor | None = None) -> Tensor:
        r"""The exact log density :math:`\ln q(x)` at any point, by inverting the layers.

        Args:
            value: ``x``, shape ``(*sample, *batch, d)`` (``*batch`` from ``context``,
                broadcasting), in the flow's dtype.
            context: ``(*batch, c)`` for amortized layers or bases, or ``None``.

        Returns:
            ``ln q(x)`` in nats, shape ``(*sample, *batch)``; ``-inf`` where the density is zero
            (outside the flow's image, e.g. of a ``logit`` data end).

        Raises:
            TypeError: if ``value``'s or ``context``'s dtype is not the flow's (naming both).
            ValueError: if ``value`` holds NaN or inf, or its last dimension is not ``d``.
        """
        return self(context).log_prob(value)

    def expand(
        self, batch_shape: torch.Size | Sequence[int], _instance: FlowDistribution | None = None
    ) -> FlowDistribution:
        """``self().expand(batch_shape)``: a batch of independent copies of the flow's current
        distribution (see :meth:`FlowDistribution.expand`); for a conditional flow, expand
        ``flow(context)`` instead.

        Raises:
            ValueError: if the flow's batch shape does not broadcast to ``batch_shape``.
        """
        return self().expand(batch_shape)

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)
