r"""Flow priors :math:`p_\lambda(z)` for VAEs: a flow over a standard normal, learned with the
model.

With a flow prior the VAE's generative model is :math:`p_\lambda(z)\, p_\theta(x \mid z)` and
its ELBO

.. math:: \mathcal L(x) = E_{q(z \mid x)}\big[\ln p_\theta(x \mid z) + \ln p_\lambda(z)
          - \ln q(z \mid x)\big]

is maximized over :math:`\theta, \lambda` and the encoder together. The KL term
:math:`E_q[\ln q - \ln p_\lambda]` has no closed form, so it is estimated by Monte Carlo with
the same reparameterized samples as the reconstruction term. :math:`\ln p_\lambda(z)` is
evaluated at the posterior's samples on every step: this is the density direction, one pass
for MAF and coupling flows; sampling the prior (figures, generation) is the other direction,
``d`` passes for MAF.

A flow prior is a change of the model family, not of the inference: the docstring of
:mod:`flowvi.vae.posterior` shows that a *global* flow on the posterior is equivalent to one on
the prior. The seed slides ask for both (their experiment questions); a
learned prior can shrink the gap between the aggregate posterior and :math:`\mathcal N(0, I)`
(Tomczak & Welling 2018, "VAE with a VampPrior"; Chen et al. 2017, "Variational lossy
autoencoder", who use an autoregressive flow prior).
"""

from __future__ import annotations

from collections.abc import Sequence

from flowvi._checks import check_choice, check_dim
from flowvi.flows import LAYERS, NormalizingFlow, build

#: ``normal`` (the fixed :math:`\mathcal N(0, I)`) or a registered flow family. The fixed
#: preprocessing layers (``standardize``, ``logit``) need data statistics and are left out.
PRIORS = ("normal", *(name for name in LAYERS if name not in ("standardize", "logit")))


def make_prior(
    name: str, d: int, *, length: int = 1, hidden: Sequence[int] = (64, 64)
) -> NormalizingFlow | None:
    r"""The prior :math:`p(z)` over ``d`` latents: ``None`` for ``normal`` (the VAE then uses
    :math:`\mathcal N(0, I)`, with the analytic KL for a diagonal posterior), else
    :func:`flowvi.flows.build` of ``length`` layers of family ``name`` over a fixed
    standard-normal base.

    Training evaluates :math:`\ln p(z)` at every posterior sample, so prefer families whose
    density direction is cheap: ``maf``, ``nsf-ar`` and the coupling flows (one pass).
    ``iaf`` (``d`` passes) and ``planar``, ``radial`` or ``residual`` (a numerical inverse per
    layer) work but are slow.

    The flow is unconditional (it does not see ``x``); call it as ``prior()`` for a
    :class:`flowvi.flows.FlowDistribution` with event shape ``(d,)`` whose ``log_prob(z)``
    takes ``z: (*batch, d)`` and returns ``(*batch,)`` nats.

    Args:
        name: one of :data:`PRIORS`, e.g. ``maf`` (Papamakarios et al. 2017) or ``realnvp``
            (Dinh et al. 2017); coupling and autoregressive layers alternate their split or
            order along the stack.
        d: latent size. length: number of layers ``K``. hidden: hidden sizes of the layers'
            networks (coupling, autoregressive and residual families).

    Raises:
        ValueError: for an unknown name, or ``d``, ``length`` or a hidden size that is not a
            positive integer.
    """
    check_choice(name, PRIORS, "prior")
    check_dim(d, "latent size d")
    check_dim(length, "prior flow length")
    if name == "normal":
        return None
    return build(name, d, length=length, hidden=tuple(hidden))
