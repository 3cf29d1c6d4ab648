r"""The Pyro bridge: a Pyro model as a flowvi :class:`~flowvi.targets.Target`, and a flowvi flow
as a Pyro guide.

* :func:`target` traces a Pyro model once, finds its continuous latent sites, and returns a
  :class:`PyroTarget`: the model's log joint as a density of one unconstrained vector
  ``z: (*batch, d)``, ready for :func:`flowvi.fit`. All particles of a batch are scored in one
  call of the model, by Pyro's own particle vectorization (a ``pyro.plate`` to the left of the
  model's plates, as ``Trace_ELBO(vectorize_particles=True)`` does).
* :class:`FlowGuide` is a ``pyro.infer.autoguide.AutoContinuous`` whose posterior over the
  packed unconstrained latent is a flowvi :class:`~flowvi.flows.NormalizingFlow`, so that
  ``pyro.infer.SVI`` trains any registered flowvi family; each step samples the flow once and
  takes its exact :math:`\ln q` from the same forward pass (no inverse).

Pyro is an optional dependency: ``pip install "flowvi[pyro]"``.

References:
    Kucukelbir, Tran, Ranganath, Gelman & Blei (2017), *Automatic Differentiation Variational
    Inference*, JMLR 18: the unconstrained parametrization and its log-Jacobian.
    Bingham et al. (2019), *Pyro: Deep Universal Probabilistic Programming*, JMLR 20.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

try:
    import pyro
    import pyro.poutine as poutine
    from pyro.distributions import Delta, TorchDistribution
    from pyro.infer.autoguide import AutoContinuous
    from pyro.infer.autoguide.initialization import init_to_median
    from pyro.poutine.messenger import Messenger
    from pyro.poutine.runtime import am_i_wrapped
    from pyro.poutine.util import site_is_subsample
except ImportError as error:  # pragma: no cover - exercised with pyro hidden
    raise ImportError(
        'flowvi.pyro needs Pyro (pyro-ppl): install it with pip install "flowvi[pyro]"'
    ) from error

import torch
from torch import Tensor
from torch.distributions import biject_to, constraints

from flowvi.flows import LAYERS, NormalizingFlow, build
from flowvi.flows.flow import FlowDistribution
from flowvi.targets.base import Target
from flowvi.targets.sites import Site, constrain, split, unconstrain

_PARTICLES = "_flowvi_particles"


# ---------------------------------------------------------------------------------------------
# the model's structure
# ---------------------------------------------------------------------------------------------


def _prototype(model: Callable, args: tuple, kwargs: dict) -> Any:
    """One trace of ``model``, hidden from any handler outside and without gradients."""
    with torch.no_grad():
        return poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)


def _is_latent(node: dict) -> bool:
    return (
        node["type"] == "sample"
        and not node["is_observed"]
        and not node["infer"].get("is_auxiliary", False)
        and not site_is_subsample(node)
    )


def _max_plate_nesting(trace: Any) -> int:
    """The number of batch dimensions the model's vectorized plates use (0 without plates)."""
    dims = [
        -frame.dim
        for node in trace.nodes.values()
        if node["type"] == "sample"
        for frame in node["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def _latent_site(name: str, node: dict) -> Site:
    """The :class:`Site` of one latent sample site of a trace.

    Raises:
        ValueError: for a discrete site, a support with no bijection from the reals, a site
            inside a subsampled plate, or a batch dim that no plate declares.
    """
    fn = node["fn"]
    support = fn.support
    if fn.has_enumerate_support or support.is_discrete:
        raise ValueError(
            f"latent site {name!r} is discrete ({type(fn).__name__}): flowvi fits continuous "
            "latents only; marginalize it out or make it observed"
        )
    for frame in node["cond_indep_stack"]:
        if frame.full_size is not None and frame.full_size != frame.size:
            raise ValueError(
                f"latent site {name!r} lies in the subsampled plate {frame.name!r} "
                f"({frame.size} of {frame.full_size}): its shape changes from call to call; "
                "only observed sites may be subsampled"
            )
    plate_dims = {frame.dim for frame in node["cond_indep_stack"] if frame.vectorized}
    batch_shape = fn.batch_shape
    for i, size in enumerate(batch_shape):
        dim = i - len(batch_shape)
        if size > 1 and dim not in plate_dims:
            raise ValueError(
                f"latent site {name!r} has a batch dim of size {size} at dim {dim} that no "
                "pyro.plate declares: declare it with a plate, or make it an event dim with "
                ".to_event()"
            )
    try:
        transform = biject_to(support)
    except NotImplementedError as error:
        raise ValueError(
            f"latent site {name!r} has support {support}, which has no bijection from the reals"
        ) from error
    return Site(name, tuple(node["value"].shape), transform)


def _latent_sites(trace: Any) -> tuple[Site, ...]:
    return tuple(_latent_site(name, node) for name, node in trace.nodes.items() if _is_latent(node))


def _event_dim(site: Site, fn_event_dim: int) -> int:
    """The number of rightmost dims of the site's unconstrained value that are event dims."""
    return fn_event_dim + len(site.unconstrained_shape) - len(site.shape)


def _per_particle(value: Tensor | float, n: int, nesting: int) -> Tensor:
    """Sum a log-density term over every dim but the particle dim ``-(nesting + 1)``: ``(n,)``.

    A term without that dim (it does not depend on the particle) is the same for every particle.
    """
    value = torch.as_tensor(value)
    if value.dim() <= nesting:
        return value.sum().expand(n)
    value = value.movedim(-(nesting + 1), 0)
    return value.reshape(value.shape[0], -1).sum(-1).expand(n)


# ---------------------------------------------------------------------------------------------
# 1. a Pyro model as a flowvi target
# ---------------------------------------------------------------------------------------------


class PyroTarget(Target):
    r"""A Pyro model's log joint as a density of the unconstrained latent vector ``z``.

    ``z: (*batch, d)`` concatenates the model's latent sites in trace order, each flattened in
    its unconstrained space (``site.transform = biject_to(support)`` maps it back; shapes
    include the site's plate dims, as in Pyro's ``AutoContinuous``). With :math:`x = T(u)`
    the constrained values,

    .. math:: \ln \tilde p(z) = \ln p(x, y) + \sum_{\text{sites}} \ln|\det \partial T / \partial u|

    in nats: every sample site's log density (observed or latent, with the scales of
    subsampled plates and the masks Pyro applies), plus the log-Jacobian of each bijection
    (Kucukelbir et al. 2017, Eq. 4). Observed sites may lie in subsampled plates
    (``pyro.plate("data", N, subsample_size=B)``): the plate's scale ``N / B`` makes each call
    an unbiased estimate of the full-data log joint.

    All ``n = prod(batch)`` particles are scored in one call of the model: inside a
    ``pyro.plate`` of size ``n`` at dim ``-(max_plate_nesting + 1)``, with each site conditioned
    on its unconstrained slice reshaped to ``(n, 1, …, 1, *unconstrained_shape)``.

    Build it with :func:`target`.

    Args:
        model: a Pyro model (a callable with ``pyro.sample`` statements).
        *args, **kwargs: its arguments, passed on every call.

    Attributes:
        model, args, kwargs: as given.
        max_plate_nesting: the number of batch dims the model's plates use.
        sites: the latent sites (:class:`flowvi.targets.Site`), in trace order.

    Raises:
        ValueError: if the model has no latent site, or a latent site is discrete, has a support
            with no bijection from the reals, lies in a subsampled plate, or has a batch dim
            that no ``pyro.plate`` declares (the message names the site).
        RuntimeError: from ``log_prob``, if the model samples a latent site its first trace did
            not have.
    """

    def __init__(self, model: Callable, *args: Any, **kwargs: Any) -> None:
        trace = _prototype(model, args, kwargs)
        sites = _latent_sites(trace)
        if not sites:
            raise ValueError(f"model {_name(model)} has no latent sample site")
        super().__init__(sum(s.size for s in sites), name=_name(model), sites=sites)
        self.model, self.args, self.kwargs = model, args, kwargs
        self.max_plate_nesting = _max_plate_nesting(trace)
        self._fn_event_dims = {name: trace.nodes[name]["fn"].event_dim for name in self.names}
        self.subsampled = _subsampled_plates(trace)
        self.full_data = False

    def exact(self) -> PyroTarget:
        """This model with its full-data log joint, for diagnostics and summaries
        (:func:`flowvi.posterior.summarize`, :func:`flowvi.metrics.evaluate` call it).

        A model with subsampled plates (``pyro.plate("data", N, subsample_size=B)``) scores a
        random subsample per call: an unbiased estimate of the log joint, whose noise ruins
        importance weights (PSIS k-hat far above 0.7 for a posterior fitted well). The exact
        target sweeps every plate over its ``N`` indices, ``B`` at a time (``ceil(N / B)``
        calls of the model, each scoring all particles), and counts each datum once, at
        weight 1: the last sweep takes the plate's last ``B`` indices and masks those already
        counted. Without subsampled plates it is this target itself.

        Raises:
            ValueError: if a site lies in two subsampled plates (nested subsampling).
        """
        if not self.subsampled or self.full_data:
            return self
        exact = copy.copy(self)
        exact.full_data = True
        return exact

    def initial_point(self, init_loc_fn: Callable = init_to_median) -> Tensor:
        """Where a fit starts, ``(d,)``: each latent site at ``init_loc_fn`` (Pyro's
        initialization strategies; the prior median by default, from 15 prior draws of torch's
        generator), mapped to the unconstrained space, in the model's order."""
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
            values = {name: init_loc_fn(trace.nodes[name]) for name in self.names}
        return unconstrain(self.sites, values).to(torch.get_default_dtype())

    @property
    def names(self) -> list[str]:
        """The latent sites' names, in the order of their slices of ``z``."""
        return [site.name for site in self.sites]

    def unpack(self, z: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Each site's ``(u, x)``, its unconstrained and constrained values at ``z: (n, d)``:
        ``u`` of shape ``(n, 1, …, 1, *unconstrained_shape)`` broadcast as in Pyro's
        ``AutoContinuous`` (``n`` at dim ``-(max_plate_nesting + 1)`` of the batch dims, the
        singletons standing for the model's plates that the site is not in), ``x = T(u)``."""
        n = z.shape[0]
        out = {}
        for site, piece in split(self.sites, z):
            event_dim = _event_dim(site, self._fn_event_dims[site.name])
            lead = (n,) + (1,) * (self.max_plate_nesting + event_dim)
            shape = torch.broadcast_shapes(site.unconstrained_shape, lead)
            u = piece.reshape(shape)
            out[site.name] = (u, site.transform(u))
        return out

    def _log_prob(self, z: Tensor) -> Tensor:
        batch = z.shape[:-1]
        flat = z.reshape(-1, self.dim)
        n = flat.shape[0]
        if n == 0:
            return z.new_zeros(batch)
        values = self.unpack(flat)
        total = flat.new_zeros(n)
        sweeps = _sweeps(self.subsampled, flat.device) if self.full_data else [None]
        for k, sweep in enumerate(sweeps):
            trace = self._trace(values, n, sweep)
            for node in trace.nodes.values():
                if node["type"] == "sample" and not site_is_subsample(node):
                    term = self._term(node, sweep, first=k == 0)
                    if term is not None:
                        total = total + _per_particle(term, n, self.max_plate_nesting).to(z.dtype)
        for site in self.sites:
            u, x = values[site.name]
            ladj = site.transform.log_abs_det_jacobian(u, x)
            total = total + torch.as_tensor(ladj).reshape(n, -1).sum(-1).to(z.dtype)
        return total.reshape(batch)

    def _trace(self, values: dict, n: int, sweep: dict | None) -> Any:
        """One trace of the model conditioned on ``values``, its ``n`` particles in a plate;
        subsampled plates take ``sweep``'s indices (``None``: a random subsample each)."""
        conditioned = poutine.condition(self.model, data={k: x for k, (_, x) in values.items()})
        indices = None if sweep is None else {name: idx for name, (idx, _) in sweep.items()}
        conditioned = _QuickSubsample(indices)(conditioned)
        vectorized = pyro.plate(_PARTICLES, n, dim=-(self.max_plate_nesting + 1))(conditioned)
        with poutine.block():
            trace = poutine.trace(vectorized).get_trace(*self.args, **self.kwargs)
        free = [name for name, node in trace.nodes.items() if _is_latent(node)]
        if free:
            raise RuntimeError(
                f"model {self.name} sampled latent sites {free} that its first trace did not "
                f"have ({self.names}): flowvi needs a fixed set of latent sites"
            )
        trace.compute_log_prob()
        return trace

    def _term(self, node: dict, sweep: dict | None, *, first: bool) -> Tensor | None:
        """A site's log density in one trace: as Pyro scales it, or in a full-data sweep,
        the sweep's new data at weight 1 (the plate's scale ``N / B`` undone), and a site
        outside every subsampled plate in the first sweep only."""
        if sweep is None:
            return node["log_prob"]
        frames = [f for f in node["cond_indep_stack"] if f.name in sweep]
        if not frames:
            return node["log_prob"] if first else None
        if len(frames) > 1:
            raise ValueError(
                f"site {node['name']!r} lies in the subsampled plates "
                f"{[f.name for f in frames]}: nested subsampling has no full-data sweep"
            )
        frame = frames[0]
        size, _ = self.subsampled[frame.name]
        _, mask = sweep[frame.name]
        weight = mask * (len(mask) / size)  # undo the scale N / B; count new data once
        weight = weight.reshape((-1,) + (1,) * (-frame.dim - 1))
        return node["log_prob"] * weight.to(node["log_prob"])


def _subsampled_plates(trace: Any) -> dict[str, tuple[int, int]]:
    """``{plate name: (N, B)}`` of the model's subsampled plates (``B < N``)."""
    plates = {}
    for name, node in trace.nodes.items():
        if node["type"] == "sample" and site_is_subsample(node):
            size, b = node["fn"].size, len(node["value"])
            if b < size:
                plates[name] = (size, b)
    return plates


def _sweeps(plates: dict[str, tuple[int, int]], device: Any) -> list[dict]:
    """The full-data sweeps of subsampled plates, all swept together: sweep ``k`` gives each
    plate ``(indices, mask)``: ``B`` indices ending at ``min((k + 1) B, N)`` and a mask of
    those not counted by an earlier sweep (all zeros once a plate is done)."""
    count = max(math.ceil(size / b) for size, b in plates.values())
    sweeps = []
    for k in range(count):
        sweep = {}
        for name, (size, b) in plates.items():
            start = k * b
            stop = min(start + b, size)
            indices = torch.arange(max(stop - b, 0), max(stop - b, 0) + b, device=device)
            mask = (indices >= start) & (indices < stop)
            sweep[name] = (indices, mask.to(torch.get_default_dtype()))
        sweeps.append(sweep)
    return sweeps


class _QuickSubsample(Messenger):
    """Draws the indices of a subsampled ``pyro.plate`` in time O(B), not O(N).

    Pyro draws them as ``randperm(N)[:B]``, 26 ms at N = 10⁶ on one CPU thread: more than a
    whole step of a small model. Here a plate's B indices are the distinct values of about
    B (1 + 1/8) uniform draws from ``range(N)`` (topped up if fewer than B are distinct), then B
    of those at random. Every index is treated alike, so each is in the subsample with
    probability B/N, as with ``randperm``: with the plate's scale N/B the log likelihood stays
    unbiased. For B > N/8 ``randperm`` is cheap enough and is kept. ``indices``: the plates
    whose indices are given instead (a full-data sweep, :meth:`PyroTarget.exact`)."""

    def __init__(self, indices: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        self.indices = indices or {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["value"] is None and site_is_subsample(msg):
            fn = msg["fn"]
            if msg["name"] in self.indices:  # a full-data sweep's indices
                msg["value"] = self.indices[msg["name"]]
            else:
                msg["value"] = subsample_indices(fn.size, fn.subsample_size, device=fn.device)


def subsample_indices(n: int, b: int | None, *, device: Any = None) -> Tensor:
    """``b`` distinct indices from ``range(n)``, uniformly at random, in time O(b) for
    ``b <= n / 8`` (see :class:`_QuickSubsample`); all of ``range(n)`` if ``b`` is ``None`` or
    at least ``n``. Returns ``int64`` of shape ``(b,)``."""
    if b is None or b >= n:
        return torch.arange(n, device=device)
    if 8 * b > n:
        return torch.randperm(n, device=device)[:b]
    distinct = torch.unique(torch.randint(n, (b + b // 8 + 8,), device=device))
    while len(distinct) < b:
        more = torch.randint(n, (b - len(distinct) + 8,), device=device)
        distinct = torch.unique(torch.cat([distinct, more]))
    return distinct[torch.randperm(len(distinct), device=device)[:b]]


def _name(model: Callable) -> str:
    return getattr(model, "__name__", type(model).__name__)


def target(model: Callable, *args: Any, **kwargs: Any) -> PyroTarget:
    r"""A Pyro model as a flowvi target: its unconstrained log joint in nats (see
    :class:`PyroTarget`), with ``name = model.__name__``.

    The model is traced once on construction (blocked from outer handlers, without gradients)
    to find its latent sites and plate nesting; ``log_prob(z: (*batch, d)) -> (*batch,)`` then
    scores every particle in one vectorized call of the model, differentiably in ``z`` and in
    ``z``'s dtype.

    Raises:
        ValueError: for a model without latent sites, or with a discrete latent site, or a latent
            site in a subsampled plate (the message names the site).

    Example:
        >>> import pyro, pyro.distributions as dist, torch, flowvi
        >>> def model(y):
        ...     scale = pyro.sample("scale", dist.HalfNormal(1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(0.0, scale), obs=y)
        >>> p = target(model, torch.randn(10))
        >>> p.dim, p.max_plate_nesting, p.log_prob(torch.zeros(5, 1)).shape
        (1, 1, torch.Size([5]))
        >>> flow = flowvi.flows.build("affine", p.dim)
        >>> losses = flowvi.fit(flow, p, iters=3, batch_size=16, progress=False)
    """
    return PyroTarget(model, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# 2. a flowvi flow as a Pyro guide
# ---------------------------------------------------------------------------------------------


class FlowPosterior(TorchDistribution):
    r"""A flowvi flow's distribution as a Pyro distribution over the packed unconstrained latent.

    ``rsample(sample_shape)`` draws ``x: (*sample_shape, *batch_shape, d)`` together with its
    exact :math:`\ln q(x)` from one forward pass (:meth:`FlowDistribution.rsample_and_log_prob`)
    and remembers the pair; ``log_prob(value)`` returns the remembered :math:`\ln q` (nats,
    shape ``(*sample_shape, *batch_shape)``) when ``value`` is the very tensor this object
    last returned, so an ELBO step never inverts the flow. Any other ``value: (*, d)`` is scored
    exactly by inverting the flow (``FlowDistribution.log_prob``: ``d`` passes for IAF).

    Args:
        q: the flow's distribution, ``flow()`` of a :class:`flowvi.flows.NormalizingFlow` with
            event shape ``(d,)`` and batch shape ``()``.
        batch_shape: the batch shape (Pyro's plates expand it, e.g. to ``(n, 1)`` for ``n``
            vectorized particles; every element is an independent draw).
    """

    arg_constraints: dict = {}  # noqa: RUF012
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, q: FlowDistribution, batch_shape: Sequence[int] = ()) -> None:
        self.q = q
        self._last: tuple[Tensor, Tensor] | None = None
        super().__init__(torch.Size(batch_shape), q.event_shape, validate_args=False)

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> FlowPosterior:
        return FlowPosterior(self.q, batch_shape)

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        x, log_q = self.q.rsample_and_log_prob(torch.Size(sample_shape) + self.batch_shape)
        self._last = (x, log_q)
        return x

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._last is not None and value is self._last[0]:
            return self._last[1]
        return self.q.log_prob(value)


class FlowGuide(AutoContinuous):
    r"""A Pyro autoguide whose posterior over the unconstrained latent is a flowvi flow.

    As in Pyro's ``AutoContinuous`` (Kucukelbir et al. 2017), every latent site is mapped to
    the reals by ``biject_to(support)`` and the pieces are concatenated into one vector
    ``u: (d,)``; here ``u ~ q`` is :func:`flowvi.flows.build` ``(flow, d, length=length,
    base="diagonal", hidden=hidden)``, whose diagonal Gaussian base starts at the
    unconstrained ``init_loc_fn`` point with scale ``init_scale`` (the networked layers start
    at the identity, so q does too). Each guide call samples the flow once and takes
    :math:`\ln q(u)` from the same forward pass (see :class:`FlowPosterior`), so ``SVI`` with
    ``Trace_ELBO`` or ``TraceMeanField_ELBO``, vectorized particles included, never inverts it.

    The flow is built on the first call (it needs ``d``) in the prototype's dtype and device,
    and is the submodule ``guide.flow``; inside Pyro its parameters are registered in the param
    store (``pyro.module``), so ``pyro.optim`` optimizers train them.

    Args:
        model: a Pyro model with continuous latent sites, none in a subsampled plate.
        flow: a family in :data:`flowvi.flows.LAYERS` (``iaf`` samples in one pass), or a
            fitted :class:`~flowvi.flows.NormalizingFlow` over the model's unconstrained latent
            (``flowvi.load(DIR)`` of a ``flowvi fit --model`` run), used as it is (``length``,
            ``hidden``, ``init_*`` then do not apply).
        length: the number of layers.
        hidden: hidden sizes of the layers' networks (coupling, autoregressive and residual
            families; the others have none and ignore it).
        init_loc_fn: Pyro's per-site initialization (``pyro.infer.autoguide.initialization``).
        init_scale: the base's initial standard deviation in the unconstrained space.
        quantile_samples: the number of flow samples behind :meth:`median` and
            :meth:`quantiles` (their Monte Carlo error is about ``sd / sqrt(quantile_samples)``
            for the median of a roughly Gaussian marginal).

    Raises:
        ValueError: for an unknown ``flow``, bad ``length`` or ``hidden``, a non-positive
            ``init_scale`` or ``quantile_samples < 1``.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = FlowGuide(model, flow="iaf", length=2, hidden=(8,))
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}),
        ...                      pyro.infer.Trace_ELBO())
        >>> loss = svi.step(torch.ones(4))
        >>> guide.median(torch.ones(4))["mu"].shape
        torch.Size([])
    """

    def __init__(
        self,
        model: Callable,
        *,
        flow: str | NormalizingFlow = "iaf",
        length: int = 4,
        hidden: Sequence[int] = (32, 32),
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        quantile_samples: int = 10_000,
    ) -> None:
        if isinstance(flow, NormalizingFlow):
            pass  # a fitted flow, e.g. flowvi.load(DIR) of a flowvi fit --model run
        elif flow not in LAYERS:
            raise ValueError(f"unknown flow {flow!r}; choose one of {', '.join(LAYERS)}")
        else:
            build(flow, 2, length=length, base="diagonal", hidden=hidden)  # checks the options
        if not (isinstance(init_scale, int | float) and init_scale > 0):
            raise ValueError(f"init_scale must be positive, got {init_scale!r}")
        if int(quantile_samples) < 1:
            raise ValueError(f"quantile_samples must be at least 1, got {quantile_samples}")
        self._flow_options = {"flow": flow, "length": length, "hidden": tuple(hidden)}
        self.init_scale = float(init_scale)
        self.quantile_samples = int(quantile_samples)
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.sites = _latent_sites(self.prototype_trace)
        loc = self._init_loc()
        options = self._flow_options
        if isinstance(options["flow"], NormalizingFlow):
            flow = options["flow"]
            if flow.event_shape != (self.latent_dim,):
                raise ValueError(
                    f"the flow is over {tuple(flow.event_shape)}, but the model's unconstrained "
                    f"latent has {self.latent_dim} coordinates"
                )
            self.flow = flow.to(device=loc.device, dtype=loc.dtype)
            return
        flow = build(
            options["flow"],
            self.latent_dim,
            length=options["length"],
            base="diagonal",
            hidden=options["hidden"],
        ).to(device=loc.device, dtype=loc.dtype)
        with torch.no_grad():
            flow.base.loc.copy_(loc)
            flow.base.log_scale.fill_(math.log(self.init_scale))
        self.flow = flow

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        r"""Sample the guide: ``{name: value}`` for every latent site of the model.

        One draw ``u`` of the flow (with its :math:`\ln q(u)`, an auxiliary site), each site's
        value ``x = biject_to(support)(u_site)`` as a ``Delta`` site in the site's plates, and
        the log-Jacobian :math:`-\sum \ln|\det \partial x / \partial u|` as one auxiliary
        factor, so that the guide's log density of the sites is :math:`\ln q(u) - \ln|J|`.

        The Jacobian is a factor rather than each ``Delta``'s ``log_density`` (where Pyro's
        ``AutoContinuous`` puts it): Pyro 1.9's ``kl_divergence(Delta, p)`` ignores
        ``log_density``, so ``TraceMeanField_ELBO`` would drop it (NumPyro fixed the same in
        pyro-ppl/numpyro#1625). Every ELBO sums the guide's log densities the same either way.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        latent = self.sample_latent(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        batch = latent.shape[:-1]  # () alone; (n, 1, …, 1) under a particle plate
        log_det = latent.new_zeros(batch)
        result = {}
        for node, u in self._unpack_latent(latent):
            name, fn = node["name"], node["fn"]
            transform = biject_to(fn.support)
            x = transform(u)
            ladj = torch.as_tensor(transform.log_abs_det_jacobian(u, x))
            # the site's event dims first, then its plate dims (size 1 in ``batch``)
            ladj = ladj.reshape(*ladj.shape[: len(batch)], -1).sum(-1)
            log_det = log_det + ladj.sum_to_size(batch)
            with ExitStack() as stack:
                for frame in self._cond_indep_stacks[name]:
                    stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(name, Delta(x, event_dim=fn.event_dim))
        if am_i_wrapped() and poutine.get_mask() is not False:  # unwrapped, no one reads it
            pyro.factor(f"_{self._pyro_name}_log_det", -log_det, has_rsample=True)
        return result

    def get_posterior(self, *args: Any, **kwargs: Any) -> FlowPosterior:
        """The flow's distribution over the packed unconstrained latent, event shape ``(d,)``."""
        return FlowPosterior(self.flow())

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float] | Tensor, *args: Any, **kwargs: Any) -> dict:
        """Posterior quantiles of each latent site, elementwise in the constrained space, by
        Monte Carlo over ``quantile_samples`` flow samples (linear interpolation between order
        statistics, as ``torch.quantile``).

        Returns:
            ``{name: (len(quantiles), *site.shape)}``, as Pyro's ``AutoContinuous``.

        Raises:
            ValueError: for a quantile outside ``[0, 1]``.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        u = self.flow.sample((self.quantile_samples,))
        qs = torch.as_tensor(quantiles, dtype=u.dtype, device=u.device).reshape(-1)
        if bool(((qs < 0) | (qs > 1)).any()):
            raise ValueError(f"quantiles must lie in [0, 1], got {qs.tolist()}")
        return {name: _quantiles(x, qs) for name, x in constrain(self.sites, u).items()}

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict:
        """Posterior median of each latent site, ``{name: site.shape}``, elementwise in the
        constrained space, by Monte Carlo (see :meth:`quantiles`)."""
        return {name: q[0] for name, q in self.quantiles([0.5], *args, **kwargs).items()}


def _quantiles(samples: Tensor, qs: Tensor) -> Tensor:
    """Quantiles ``qs: (k,)`` of ``samples: (S, *shape)`` along dim 0: ``(k, *shape)``.

    1. sort the samples; 2. the q-quantile sits at fractional rank ``q (S - 1)``;
    3. interpolate linearly between the two order statistics around it.
    """
    ordered = samples.sort(0).values
    rank = qs * (samples.shape[0] - 1)
    low = rank.floor().long()
    high = rank.ceil().long()
    frac = (rank - low).reshape(-1, *(1,) * (samples.dim() - 1))
    return ordered[low] + frac * (ordered[high] - ordered[low])


__all__ = ["FlowGuide", "FlowPosterior", "PyroTarget", "target"]
