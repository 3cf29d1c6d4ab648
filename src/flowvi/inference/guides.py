r"""Guides for a posterior given as a :class:`flowvi.targets.Target`, compared with reference draws.

Every guide here is a :class:`flowvi.NormalizingFlow`, so one fitting routine,
:func:`flowvi.fit` (reverse KL = negative ELBO, reparameterized), serves them all:

- ``mean-field``: :math:`\mathcal N(\mu, \mathrm{diag}\,\sigma^2)`, an elementwise affine layer on
  :math:`\mathcal N(0, I)`;
- ``full-rank``: :math:`\mathcal N(\mu, LL^\top)`, a lower-triangular affine layer;
- ``iaf``, ``realnvp``, ``nsf``: flows of the zoo on a trainable diagonal Gaussian base.

:func:`compare` reports, against reference posterior draws (e.g. NUTS), the error of every
coordinate's mean and standard deviation in units of the reference posterior sd, and the PSIS
:math:`\hat k` of the importance weights :math:`\tilde p / q` (Vehtari et al. 2024; Yao et al.
2018 for VI: :math:`\hat k < 0.7` means the importance-sampling correction is reliable, and a
small :math:`\hat k` means :math:`q` covers :math:`p`), computed by arviz's ``psislw``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from flowvi._checks import check_choice, check_dim
from flowvi.distributions import DiagonalGaussian
from flowvi.fitting import fit
from flowvi.flows import Affine, NormalizingFlow, TriangularAffine, build
from flowvi.metrics import psis_khat
from flowvi.targets import Target

GUIDES = {
    "mean-field": {"flow": "affine"},
    "full-rank": {"flow": "triangular"},
    "iaf": {"flow": "iaf", "length": 4, "base": "diagonal"},
    "realnvp": {"flow": "realnvp", "length": 6, "base": "diagonal"},
    "nsf": {"flow": "nsf", "length": 4, "base": "diagonal"},
}


def build_guide(
    name: str,
    d: int,
    *,
    hidden: Sequence[int] = (32, 32),
    loc: Tensor | None = None,
    scale: float = 0.1,
) -> NormalizingFlow:
    """The guide called ``name`` (a key of :data:`GUIDES`) on :math:`\\mathbb R^d`, starting as
    :math:`\\mathcal N(\\mathrm{loc}, \\mathrm{scale}^2 I)` (see :func:`initialize`).

    Raises:
        ValueError: for an unknown name (the valid ones are listed) or ``scale <= 0``.
    """
    check_choice(name, GUIDES, "guide")
    spec = dict(GUIDES[name])
    flow = spec.pop("flow")
    if flow in ("iaf", "realnvp", "nsf"):
        spec["hidden"] = tuple(hidden)
    guide = build(flow, d, **spec)
    initialize(guide, loc=loc, scale=scale)
    return guide


def initialize(flow: NormalizingFlow, *, loc: Tensor | None = None, scale: float = 0.1) -> bool:
    """Start ``flow`` near :math:`\\mathcal N(\\mathrm{loc}, \\mathrm{scale}^2 I)`, as Pyro's
    guides start (at the prior median, scale 0.1): on reverse-KL fits of real posteriors a
    guide that starts wide is still shrinking when the budget ends (``benchmarks/RESULTS.md``).

    Sets the location and scale of a trainable diagonal Gaussian base, or else of a first
    :class:`~flowvi.flows.Affine` or :class:`~flowvi.flows.TriangularAffine` layer on a fixed
    base (the mean-field and full-rank guides). The flow's layers of flowvi's networked
    families start at the identity, so the whole flow then starts at that Gaussian.

    Args:
        flow: the flow, modified in place.
        loc: ``(d,)``, default zeros.
        scale: the initial standard deviation of every coordinate.

    Returns:
        whether the flow had such a part (``False``: left as built).

    Raises:
        ValueError: if ``scale`` is not positive and finite, or ``loc`` is not ``(d,)``.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"the initial scale must be positive and finite, got {scale}")
    d = flow.event_shape[-1]
    loc = torch.zeros(d) if loc is None else torch.as_tensor(loc)
    if loc.shape != (d,):
        raise ValueError(f"loc must have shape ({d},), got {tuple(loc.shape)}")
    first = flow.layers[0] if len(flow.layers) else None
    if isinstance(flow.base, DiagonalGaussian):
        loc_param, log_scale = flow.base.loc, flow.base.log_scale
    elif isinstance(first, Affine) and first.context_dim is None:
        loc_param, log_scale = first.params["loc"], first.params["log_scale"]
    elif isinstance(first, TriangularAffine) and first.context_dim is None:
        loc_param, log_scale = first.params["loc"], first.params["matrix"].diagonal()
    else:
        return False
    with torch.no_grad():
        loc_param.copy_(loc)
        log_scale.fill_(math.log(scale))
    return True


def moment_errors(draws: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Signed errors of the means and sds of ``draws: (n, d)`` against ``reference: (m, d)``,
    in units of the reference sd: ``((mean - mean_ref) / sd_ref, (sd - sd_ref) / sd_ref)``."""
    sd_ref = reference.std(0)
    mean_error = (draws.mean(0) - reference.mean(0)) / sd_ref
    return mean_error, (draws.std(0) - sd_ref) / sd_ref


@torch.no_grad()
def assess(
    guide, target: Target, reference: Tensor, *, samples: int = 20_000
) -> dict[str, float | list[float]]:
    """ELBO, PSIS k̂ and moment errors of a fitted ``guide`` (any object with
    ``rsample_and_log_prob``) against ``reference`` draws, as plain floats for JSON."""
    check_dim(samples, "samples")
    x, log_q = guide.rsample_and_log_prob((samples,))
    log_w = (target.log_prob(x) - log_q).double()
    mean_error, sd_error = moment_errors(x.double(), reference.double().to(x.device))
    return {
        "elbo": float(log_w.mean()),
        "elbo_se": float(log_w.std() / math.sqrt(samples)),
        "khat": psis_khat(log_w),
        "max_abs_mean_error": float(mean_error.abs().max()),
        "max_abs_sd_error": float(sd_error.abs().max()),
        "rms_mean_error": float(mean_error.pow(2).mean().sqrt()),
        "rms_sd_error": float(sd_error.pow(2).mean().sqrt()),
        "mean_error": mean_error.tolist(),
        "sd_error": sd_error.tolist(),
    }


def compare(
    target: Target,
    reference: Tensor,
    *,
    guides: Sequence[str] = tuple(GUIDES),
    iters: int = 5000,
    batch_size: int = 256,
    lr: float = 3e-3,
    samples: int = 20_000,
    hidden: Sequence[int] = (32, 32),
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> list[dict]:
    """Fit each guide to ``target`` with :func:`flowvi.fit` (no β annealing) and :func:`assess` it.

    Returns:
        one row per guide: ``guide``, ``iters``, ``seconds`` (fit wall time), and the entries of
        :func:`assess`.

    Raises:
        ValueError: for an unknown guide or a reference whose width is not ``target.dim``.
    """
    if reference.dim() != 2 or reference.shape[1] != target.dim:
        raise ValueError(
            f"reference must be (draws, {target.dim}) for target {target.name}, "
            f"got {tuple(reference.shape)}"
        )
    for name in guides:
        check_choice(name, GUIDES, "guide")
    rows = []
    for name in guides:
        torch.manual_seed(seed)
        guide = build_guide(name, target.dim, hidden=hidden).to(dtype)
        start = time.perf_counter()
        fit(guide, target, iters=iters, batch_size=batch_size, lr=lr, progress=progress)
        seconds = time.perf_counter() - start
        rows.append(
            {"guide": name, "iters": iters, "seconds": seconds}
            | assess(guide, target, reference, samples=samples)
        )
    return rows
