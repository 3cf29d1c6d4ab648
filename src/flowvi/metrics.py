"""Metrics of a fitted q against a target, in nats: free energy, ln Z, KL, ESS, PSIS k-hat,
mass outside."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from flowvi.targets import Target

Box = Sequence[tuple[float, float]]


def grid(box: Box, n: int, *, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """Cell centres of an ``n × n`` grid on a 2-D box, for the midpoint rule.

    Returns:
        ``(points, xs, ys)``: ``points: (n * n, 2)`` in row-major order of ``(ys, xs)`` (so
        ``f(points).reshape(n, n)`` is an image with rows along ``z2``), ``xs, ys: (n,)``.
    """
    (x0, x1), (y0, y1) = box
    xs = x0 + (torch.arange(n, dtype=dtype) + 0.5) * (x1 - x0) / n
    ys = y0 + (torch.arange(n, dtype=dtype) + 0.5) * (y1 - y0) / n
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1), xs, ys


def cell_area(box: Box, n: int) -> float:
    (x0, x1), (y0, y1) = box
    return (x1 - x0) * (y1 - y0) / (n * n)


def widen(box: Box, fraction: float = 0.125) -> tuple[tuple[float, float], ...]:
    """The box grown by ``fraction`` of its width on each side."""
    return tuple((lo - fraction * (hi - lo), hi + fraction * (hi - lo)) for lo, hi in box)


@torch.no_grad()
def log_normalizer(target: Target, *, n: int = 1000) -> float:
    r""":math:`\ln Z = \ln \int \tilde p(z)\,dz` of a 2-D target by the midpoint rule, in nats.

    The grid (``n × n``, float64) covers ``target.box`` widened by 1/8 of its width on each side.

    Raises:
        ValueError: if the target is not 2-D, has no box, or is not normalizable.
    """
    if target.dim != 2 or target.box is None:
        raise ValueError(f"quadrature needs a 2-D target with a box; {target.name} is not one")
    if not target.normalizable:
        raise ValueError(f"target {target.name} is not normalizable: ln Z is infinite")
    box = widen(target.box)
    points, _, _ = grid(box, n)
    log_p = torch.cat([target.log_prob(chunk) for chunk in points.split(250_000)])
    return float(torch.logsumexp(log_p, 0)) + math.log(cell_area(box, n))


def effective_sample_size(log_w: Tensor) -> Tensor:
    r"""Kish's ESS :math:`(\sum w)^2 / \sum w^2` of importance log-weights ``log_w: (n,)``."""
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


def psis_khat(log_weights: Tensor) -> float | Tensor:
    r"""Pareto-smoothed importance sampling :math:`\hat k` of importance log weights
    :math:`\ln \tilde p(z_i) - \ln q(z_i)`, :math:`z_i \sim q` (arviz's ``psislw``).

    :math:`\hat k` estimates the shape of the generalized Pareto tail fitted to the largest
    weights (Vehtari et al. 2024; Yao et al. 2018 for VI): below 0.5 importance sampling from
    ``q`` is reliable and ``q`` covers ``p``; 0.5–0.7 usable; above 0.7 the weights' variance is
    effectively infinite and ``q`` misses mass of ``p`` (see :func:`khat_verdict`).

    Args:
        log_weights: ``(S,)`` for one target, or ``(*m, S)`` for ``m`` targets at once.

    Returns:
        a float for ``(S,)``; a float64 CPU tensor ``(*m,)`` otherwise. Exactly equal log
        weights (``q`` equal to the target) give 0.

    Raises:
        ImportError: if arviz is not installed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # arviz announces its refactor on import
            import arviz
    except ImportError as error:
        raise ImportError("PSIS k-hat uses arviz: pip install arviz") from error
    psislw = getattr(arviz, "psislw", None)
    if psislw is None:  # arviz >= 1.0 moved it to arviz_stats
        from arviz_stats import psislw
    log_weights = log_weights.detach().double().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns when k-hat is large: that is the result
        _, khat = psislw(log_weights.numpy())
    khat = torch.as_tensor(khat, dtype=torch.float64)
    # equal weights (q = p up to a constant) have no tail; arviz returns inf for them
    spread = log_weights.amax(-1) - log_weights.amin(-1)
    khat = torch.where(spread <= 1e-12, 0.0, khat)
    return float(khat) if log_weights.dim() == 1 else khat


def khat_verdict(khat: float) -> str:
    r"""One line on a PSIS :math:`\hat k`: good below 0.5, usable up to 0.7, poor above."""
    if not khat < 0.7:  # NaN counts as poor
        return f"poor: PSIS k-hat {khat:.2f} > 0.7, q misses mass of the target"
    if khat < 0.5:
        return f"good: PSIS k-hat {khat:.2f} < 0.5, q covers the target"
    return f"usable: PSIS k-hat {khat:.2f} in 0.5-0.7, importance weights heavy-tailed"


def khat_summary(khats: Tensor) -> dict[str, float | str]:
    r"""Summary of per-datapoint :math:`\hat k` ``(n,)`` (a VAE's posteriors on test points):
    median, 90th percentile, the shares above 0.5 and 0.7, and a one-line verdict graded by the
    median with the shares named."""
    khats = khats.double()
    median = float(khats.median())
    above5, above7 = float((khats > 0.5).double().mean()), float((khats > 0.7).double().mean())
    grade = khat_verdict(median).split(":")[0]
    return {
        "khat_median": median,
        "khat_q90": float(khats.quantile(0.9)),
        "khat_above_0.5": above5,
        "khat_above_0.7": above7,
        "khat_points": len(khats),
        "khat_verdict": (
            f"{grade}: median PSIS k-hat {median:.2f} over {len(khats)} points; "
            f"{100 * above5:.0f}% above 0.5, {100 * above7:.0f}% above 0.7"
        ),
    }


@torch.no_grad()
def evaluate(
    flow,
    target: Target,
    *,
    samples: int = 100_000,
    grid_size: int = 1000,
    forward_grid_size: int = 400,
    chunk: int = 50_000,
) -> dict[str, float | None]:
    r"""Metrics of the flow ``q`` against the target ``p`` (nats, plain floats for JSON).

    - ``free_energy``, ``free_energy_se``: :math:`F = E_q[\ln q - \ln \tilde p]` and its Monte
      Carlo standard error over ``samples`` draws.
    - ``log_Z``: exact if the target knows it, else by quadrature (2-D targets), else ``None``.
    - ``kl``, ``kl_se``: :math:`\mathrm{KL}(q \| p) = F + \ln Z`, exact up to the Monte Carlo
      error of :math:`F` (``None`` without ``log_Z``).
    - ``ess``, ``ess_fraction``: ESS of the importance weights :math:`\tilde p / q`, and its
      ratio to ``samples``.
    - ``khat``, ``khat_verdict``: PSIS :math:`\hat k` of the same weights (:func:`psis_khat`)
      and its one-line reading (:func:`khat_verdict`).
    - ``mass_outside_box``: :math:`q`'s probability outside ``target.box``.
    - ``forward_kl``: :math:`\mathrm{KL}(p \| q)` by quadrature (2-D targets), through the exact
      ``log_prob`` of the flow on a ``forward_grid_size²`` grid: large when q misses a mode of
      p, which the reverse KL hardly sees.

    ``grid_size`` sets the ``ln Z`` quadrature grid (``grid_size²`` points of the target only).
    Every quantity uses the target's exact log density (:meth:`flowvi.targets.Target.exact`).
    """
    target = target.exact()  # a subsampled model's full-data log joint: exact weights
    parameter = next(flow.parameters(), None)
    dtype = torch.get_default_dtype() if parameter is None else parameter.dtype
    total, total_sq, log_w = 0.0, 0.0, []
    outside = 0.0
    for size in _chunks(samples, chunk):
        x, log_q = flow.rsample_and_log_prob((size,))
        log_p = target.log_prob(x)
        f = (log_q - log_p).double()
        total, total_sq = total + float(f.sum()), total_sq + float((f * f).sum())
        log_w.append(-f)
        if target.box is not None:
            lo = torch.tensor([b[0] for b in target.box], dtype=x.dtype, device=x.device)
            hi = torch.tensor([b[1] for b in target.box], dtype=x.dtype, device=x.device)
            outside += float(((x < lo) | (x > hi)).any(-1).sum())
    mean = total / samples
    se = math.sqrt(max(total_sq / samples - mean * mean, 0.0) / samples)
    log_w = torch.cat(log_w)
    ess = float(effective_sample_size(log_w))
    khat = psis_khat(log_w)
    out: dict[str, float | None] = {
        "free_energy": mean,
        "free_energy_se": se,
        "log_Z": None,
        "kl": None,
        "kl_se": None,
        "forward_kl": None,
        "ess": ess,
        "ess_fraction": ess / samples,
        "mass_outside_box": None if target.box is None else outside / samples,
        "samples": samples,
        "khat": khat,
        "khat_verdict": khat_verdict(khat),
    }
    quadrature = target.dim == 2 and target.box is not None and target.normalizable
    log_z = target.log_normalizer
    if log_z is None and quadrature:
        log_z = log_normalizer(target, n=grid_size)
    if log_z is not None:
        out.update(log_Z=log_z, kl=mean + log_z, kl_se=se)
    if quadrature:
        out["forward_kl"] = _forward_kl(flow, target, log_z, forward_grid_size, dtype, chunk)
    return out


def _forward_kl(flow, target: Target, log_z: float, n: int, dtype, chunk: int) -> float:
    box = widen(target.box)
    points, _, _ = grid(box, n)
    log_p = target.log_prob(points) - log_z
    device = next(flow.parameters()).device
    log_q = torch.cat(
        [
            flow.log_prob(c.to(device=device, dtype=dtype)).double().cpu()
            for c in points.split(chunk)
        ]
    )
    p = torch.exp(log_p) * cell_area(box, n)
    keep = p > 0
    return float((p[keep] * (log_p[keep] - log_q[keep])).sum())


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield min(size, total - start)
