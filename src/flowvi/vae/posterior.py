r"""Amortized posteriors :math:`q(z \mid x)`: an encoder-given Gaussian pushed through a flow
whose parameters the encoder also emits, one set per datapoint.

Why the flow's parameters must depend on ``x``: with a base :math:`q_0(z_0 \mid x) =
\mathcal N(\mu(x), \mathrm{diag}\,\sigma(x)^2)` and one *global* flow :math:`f`, the ELBO is

.. math:: E_{q_0}\big[\ln p(x \mid f(z_0)) + \ln p(f(z_0)) + \ln|\det J_f(z_0)|
          - \ln q_0(z_0 \mid x)\big],

which is exactly the ELBO of another VAE with latent :math:`z_0`, a diagonal-Gaussian
posterior, the decoder :math:`p(x \mid f(z_0))` and the flow prior :math:`p(f(z_0))
|\det J_f(z_0)|`. A global flow therefore only re-parametrizes the prior and decoder (a change
of the model family); in :math:`z_0` coordinates every posterior is still fitted by a diagonal
Gaussian, with the same per-datapoint mismatch. Only when :math:`f = f_{\phi(x)}` changes with
``x`` can each datapoint's posterior take its own non-Gaussian shape (Rezende & Mohamed 2015,
Section 4; van den Berg et al. 2018, Section 3; Kingma et al. 2016, Section 4). Here the
encoder's context ``h(x)`` feeds the base's heads and every layer's head (directly, or through
one shared linear projection: :class:`ProjectedPosterior`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from flowvi._checks import check_choice, check_dim
from flowvi.flows import IAF, NormalizingFlow, Planar, Radial, SylvesterH, SylvesterO, SylvesterT

POSTERIORS = ("diagonal", "planar", "radial", "sylvester-o", "sylvester-h", "sylvester-t", "iaf")


class GaussianBase(nn.Module):
    r"""The base :math:`q_0(z_0 \mid x) = \mathcal N(\mu(h), \mathrm{diag}\,\sigma(h)^2)`.

    Linear heads on the encoder's context ``h: (*batch, c)``: :math:`\mu = W_\mu h + b_\mu`,
    :math:`\sigma = \mathrm{softplus}(W_\sigma h + b_\sigma) + 10^{-5}` (positive by
    construction, bounded away from zero). ``forward(h)`` returns ``Independent(Normal(μ, σ),
    1)`` with batch shape ``*batch``; ``forward()`` without context returns :math:`\mathcal
    N(0, I)` (used by :class:`flowvi.flows.NormalizingFlow` only to read the event shape).
    """

    def __init__(self, d: int, context_dim: int) -> None:
        super().__init__()
        check_dim(d, "latent size d")
        check_dim(context_dim, "context size")
        self.d = d
        self.mean = nn.Linear(context_dim, d)
        self.scale = nn.Linear(context_dim, d)
        self.register_buffer("zero", torch.zeros(d))

    def forward(self, context: Tensor | None = None) -> Distribution:
        if context is None:
            return Independent(Normal(self.zero, torch.ones_like(self.zero)), 1)
        sigma = nn.functional.softplus(self.scale(context)) + 1e-5
        return Independent(Normal(self.mean(context), sigma), 1)


class ProjectedPosterior(NormalizingFlow):
    r"""An amortized posterior whose layers read a linear projection :math:`c = A h + a`,
    ``(*batch, r)``, of the encoder's context ``h: (*batch, C)``; its base reads ``h`` itself.

    Each datapoint still gets its own flow of the same layer family; only the map from ``h``
    to the flow's parameters is restricted. Layers with linear heads (planar, radial,
    Sylvester) then map ``h`` to their :math:`KP` raw parameters through a rank-``r``
    factorization, :math:`Cr + rKP` instead of :math:`CKP` multiply-adds per image: for planar
    K = 10 on the 300-wide context of the MLP VAE, 243k become 71k at ``r = 64``, which keeps
    its training step within 1.3× the diagonal VAE's (``benchmarks/RESULTS.md``). IAF's MADEs
    read ``c`` as their context.

    Args:
        base: the base module, reading ``h`` (:class:`GaussianBase`).
        layers: amortized layers with ``context_dim = r``.
        context_dim: ``C``, the size of ``h``. r: the size of ``c``.
    """

    def __init__(self, base: nn.Module, layers: list[nn.Module], context_dim: int, r: int):
        super().__init__(base, layers)
        self.project = nn.Linear(context_dim, r)

    def layer_context(self, context: Tensor | None) -> Tensor | None:
        return None if context is None else self.project(context)


def make_posterior(
    family: str,
    d: int,
    context_dim: int,
    *,
    length: int = 1,
    hidden: tuple[int, ...] = (320, 320),
    flow_context: int | None = None,
) -> NormalizingFlow:
    r"""An amortized posterior: :class:`GaussianBase` then ``length`` layers of ``family``,
    every layer amortized on the same context.

    Call it as ``posterior(h)`` (a :class:`flowvi.flows.FlowDistribution` with batch shape
    ``h.shape[:-1]``) or ``posterior.rsample_and_log_prob((S,), context=h)`` (samples
    ``(S, *batch, d)`` and :math:`\ln q(z \mid x)` ``(S, *batch)``).

    Args:
        family: one of :data:`POSTERIORS`; ``diagonal`` has no layers. Planar and radial:
            Rezende & Mohamed (2015); Sylvester O/H/T: van den Berg et al. (2018), the T
            layers alternating their permutation; IAF: Kingma et al. (2016), MADEs of sizes
            ``hidden`` that see ``h``, orders alternating natural and reverse.
        d: latent size. context_dim: size of ``h``. length: number of layers ``K``.
        hidden: hidden sizes of the IAF MADEs.
        flow_context: ``None``: every layer reads ``h``; a size ``r``: the layers read a
            linear projection of ``h`` to ``r`` numbers (:class:`ProjectedPosterior`, a
            low-rank amortization; ignored without layers).

    Raises:
        ValueError: for an unknown family or a bad size.
    """
    check_choice(family, POSTERIORS, "posterior")
    check_dim(length, "flow length K")
    if flow_context is not None:
        check_dim(flow_context, "flow context size")
    c = context_dim if flow_context is None else flow_context
    if family == "diagonal":
        layers: list[nn.Module] = []
    elif family == "planar":
        layers = [Planar(d, context_dim=c) for _ in range(length)]
    elif family == "radial":
        layers = [Radial(d, context_dim=c) for _ in range(length)]
    elif family == "sylvester-o":
        layers = [SylvesterO(d, context_dim=c) for _ in range(length)]
    elif family == "sylvester-h":
        layers = [SylvesterH(d, context_dim=c) for _ in range(length)]
    elif family == "sylvester-t":
        layers = [SylvesterT(d, flip=k % 2 == 1, context_dim=c) for k in range(length)]
    else:
        orders = ("natural", "reverse")
        layers = [IAF(d, hidden=hidden, order=orders[k % 2], context_dim=c) for k in range(length)]
    base = GaussianBase(d, context_dim)
    if flow_context is None or not layers:
        return NormalizingFlow(base, layers)
    return ProjectedPosterior(base, layers, context_dim, flow_context)
