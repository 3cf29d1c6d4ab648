"""Metrics of a fitted q against a target, in nats: free energy, ln Z, KL, ESS, mass outside."""

from __future__ import annotations

import math
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
    - ``mass_outside_box``: :math:`q`'s probability outside ``target.box``.
    - ``forward_kl``: :math:`\mathrm{KL}(p \| q)` by quadrature (2-D targets), through the exact
      ``log_prob`` of the flow on a ``forward_grid_size²`` grid: large when q misses a mode of
      p, which the reverse KL hardly sees.

    ``grid_size`` sets the ``ln Z`` quadrature grid (``grid_size²`` points of the target only).
    """
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
    ess = float(effective_sample_size(torch.cat(log_w)))
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
