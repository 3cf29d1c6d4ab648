"""ActNorm: a per-dimension affine layer initialized from the first batch of data (Glow)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowvi.flows.base import Layer
from flowvi.transforms.elementwise import ElementwiseAffineTransform


class ActNorm(Layer):
    r"""Activation normalization (Kingma & Dhariwal 2018, Glow, Section 3.1).

    The map is elementwise affine in flowvi's sampling direction (base ``z`` -> data ``x``),

    .. math:: x = \mu + e^{\ell} \odot z, \qquad \ln|\det J| = \sum_i \ell_i,

    so that ``log_prob``, which applies the inverse, normalizes the activations it receives:
    :math:`z = (x - \mu) e^{-\ell}`. This is Glow's ``y = s ⊙ (x + b)`` with
    :math:`s = e^{-\ell}`, :math:`b = -\mu` written in the sampling direction.

    **Data-dependent initialization.** Until the layer is initialized, the first use of one of
    its transforms decides its starting point:

    - *Inverse first* (the first ``log_prob`` on data: density estimation). The batch reaching
      the layer, ``y: (*batch, d)`` (the data, after the inverses of the layers that follow this
      one), sets :math:`\mu = \bar y` and :math:`e^{\ell} = \mathrm{std}(y)` per dimension
      (population std over every batch position), so that on that batch the layer's output has
      mean 0 and standard deviation 1 per dimension (Glow's initialization). A dimension with
      zero spread (a single sample, a constant column) keeps scale 1. The statistics are
      computed without gradient; the parameters then train as usual.
    - *Forward first* (sampling: reverse-KL fitting, where there is no data). The layer keeps
      its identity start (:math:`\mu = 0`, :math:`\ell = 0`), the natural choice there.

    Either way the layer is then initialized for good: the boolean buffer ``initialized`` is set,
    saved in ``state_dict``, so a loaded model (:func:`flowvi.load`) never re-initializes.
    ``context`` is accepted and ignored.

    Args:
        d: dimension.

    Raises:
        ValueError: if ``d`` is not a positive integer.

    Example:
        >>> import torch
        >>> from flowvi.distributions import StandardNormal
        >>> from flowvi.flows import MAF, ActNorm, NormalizingFlow
        >>> _ = torch.manual_seed(0)
        >>> data = torch.tensor([1.0, -3.0]) + torch.tensor([2.0, 0.5]) * torch.randn(1000, 2)
        >>> flow = NormalizingFlow(StandardNormal(2), [MAF(2), ActNorm(2)])
        >>> log_q = flow.log_prob(data)  # first call: ActNorm standardizes ``data``, (1000, 2)
        >>> y = flow.layers[1]().inv(data)  # what the layers before it see: mean 0, std 1
        >>> y.mean(0).abs().max() < 1e-5, (y.std(0, correction=0) - 1).abs().max() < 1e-5
        (tensor(True), tensor(True))
    """

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        super().__init__(d, context_dim=context_dim)
        self.loc = nn.Parameter(torch.zeros(d))
        self.log_scale = nn.Parameter(torch.zeros(d))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # a host-side copy of the buffer: checking it costs no device synchronization
        self._initialized = False
        self.register_load_state_dict_post_hook(_sync_flag)

    def forward(self, context: Tensor | None = None) -> ElementwiseAffineTransform:
        if self._initialized:
            return ElementwiseAffineTransform(self.loc, self.log_scale)
        return _InitializingAffine(self)

    @torch.no_grad()
    def _initialize(self, y: Tensor | None) -> None:
        """Initialize from ``y: (*batch, d)`` (the inverse's input), or keep the identity start
        for ``y = None`` (the forward direction came first)."""
        if self._initialized:
            return
        if y is not None:
            flat = y.detach().reshape(-1, self.d).to(torch.float64)
            mean = flat.mean(0)
            std = flat.std(0, correction=0)
            scale = torch.where(std > 0, std, torch.ones_like(std))
            self.loc.copy_(mean)
            self.log_scale.copy_(scale.log())
        self.initialized.fill_(1)
        self._initialized = True

    def extra_repr(self) -> str:
        return f"d={self.d}, initialized={self._initialized}"


def _sync_flag(module: ActNorm, incompatible_keys: object) -> None:
    module._initialized = bool(module.initialized)


class _InitializingAffine(ElementwiseAffineTransform):
    """The affine map of a not yet initialized :class:`ActNorm`: its first call or inverse
    initializes the layer (in place, on its parameters, which this transform reads)."""

    def __init__(self, layer: ActNorm) -> None:
        super().__init__(layer.loc, layer.log_scale)
        self._layer: ActNorm | None = layer

    def _first_use(self, y: Tensor | None) -> None:
        if self._layer is not None:
            self._layer._initialize(y)
            self._layer = None

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._first_use(None)
        return super().call_and_ladj(x)

    def _inverse(self, y: Tensor) -> Tensor:
        self._first_use(y)
        return super()._inverse(y)

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._first_use(y)
        return super()._inverse_and_ladj(y)
