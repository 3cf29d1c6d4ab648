"""Figures, saved as PNG files.

Importing this module sets no matplotlib backend (a library must not: it would switch a
notebook's inline figures off). Figures are drawn with pyplot in whichever backend is active and
written with ``savefig``, which renders PNG in any backend; without a display matplotlib itself
falls back to its non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from flowvi.metrics import grid
from flowvi.targets import Target


@torch.no_grad()
def density_image(log_density, box, n: int, *, dtype, device) -> torch.Tensor:
    """``exp(log_density)`` on an ``n × n`` grid over a 2-D box, as an ``(n, n)`` image."""
    points, _, _ = grid(box, n, dtype=dtype)
    values = torch.cat([log_density(c.to(device)).cpu() for c in points.split(100_000)])
    return torch.exp(values - values.max()).reshape(n, n)


@torch.no_grad()
def fit_figure(
    fits: Sequence[tuple[Target, torch.nn.Module]],
    path: str | Path,
    *,
    resolution: int = 300,
    samples: int = 20_000,
    titles: Sequence[str] | None = None,
) -> Path:
    """One row per ``(target, flow)``: true density | fitted density | samples (Figure 3 layout).

    The fitted density is drawn exactly, ``exp(flow.log_prob)`` on a grid over ``target.box``
    (the flow is inverted at every grid point); densities are scaled to a peak of 1.
    """
    rows = len(fits)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for i, (target, flow) in enumerate(fits):
        param = _tensor_of(flow)
        box = target.box
        extent = (*box[0], *box[1])
        p = density_image(target.log_prob, box, resolution, dtype=param.dtype, device=param.device)
        q = density_image(flow.log_prob, box, resolution, dtype=param.dtype, device=param.device)
        x = flow.sample((samples,)).cpu()
        panels = [(p, "target exp(-U)"), (q, "flow q (exact)")]
        for ax, (image, label) in zip(axes[i, :2], panels, strict=True):
            ax.imshow(image.numpy(), origin="lower", extent=extent, cmap="viridis", aspect="auto")
            ax.set_title(f"{target.name}: {label}" if titles is None else f"{titles[i]}: {label}")
        axes[i, 2].hist2d(
            x[:, 0].numpy(), x[:, 1].numpy(), bins=150, range=[box[0], box[1]], cmap="viridis"
        )
        axes[i, 2].set_title(f"{samples} samples of q")
        for ax in axes[i]:
            ax.set_xlim(box[0])
            ax.set_ylim(box[1])
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def flow_panels_figure(
    images: Sequence[Sequence[torch.Tensor]],
    boxes: Sequence[tuple[tuple[float, float], tuple[float, float]]],
    path: str | Path,
    *,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
) -> Path:
    """A grid of densities, ``images[i][j]: (n, n)`` drawn over ``boxes[i]`` (one box per row,
    shared by its panels): the layout of Rezende & Mohamed (2015), Figure 1 (rows: base and
    layer family; columns: the base, then K layers). Each panel's colour scale ends at the 99.5th
    percentile of its nonzero values, so that the thin, very high ridges that contracting layers
    make saturate instead of darkening the rest; zero density stays at the bottom colour."""
    rows, cols = len(images), len(column_labels)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for i, (row, box) in enumerate(zip(images, boxes, strict=True)):
        for j, image in enumerate(row):
            ax = axes[i, j]
            image = image.detach().cpu().double()
            positive = image[image > 0].sort().values
            top = float(positive[int(0.995 * (len(positive) - 1))]) if len(positive) else 1.0
            ax.imshow(
                image.numpy(),
                origin="lower",
                extent=(*box[0], *box[1]),
                cmap="viridis",
                vmin=0.0,
                vmax=top,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column_labels[j], fontsize=10)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def trace_figure(traces: dict[str, torch.Tensor], path: str | Path) -> Path:
    """The loss traces (nats) against iteration, one line per run."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, trace in traces.items():
        ax.plot(trace.numpy(), lw=0.6, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("annealed free energy F_t (nats)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _box(x: torch.Tensor, margin: float = 0.1) -> tuple[tuple[float, float], ...]:
    """A square-ish 2-D box around the central 99.8% of ``x: (n, 2)``, padded by ``margin``."""
    lo, hi = torch.quantile(x, torch.tensor([0.001, 0.999], dtype=x.dtype), dim=0)
    pad = margin * (hi - lo)
    return tuple((float(a), float(b)) for a, b in zip(lo - pad, hi + pad, strict=True))


@torch.no_grad()
def density_figure(
    x: torch.Tensor,
    flow: torch.nn.Module,
    path: str | Path,
    *,
    resolution: int = 300,
    samples: int = 20_000,
    title: str | None = None,
) -> Path:
    """Data | model density | model samples, for 2-D data ``x: (n, 2)`` (e.g. the test set).

    The model density is exact: ``exp(flow.log_prob)`` on a grid, scaled to a peak of 1.
    """
    param = _tensor_of(flow)
    x = x.detach().cpu().double()
    box = _box(x)
    extent = (*box[0], *box[1])
    q = density_image(flow.log_prob, box, resolution, dtype=param.dtype, device=param.device)
    s = flow.sample((samples,)).cpu()
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    axes[0].hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=150, range=box, cmap="viridis")
    axes[0].set_title(f"data ({len(x)} points)")
    axes[1].imshow(q.numpy(), origin="lower", extent=extent, cmap="viridis", aspect="auto")
    axes[1].set_title("model density (exact)")
    axes[2].hist2d(s[:, 0].numpy(), s[:, 1].numpy(), bins=150, range=box, cmap="viridis")
    axes[2].set_title(f"{samples} model samples")
    for ax in axes:
        ax.set_xlim(box[0])
        ax.set_ylim(box[1])
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def image_grid(
    flow: torch.nn.Module,
    path: str | Path,
    *,
    levels: int,
    shape: tuple[int, ...],
    rows: int = 8,
    images: torch.Tensor | None = None,
) -> Path:
    """A ``rows × rows`` grid of model samples (or of ``images: (n, D)``), as grey images.

    Samples are dequantized pixel values in ``[0, levels)``; they are floored to integer levels
    and clipped to ``[0, levels - 1]`` for display.
    """
    n = rows * rows
    x = flow.sample((n,)) if images is None else images[:n]
    x = torch.floor(x.detach().cpu().double()).clamp(0, levels - 1)
    h, w = shape[-2:]
    tiles = x.reshape(rows, rows, h, w).permute(0, 2, 1, 3).reshape(rows * h, rows * w)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(tiles.numpy(), cmap="gray", vmin=0, vmax=levels - 1)
    ax.set_axis_off()
    ax.set_title(f"{n} model samples" if images is None else f"{n} images")
    fig.tight_layout()
    return _save(fig, path)


def variance_figure(rows: Sequence[dict], path: str | Path, *, titles: dict | None = None) -> Path:
    """Log-log variance of gradient estimators against the number of samples, one panel per
    ``row["problem"]`` and one line per ``row["estimator"]``; ``variance_theory`` (where not
    ``None``) dashed in the same colour (rows of :mod:`flowvi.inference.estimators`)."""
    problems = list(dict.fromkeys(row["problem"] for row in rows))
    fig, axes = plt.subplots(1, len(problems), figsize=(5.5 * len(problems), 4), squeeze=False)
    for ax, problem in zip(axes[0], problems, strict=True):
        mine = [row for row in rows if row["problem"] == problem]
        for k, name in enumerate(dict.fromkeys(row["estimator"] for row in mine)):
            line = sorted((r for r in mine if r["estimator"] == name), key=lambda r: r["samples"])
            s = [r["samples"] for r in line]
            ax.loglog(s, [r["variance"] for r in line], "o-", color=f"C{k}", ms=3, label=name)
            if line[0].get("variance_theory") is not None:
                ax.loglog(s, [r["variance_theory"] for r in line], "--", color=f"C{k}", lw=0.8)
        ax.set_xlabel("samples S per estimate")
        ax.set_ylabel("variance of the gradient estimate")
        ax.set_title((titles or {}).get(problem, problem), fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def mixture_figure(
    x: torch.Tensor,
    means: torch.Tensor,
    variances: torch.Tensor,
    path: str | Path,
    *,
    labels: torch.Tensor | None = None,
    title: str | None = None,
) -> Path:
    r"""Fitted unit-variance mixture components over 2-D data ``x: (n, 2)``.

    Points are coloured by ``labels: (n,)`` (e.g. the most responsible component); each
    component ``k`` shows its mean ``means[k]`` (a cross) and the circles of radius 1 and 2
    standard deviations of its predictive density :math:`\mathcal N(m_k, (1 + s_k^2) I)`
    (``variances[k]`` :math:`= s_k^2`), in the colour of its points.
    """
    x, means, variances = (t.detach().cpu().double() for t in (x, means, variances))
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    colors = [f"C{k % 10}" for k in range(len(means))]
    if labels is None:
        ax.scatter(x[:, 0], x[:, 1], s=3, c="0.5", alpha=0.5, linewidths=0)
    else:
        point_colors = [colors[k] for k in labels.cpu().tolist()]
        ax.scatter(x[:, 0], x[:, 1], s=3, c=point_colors, alpha=0.5, linewidths=0)
    theta = torch.linspace(0, 2 * torch.pi, 200, dtype=torch.float64)
    circle = torch.stack([theta.cos(), theta.sin()], -1)
    for k, (m, v) in enumerate(zip(means, variances, strict=True)):
        sd = float((1 + v).sqrt())
        for r, style in ((1, "-"), (2, "--")):
            ring = m + r * sd * circle
            ax.plot(ring[:, 0], ring[:, 1], style, color=colors[k], lw=1)
        ax.plot(float(m[0]), float(m[1]), "x", color="k", ms=8, mew=2)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title or f"{len(means)} components over {len(x)} points", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def elbo_curves_figure(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    reference: float | None = None,
    reference_label: str = "optimum",
    xlabel: str = "examples seen",
    ylabel: str = "ELBO per datum (nats)",
    title: str | None = None,
    logy: bool = False,
) -> Path:
    """ELBO curves against a log-scale x axis (e.g. SVI for several minibatch sizes against
    examples seen), one line per ``curves[label] = (x, y)``; ``reference`` a dashed
    horizontal line; ``logy``: a log-scale y axis too (e.g. for gaps to an optimum). Points
    outside a log axis (x <= 0, or y <= 0 with ``logy``) are left out."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (label, (xs, ys)) in enumerate(curves.items()):
        kept = [(a, b) for a, b in zip(xs, ys, strict=True) if a > 0 and (b > 0 or not logy)]
        if kept:
            ax.plot(*zip(*kept, strict=True), "o-", color=f"C{k}", ms=3, label=label)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=0.8, label=reference_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _tensor_of(module: torch.nn.Module) -> torch.Tensor:
    """A parameter or buffer of ``module``: where its dtype and device come from."""
    return next(itertools.chain(module.parameters(), module.buffers()))


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def vae_grid(
    images: torch.Tensor,
    path: str | Path,
    *,
    shape: tuple[int, ...],
    title: str = "",
    columns: int = 8,
) -> Path:
    """Pixel probabilities ``images: (n, D)`` in ``[0, 1]`` (a VAE decoder's Bernoulli means,
    or binary images) as a grid of ``columns`` grey images of ``shape[-2:]``, row by row."""
    tiles, rows = _tiles(images, shape, columns)
    fig, ax = plt.subplots(figsize=(columns * 0.75, rows * 0.75 + 0.4))
    ax.imshow(tiles.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _tiles(
    images: torch.Tensor, shape: tuple[int, ...], columns: int, *, gap: int = 0
) -> tuple[torch.Tensor, int]:
    """``images: (n, D)`` clamped to [0, 1] and tiled row by row, ``columns`` per row (the
    last row padded with black), each image framed by ``gap`` grey (0.5) pixels on its right
    and bottom: ``(rows * (H + gap), columns * (W + gap))`` and the number of rows."""
    x = images.detach().cpu().double().clamp(0, 1)
    rows = math.ceil(len(x) / columns)
    x = torch.cat([x, x.new_zeros(rows * columns - len(x), x.shape[1])])
    h, w = shape[-2:]
    x = torch.nn.functional.pad(x.reshape(-1, h, w), (0, gap, 0, gap), value=0.5)
    h, w = h + gap, w + gap
    tiles = x.reshape(rows, columns, h, w).permute(0, 2, 1, 3).reshape(rows * h, columns * w)
    return tiles, rows


def image_panels(
    panels: dict[str, torch.Tensor],
    path: str | Path,
    *,
    shape: tuple[int, ...],
    columns: int = 8,
    title: str = "",
) -> Path:
    """Grids of images side by side, one panel per entry of ``panels`` (its title the key):
    ``images: (n, D)`` in ``[0, 1]`` (pixel probabilities or binary images) shown as grey
    images of ``shape[-2:]`` framed in grey, ``columns`` per row, e.g. samples of several
    generative models."""
    tiled = [(name, *_tiles(x, shape, columns, gap=1)) for name, x in panels.items()]
    rows = max(r for _, _, r in tiled)
    fig, axes = plt.subplots(
        1, len(tiled), figsize=(len(tiled) * columns * 0.5, rows * 0.5 + 0.6), squeeze=False
    )
    for ax, (name, tiles, _) in zip(axes[0], tiled, strict=True):
        ax.imshow(tiles.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def latent_posteriors_figure(
    runs: Sequence[tuple[str, Sequence]],
    path: str | Path,
    *,
    images: torch.Tensor | None = None,
    shape: tuple[int, ...] = (),
) -> Path:
    """2-D latent posteriors of a few images, exactly on grids (Kingma et al. 2016, Figure 1).

    ``runs``: ``(label, grids)`` per model, ``grids`` a list of
    :class:`flowvi.vae.latent2d.PosteriorGrid` (one per image, the same images for every run).
    One row per image; per run two panels on that image's grid: the true posterior
    :math:`p(z \\mid x) \\propto p(x \\mid z) p(z)` normalized on the grid, and the amortized
    :math:`q(z \\mid x)` (exact ``log_prob``) with the true posterior's contours over it, titled
    with the grid's KL(q || p(z|x)) (the inference gap, nats). With ``images: (n, D)`` and
    their ``shape``, a first column shows each image.
    """
    n = len(runs[0][1])
    lead = images is not None
    cols = 2 * len(runs) + lead
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols, 2.3 * n), squeeze=False)
    for i in range(n):
        if lead:
            axes[i, 0].imshow(images[i].detach().cpu().reshape(shape[-2:]).numpy(), cmap="gray")
            axes[i, 0].set_axis_off()
        for r, (label, grids) in enumerate(runs):
            g = grids[i]
            extent = (*g.box[0], *g.box[1])
            post, q = torch.exp(g.log_post).numpy(), torch.exp(g.log_q).numpy()
            left, right = axes[i, lead + 2 * r], axes[i, lead + 2 * r + 1]
            left.imshow(post, origin="lower", extent=extent, cmap="viridis", aspect="auto")
            right.imshow(q, origin="lower", extent=extent, cmap="viridis", aspect="auto")
            xs = torch.linspace(*g.box[0], post.shape[1]).numpy()
            ys = torch.linspace(*g.box[1], post.shape[0]).numpy()
            right.contour(xs, ys, post, levels=4, colors="white", linewidths=0.5)
            left.set_title(f"{label}: p(z|x)", fontsize=8)
            right.set_title(f"{label}: q(z|x), KL {g.kl:.2f}", fontsize=8)
            for ax in (left, right):
                ax.tick_params(labelsize=6)
    fig.tight_layout()
    return _save(fig, path)
