r"""The Gaussian KL identities, in closed form: exact oracles for variational objectives.

For :math:`q = \mathcal N(\mu_q, \Sigma_q)` and :math:`p = \mathcal N(\mu_p, \Sigma_p)` on
:math:`\mathbb R^d`,

.. math::

    \mathrm{KL}(q \,\|\, p) = \tfrac12 \big[ \operatorname{tr}(\Sigma_p^{-1} \Sigma_q)
    + (\mu_p - \mu_q)^\top \Sigma_p^{-1} (\mu_p - \mu_q) - d
    + \ln\det\Sigma_p - \ln\det\Sigma_q \big],

which for diagonal covariances is a sum over coordinates of
:math:`\ln(\sigma_p / \sigma_q) + (\sigma_q^2 + (\mu_q - \mu_p)^2) / (2\sigma_p^2) - \tfrac12`,
and against the standard normal is
:math:`\tfrac12 \sum_j (\sigma_j^2 + \mu_j^2 - \ln\sigma_j^2 - 1)` (the VAE's KL term).

torch.distributions already implements these (``kl_divergence`` of two ``Normal``, two
``Independent(Normal)`` or two ``MultivariateNormal``); :func:`gaussian_kl` delegates to it and
adds only the mixed diagonal/full pairs, which torch does not register.

References:
    Kullback & Leibler (1951); the formula is e.g. Duchi, "Derivations for linear algebra and
    optimization" (2007), Section 9; Kingma & Welling (2014), Appendix B.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal
from torch.distributions import kl_divergence as _kl


def gaussian_kl(q: Distribution, p: Distribution) -> Tensor:
    r""":math:`\mathrm{KL}(q \,\|\, p)` between two Gaussians, in nats, in closed form.

    Args:
        q, p: each a ``Normal`` (elementwise), an ``Independent(Normal, 1)`` (diagonal
            covariance, event ``(d,)``) or a ``MultivariateNormal`` (full covariance, event
            ``(d,)``), with broadcastable batch shapes.

    Returns:
        shape: the broadcast batch shape (for two ``Normal`` s, their broadcast shape).

    Example:
        >>> import torch
        >>> from torch.distributions import Independent, MultivariateNormal, Normal
        >>> from flowvi.inference.gaussian import gaussian_kl
        >>> q = MultivariateNormal(torch.zeros(2), torch.eye(2) * 4)
        >>> p = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        >>> gaussian_kl(q, p)  # ½ (8 − 2 − ln 16)
        tensor(1.6137)

    Raises:
        TypeError: for a distribution that is not one of the three Gaussian forms, or a
            ``Normal`` paired with a multivariate one.
        ValueError: for diagonal/full pairs of different event sizes.
    """
    kinds = (_kind(q), _kind(p))
    if kinds[0] == kinds[1]:
        return _kl(q, p)
    if "scalar" in kinds:
        raise TypeError(
            "a Normal (elementwise) cannot be compared with a multivariate Gaussian; wrap it as "
            "Independent(Normal(loc, scale), 1)"
        )
    q, p = (_as_full(r) if k == "diagonal" else r for r, k in zip((q, p), kinds, strict=True))
    if q.event_shape != p.event_shape:
        raise ValueError(f"event shapes differ: {tuple(q.event_shape)} vs {tuple(p.event_shape)}")
    return _kl(q, p)


def kl_standard_normal(loc: Tensor, scale: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu, \operatorname{diag}\sigma^2) \,\|\, \mathcal N(0, I))
    = \tfrac12 \sum_j (\sigma_j^2 + \mu_j^2 - \ln\sigma_j^2 - 1)`, nats.

    Args:
        loc: :math:`\mu`, shape ``(*batch, d)``.
        scale: :math:`\sigma > 0`, broadcastable to ``loc``.

    Returns:
        shape ``(*batch,)``.
    """
    var = scale.square()
    return 0.5 * (var + loc.square() - var.log() - 1).sum(-1)


def _kind(d: Distribution) -> str:
    if isinstance(d, MultivariateNormal):
        return "full"
    if isinstance(d, Independent) and isinstance(d.base_dist, Normal):
        if d.reinterpreted_batch_ndims != 1:
            raise TypeError("only Independent(Normal, 1) (a diagonal Gaussian on R^d) is accepted")
        return "diagonal"
    if isinstance(d, Normal):
        return "scalar"
    raise TypeError(f"expected a Gaussian distribution, got {type(d).__name__}")


def _as_full(d: Independent) -> MultivariateNormal:
    """A diagonal Gaussian as a ``MultivariateNormal`` with ``scale_tril = diag(σ)``."""
    base = d.base_dist
    return MultivariateNormal(base.loc, scale_tril=base.scale.diag_embed())
