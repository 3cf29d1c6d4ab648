"""The one base class of flow layers, :class:`Layer`, and the layers of declared raw
parameters, free or amortized (:class:`ParametricLayer`)."""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvi._checks import check_choice, check_dim, check_hidden
from flowvi.transforms.base import Transform
from flowvi.transforms.transformers import TRANSFORMERS, MonotoneTransformer


class Layer(nn.Module, abc.ABC):
    r"""A flow layer: an ``nn.Module`` whose call ``layer(context=None)`` returns a transform.

    The module holds the parameters; the transform (:class:`flowvi.transforms.Transform`, or
    any ``torch.distributions.Transform`` of ``event_dim`` 0 or 1) is the math, built afresh on
    each call from the current parameters, in the sampling direction (base ``z`` to ``x``).
    zuko's ``LazyTransform`` plays this part there.

    To write a new layer: subclass :class:`Layer`; ``__init__(self, d, *, ..., context_dim=None)``
    calls ``super().__init__(d, context_dim=context_dim)`` (which checks both and sets
    :attr:`d`, :attr:`context_dim` and :attr:`spec`), creates the parameters and puts every
    other constructor argument in :attr:`spec` (so :func:`flowvi.flows.describe` records it);
    ``forward(context=None)`` returns the transform. A layer whose transform reads a context
    sets ``takes_context = True`` (others refuse a ``context_dim``); ``alternate`` names a
    boolean argument that :meth:`stack` flips on every other layer. Register the class in
    :data:`flowvi.flows.LAYERS` to build, describe and rebuild it by name. A transform made
    from raw parameters is shorter still as a :class:`ParametricLayer` (set ``transform``,
    return the initial raw parameters from ``initial``), which also amortizes it.

    Example:
        >>> import math, torch
        >>> from flowvi.distributions import StandardNormal
        >>> from flowvi.flows import Layer, NormalizingFlow
        >>> class Scale(Layer):
        ...     # x = exp(s) * z, one learnable log-scale s per coordinate
        ...     def __init__(self, d, *, context_dim=None):
        ...         super().__init__(d, context_dim=context_dim)
        ...         self.log_scale = torch.nn.Parameter(torch.zeros(d))
        ...     def forward(self, context=None):
        ...         return torch.distributions.AffineTransform(0.0, self.log_scale.exp())
        >>> flow = NormalizingFlow(StandardNormal(2), Scale.stack(2, 3))
        >>> with torch.no_grad():
        ...     _ = flow.layers[0].log_scale.fill_(math.log(2.0))
        >>> flow.log_prob(torch.zeros(1, 2)).detach()  # ln N(0; 0, 4 I)
        tensor([-3.2242])
    """

    d: int
    """Dimension of the layer's input and output."""
    context_dim: int | None
    """Size of the context the transform reads, or ``None``."""
    spec: dict
    """The constructor's arguments other than ``d`` and ``context_dim``, JSON-able."""
    takes_context: ClassVar[bool] = False
    """Whether the layer accepts a ``context_dim`` (amortized or conditional layers)."""
    alternate: ClassVar[str | None] = None
    """A boolean constructor argument that :meth:`stack` flips on every other layer."""

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        super().__init__()
        check_dim(d)
        if context_dim is not None:
            if not self.takes_context:
                raise ValueError(
                    f"the {type(self).__name__} layer is not amortized: it takes no "
                    f"context_dim (got {context_dim!r}); use planar, radial, sylvester, "
                    "coupling or autoregressive layers for that"
                )
            check_dim(context_dim, "context_dim")
        self.d, self.context_dim = d, context_dim
        self.spec = {}

    @abc.abstractmethod
    def forward(self, context: Tensor | None = None) -> torch.distributions.Transform:
        """The layer's transform at the current parameters; ``context: (*batch, context_dim)``
        for a layer with a ``context_dim`` (its transform then has batch shape ``*batch``)."""

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The names of the keyword-only arguments of the constructor."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)

    @classmethod
    def stack(cls, d: int, length: int, **options: object) -> list[Layer]:
        """``length`` layers of this class in ``d`` dimensions, with ``options`` (keyword
        arguments of the constructor); :attr:`alternate`, if set, is flipped on every other
        layer. Subclasses override this to vary other arguments along a stack.

        Raises:
            ValueError: for an option the constructor does not take, or the alternated one.
        """
        check_dim(length, "flow length K")
        takes = set(cls.options()) - {cls.alternate}
        for name in options:
            if name not in takes:
                raise ValueError(
                    f"{cls.__name__} layers take no option {name!r}; their options: "
                    f"{', '.join(sorted(takes)) or 'none'}"
                )
        if cls.alternate is None:
            return [cls(d, **options) for _ in range(length)]
        return [cls(d, **options, **{cls.alternate: k % 2 == 1}) for k in range(length)]

    def check_context(self, context: Tensor | None) -> Tensor | None:
        """``context``, once checked against :attr:`context_dim` (anything, if ``None``).

        Raises:
            ValueError: if the layer has a ``context_dim`` and ``context`` is missing or its
                last dimension is not ``context_dim``.
        """
        if self.context_dim is not None and (
            context is None or context.shape[-1] != self.context_dim
        ):
            got = None if context is None else tuple(context.shape)
            raise ValueError(
                f"{type(self).__name__} is amortized: it needs a context of shape "
                f"(*batch, {self.context_dim}), got {got}"
            )
        return context

    def extra_repr(self) -> str:
        amortized = "" if self.context_dim is None else f", context_dim={self.context_dim}"
        spec = "".join(f", {key}={value!r}" for key, value in self.spec.items())
        return f"d={self.d}{amortized}{spec}"


class ParametricLayer(Layer):
    """A layer whose transform is a function of declared raw parameters, free or amortized.

    Subclasses set :attr:`transform` and implement :meth:`initial`; a subclass with more
    constructor arguments checks them and passes them on to ``__init__`` as keywords (they
    become :attr:`spec`, which :meth:`initial` may read). With ``context_dim=None`` the raw
    parameters are free ``nn.Parameter`` s shared by all inputs. With ``context_dim=c`` the
    layer is *amortized*: a linear head maps a context ``h: (*batch, c)`` (a VAE encoder's
    output, say) to one full set of raw parameters per input, shapes ``(*batch, *shape)``, so
    that each datapoint gets its own transform (Rezende & Mohamed 2015, Section 4; van den Berg
    et al. 2018). The head starts with small weights and its bias at the unconditional initial
    values.

    Because every raw parameter value gives an invertible transform, no constraint is applied
    here: the transform enforces it.

    Example:
        >>> import torch
        >>> from flowvi.flows import ParametricLayer
        >>> from flowvi.transforms import ElementwiseAffineTransform
        >>> class Shift(ParametricLayer):
        ...     transform = ElementwiseAffineTransform
        ...     def initial(self):
        ...         return {"loc": torch.zeros(self.d), "log_scale": torch.zeros(self.d)}
        >>> Shift(3).shapes, Shift(3, context_dim=5)(torch.zeros(7, 5)).loc.shape
        ({'loc': (3,), 'log_scale': (3,)}, torch.Size([7, 3]))
    """

    transform: Callable[..., Transform]
    """Builds the transform from the raw parameters, passed by name."""
    takes_context = True

    def __init__(self, d: int, *, context_dim: int | None = None, **spec: object) -> None:
        super().__init__(d, context_dim=context_dim)
        unknown = sorted(set(spec) - set(type(self).options()))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {unknown}")
        self.spec = spec
        params = self.initial()
        self.shapes = {name: tuple(value.shape) for name, value in params.items()}
        if context_dim is None:
            self.params = nn.ParameterDict({k: nn.Parameter(v) for k, v in params.items()})
            return
        flat = torch.cat([value.reshape(-1) for value in params.values()])
        self.head = nn.Linear(context_dim, flat.numel())
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.01 / math.sqrt(context_dim))
            self.head.bias.copy_(flat)

    @abc.abstractmethod
    def initial(self) -> dict[str, Tensor]:
        """The initial raw parameters by name, shapes without the amortized batch (called by
        ``__init__`` once :attr:`d` and :attr:`spec` are set)."""

    def raw(self, context: Tensor | None = None) -> dict[str, Tensor]:
        """The raw parameters, shapes ``shape`` (free) or ``(*batch, *shape)`` (amortized)."""
        if self.context_dim is None:
            return dict(self.params)
        return self._split(self.head(self.check_context(context)))

    @staticmethod
    def stacked_raw(
        layers: Sequence[ParametricLayer], context: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The raw parameters of layers of one class and shapes, stacked on a new leading axis:
        shapes ``(K, *shape)`` (free) or ``(K, *batch, *shape)`` (amortized, all heads in one
        matrix product, which is cheaper than ``K`` small ones forward and backward).
        Equal to stacking each layer's :meth:`raw`."""
        first = layers[0]
        if first.context_dim is None:
            return {
                name: torch.stack([layer.params[name] for layer in layers]) for name in first.shapes
            }
        first.check_context(context)
        weight = torch.cat([layer.head.weight for layer in layers])
        bias = torch.cat([layer.head.bias for layer in layers])
        out = F.linear(context, weight, bias)  # (*batch, K * P)
        out = out.unflatten(-1, (len(layers), -1)).movedim(-2, 0)
        return first._split(out)

    def _split(self, out: Tensor) -> dict[str, Tensor]:
        """Named raw parameters ``(*lead, *shape)`` from their concatenation ``(*lead, P)``."""
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        lead = out.shape[:-1]
        return {
            name: piece.reshape((*lead, *shape))
            for (name, shape), piece in zip(
                self.shapes.items(), torch.split(out, sizes, dim=-1), strict=True
            )
        }

    def forward(self, context: Tensor | None = None) -> Transform:
        return self.transform(**self.raw(context))


class TransformerLayer(Layer):
    """Base of the coupling and autoregressive layers: a network of the input (and of the
    context, if ``context_dim`` is set) emits the parameters of an elementwise transformer
    (:class:`flowvi.transforms.transformers.Transformer`).

    The transformer is chosen by two constructor arguments of every subclass:

    - ``transformer``: a name in :data:`flowvi.transforms.transformers.TRANSFORMERS`
      (``additive``, ``affine``, ``softplus-affine``, ``spline``, ``monotone``); ``None``
      takes the class's own, ``transformer_name``.
    - ``monotone_hidden``: hidden sizes of the monotone transformer's scalar network (default
      ``(8,)``, see :class:`~flowvi.transforms.transformers.MonotoneTransformer`); monotone
      only.
    """

    takes_context = True
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
            self.transformer = MonotoneTransformer(check_hidden(monotone_hidden))
            self.spec["monotone_hidden"] = list(self.transformer.hidden)
