r"""Exact pictures of 2-D latent posteriors: :math:`q(z \mid x)` against :math:`p(z \mid x)`.

For a VAE with ``d = 2`` both densities can be drawn on a grid without sampling: the
amortized posterior by its exact ``log_prob`` (the flow inverted at every grid point), and the
true posterior :math:`p(z \mid x) \propto p(x \mid z) p(z)` normalized on the grid (midpoint
rule). The same sums give, per image, a quadrature :math:`\ln p(x) \approx \ln \sum_j p(x,
z_j) \Delta` and the inference gap :math:`\mathrm{KL}(q \| p(z \mid x)) = \ln p(x) -
\mathcal L[q]` as :math:`\sum_j q_j (\ln q_j - \ln p(z_j \mid x)) \Delta`. This is the picture
of Kingma et al. (2016), Figure 1 (diagonal Gaussian against IAF posteriors), and of Rezende &
Mohamed (2015) for amortized flows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowvi._checks import check_dim
from flowvi.metrics import cell_area, grid
from flowvi.vae.model import VAE

Box = tuple[tuple[float, float], tuple[float, float]]


@dataclass
class PosteriorGrid:
    """One image's posteriors on one grid.

    ``log_q`` and ``log_post``: ``(n, n)`` log densities (rows along ``z2``, columns along
    ``z1``, as :func:`flowvi.metrics.grid`), ``log_post`` normalized on the grid; ``box`` the
    grid's extent; ``log_px`` the quadrature :math:`\\ln p(x)` and ``kl`` the quadrature
    :math:`\\mathrm{KL}(q \\| p(z \\mid x))`, nats; ``q_mass`` :math:`\\sum q \\Delta` (near 1
    when the grid holds q's mass).
    """

    box: Box
    log_q: Tensor
    log_post: Tensor
    log_px: float
    kl: float
    q_mass: float


def _moments_box(log_density: Tensor, points: Tensor, width: float) -> Box:
    """Mean ± ``width`` standard deviations, per axis, of a density given on grid points."""
    w = torch.softmax(log_density.reshape(-1), 0)
    mean = w @ points
    sd = (w @ (points - mean) ** 2).sqrt()
    return tuple(
        (float(m - width * s), float(m + width * s)) for m, s in zip(mean, sd, strict=True)
    )


def _union(a: Box, b: Box, floor: float) -> Box:
    """The smallest box holding ``a`` and ``b``, each side at least ``floor`` long."""
    out = []
    for (a0, a1), (b0, b1) in zip(a, b, strict=True):
        lo, hi = min(a0, b0), max(a1, b1)
        if hi - lo < floor:
            mid = (lo + hi) / 2
            lo, hi = mid - floor / 2, mid + floor / 2
        out.append((lo, hi))
    return tuple(out)


@torch.no_grad()
def posterior_grids(
    model: VAE, x: Tensor, *, resolution: int = 120, width: float = 4.0, box: float = 4.0
) -> list[PosteriorGrid]:
    r""":math:`q(z \mid x_i)` and :math:`p(z \mid x_i)` on a grid, for each image ``x: (n, D)``.

    The grid of each image is found in three passes of ``resolution × resolution`` points:
    the prior's box :math:`[-\text{box}, \text{box}]^2`, then the box of the true posterior's
    mean ± ``width`` standard deviations joined with q's (so a q that misses the posterior
    still shows), then the same from the refined posterior. Costs ``3 resolution²`` decoder
    evaluations and ``resolution²`` inversions of the flow per image.

    Raises:
        ValueError: if the model's latent size is not 2, ``x`` is not ``(n, D)``, or
            ``resolution`` is not a positive integer.
    """
    if model.d != 2:
        raise ValueError(f"posterior pictures need a 2-D latent space, the model has d = {model.d}")
    if x.dim() != 2:
        raise ValueError(f"x must be (n, D), got shape {tuple(x.shape)}")
    check_dim(resolution, "resolution")
    p = next(model.parameters())
    out = []
    for xi in x.to(p):
        q = model.q(xi)
        prior = model.prior()

        def log_joint(z: Tensor, xi: Tensor = xi, prior=prior) -> Tensor:
            return model.decoder(z).log_prob(xi) + prior.log_prob(z)

        def on(b: Box, fn) -> tuple[Tensor, Tensor]:
            points = grid(b, resolution, dtype=p.dtype)[0].to(p.device)
            return torch.cat([fn(c) for c in points.split(20_000)]), points

        region: Box = ((-box, box), (-box, box))
        for _ in range(2):
            joint, points = on(region, log_joint)
            q_points = q.sample((4000,))
            q_box = tuple(
                (float(m - width * s), float(m + width * s))
                for m, s in zip(q_points.mean(0), q_points.std(0), strict=True)
            )
            region = _union(_moments_box(joint, points, width), q_box, floor=1e-3)
        joint, points = on(region, log_joint)
        log_q, _ = on(region, q.log_prob)
        log_area = math.log(cell_area(region, resolution))
        log_px = torch.logsumexp(joint.double(), 0) + log_area
        log_post = joint.double() - log_px
        q_mass = float(torch.exp(torch.logsumexp(log_q.double(), 0) + log_area))
        qd = torch.exp(log_q.double() + log_area)
        kl = float((qd * (log_q.double() - log_post)).sum() / max(q_mass, 1e-300))
        n = resolution
        out.append(
            PosteriorGrid(
                box=region,
                log_q=log_q.double().reshape(n, n).cpu(),
                log_post=log_post.reshape(n, n).cpu(),
                log_px=float(log_px),
                kl=kl,
                q_mass=q_mass,
            )
        )
    return out


def latent_figure(
    runs: list[tuple[str, VAE]],
    x: Tensor,
    path,
    *,
    image_shape: tuple[int, ...],
    resolution: int = 120,
) -> list[dict]:
    """Draw :func:`posterior_grids` of the images ``x: (n, D)`` for every ``(label, model)``
    side by side (:func:`flowvi.plot.latent_posteriors_figure`) to ``path``; return, per run,
    its label and per image the quadrature ``ln p(x)``, KL(q || p(z|x)) and q's grid mass.

    Raises:
        ValueError: if a model's latent size is not 2 (see :func:`posterior_grids`).
    """
    from flowvi.plot import latent_posteriors_figure

    panels, summary = [], []
    for label, model in runs:
        grids = posterior_grids(model, x, resolution=resolution)
        panels.append((label, grids))
        summary.append(
            {
                "run": label,
                "grid_log_px": [g.log_px for g in grids],
                "grid_kl_q_to_posterior": [g.kl for g in grids],
                "q_mass_on_grid": [g.q_mass for g in grids],
            }
        )
    latent_posteriors_figure(panels, path, images=x, shape=image_shape)
    return summary
