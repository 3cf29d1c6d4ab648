"""Figures, saved as PNG files: the helpers behind the commands' pictures, for your own runs too.

Every helper draws one figure, writes it to ``path`` (creating missing parent folders) and
returns that path. Coordinates are drawn with ticks and labelled axes; where colour means
density a colour bar says so; image grids frame every tile in grey.

Importing this module sets no matplotlib backend and changes no ``rcParams`` (a library must
not: it would switch a notebook's inline figures off). Figures are drawn with pyplot in whichever
backend is active and written with ``savefig``, which renders PNG in any backend; without a
display matplotlib itself falls back to its non-interactive Agg backend, so no display is needed.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from flowvi.flows import build
    >>> from flowvi.plot import fit_figure
    >>> from flowvi.targets import get
    >>> flow = build("planar", 2, length=2)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = fit_figure([(get("banana"), flow)], Path(folder) / "fit.png", resolution=40,
    ...                       samples=1000)
    ...     path.name, path.stat().st_size > 0
    ('fit.png', True)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.lines import Line2D

from flowvi.metrics import grid
from flowvi.targets import Target

__all__ = [
    "density_figure",
    "density_image",
    "elbo_curves_figure",
    "fit_figure",
    "flow_panels_figure",
    "image_grid",
    "image_panels",
    "latent_posteriors_figure",
    "mixture_figure",
    "trace_figure",
    "vae_grid",
    "variance_figure",
]

Box = tuple[tuple[float, float], tuple[float, float]]


@torch.no_grad()
def density_image(log_density, box: Box, n: int, *, dtype, device) -> torch.Tensor:
    """A density on an ``n × n`` grid over a 2-D box, scaled to a peak of 1.

    Args:
        log_density: a callable taking points ``(m, 2)`` to log densities ``(m,)`` (nats),
            e.g. ``flow.log_prob`` or ``target.log_prob``; it is called in chunks of 100 000.
        box: ``((x0, x1), (y0, y1))``, the grid's extent.
        n: grid points per axis.
        dtype, device: where the points are made.

    Returns:
        ``exp(log_density - max)``, an ``(n, n)`` CPU tensor: rows along the second
        coordinate, columns along the first (``imshow(..., origin="lower")`` draws it upright).
    """
    points, _, _ = grid(box, n, dtype=dtype)
    values = torch.cat([log_density(c.to(device)).cpu() for c in points.split(100_000)])
    return torch.exp(values - values.max()).reshape(n, n)


def _colorbar(fig, ax, mappable, label: str, *, size: float = 7) -> None:
    """A colour bar beside ``ax`` for ``mappable``, labelled ``label``."""
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(label, fontsize=size)
    bar.ax.tick_params(labelsize=size - 1)


def _coordinates(ax, box: Box, names: tuple[str, str] = ("x₁", "x₂"), *, size: float = 8) -> None:
    """Limit ``ax`` to ``box`` and label its two axes, with ticks."""
    ax.set_xlim(box[0])
    ax.set_ylim(box[1])
    ax.set_xlabel(names[0], fontsize=size)
    ax.set_ylabel(names[1], fontsize=size)
    ax.tick_params(labelsize=size - 1)


@torch.no_grad()
def fit_figure(
    fits: Sequence[tuple[Target, torch.nn.Module]],
    path: str | Path,
    *,
    resolution: int = 300,
    samples: int = 20_000,
    titles: Sequence[str] | None = None,
) -> Path:
    """Targets against their fitted flows, one row per ``(target, flow)`` (the layout of
    Rezende & Mohamed (2015), Figure 3).

    Each row draws, over ``target.box``: the target density :math:`p \\propto e^{-U}` (heatmap,
    scaled to a peak of 1), the flow's density :math:`q` (heatmap, exact: ``exp(flow.log_prob)``
    on the grid, inverting the flow at every grid point, scaled to a peak of 1) and a 2-D
    histogram of ``samples`` draws of :math:`q` (colour: samples per bin). Every panel has
    labelled axes and a colour bar.

    Args:
        fits: ``(target, flow)`` pairs: a 2-D :class:`flowvi.targets.Target` (its ``box`` and
            ``log_prob``) and a flow over 2-D points (``log_prob`` and ``sample``).
        path: the PNG file to write.
        resolution: grid points per axis of the density panels.
        samples: draws of each flow in its histogram.
        titles: a title per row, in place of the target's name (e.g. with its metrics).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``fits`` is empty or ``titles`` has not one entry per fit.
    """
    if not fits:
        raise ValueError("fit_figure needs at least one (target, flow) pair")
    if titles is not None and len(titles) != len(fits):
        raise ValueError(f"{len(titles)} titles for {len(fits)} fits")
    rows = len(fits)
    fig, axes = plt.subplots(rows, 3, figsize=(11, 3.4 * rows), squeeze=False)
    for i, (target, flow) in enumerate(fits):
        param = _tensor_of(flow)
        box = target.box
        extent = (*box[0], *box[1])
        p = density_image(target.log_prob, box, resolution, dtype=param.dtype, device=param.device)
        q = density_image(flow.log_prob, box, resolution, dtype=param.dtype, device=param.device)
        x = flow.sample((samples,)).cpu()
        name = target.name if titles is None else titles[i]
        panels = [(p, "target p ∝ exp(-U)"), (q, "flow q (exact)")]
        for ax, (image, label) in zip(axes[i, :2], panels, strict=True):
            shown = ax.imshow(
                image.numpy(), origin="lower", extent=extent, cmap="viridis", aspect="auto"
            )
            ax.set_title(f"{name}: {label}", fontsize=9)
            _colorbar(fig, ax, shown, "density (peak = 1)")
        *_, counts = axes[i, 2].hist2d(
            x[:, 0].numpy(), x[:, 1].numpy(), bins=150, range=[box[0], box[1]], cmap="viridis"
        )
        axes[i, 2].set_title(f"{samples} samples of q", fontsize=9)
        _colorbar(fig, axes[i, 2], counts, "samples per bin")
        for ax in axes[i]:
            _coordinates(ax, box)
    fig.tight_layout()
    return _save(fig, path)


def flow_panels_figure(
    images: Sequence[Sequence[torch.Tensor]],
    boxes: Sequence[Box],
    path: str | Path,
    *,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
) -> Path:
    """A grid of 2-D densities: the layout of Rezende & Mohamed (2015), Figure 1 (rows: base
    and layer family; columns: the base, then K layers).

    Panel ``(i, j)`` draws ``images[i][j]`` as a heatmap over ``boxes[i]`` (one box per row,
    shared by its panels), with ticks on both axes and its own colour bar (density). Each
    panel's colour scale ends at the 99.5th percentile of its nonzero values, so that the thin,
    very high ridges that contracting layers make saturate instead of darkening the rest; zero
    density stays at the bottom colour.

    Args:
        images: rows of ``(n, n)`` densities (rows of each along the second coordinate).
        boxes: ``((x0, x1), (y0, y1))`` per row.
        path: the PNG file to write.
        row_labels: one label per row, written beside its first panel.
        column_labels: one title per column, written above the first row.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``boxes`` or ``row_labels`` has not one entry per row, or a row has not
            one image per column label.
    """
    rows, cols = len(images), len(column_labels)
    if len(boxes) != rows or len(row_labels) != rows:
        raise ValueError(f"{rows} rows of images, {len(boxes)} boxes, {len(row_labels)} labels")
    if any(len(row) != cols for row in images):
        raise ValueError(f"every row needs {cols} images, one per column label")
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.4 * rows), squeeze=False)
    for i, (row, box) in enumerate(zip(images, boxes, strict=True)):
        for j, image in enumerate(row):
            ax = axes[i, j]
            image = image.detach().cpu().double()
            positive = image[image > 0].sort().values
            top = float(positive[int(0.995 * (len(positive) - 1))]) if len(positive) else 1.0
            shown = ax.imshow(
                image.numpy(),
                origin="lower",
                extent=(*box[0], *box[1]),
                cmap="viridis",
                vmin=0.0,
                vmax=top,
            )
            ax.tick_params(labelsize=6)
            _colorbar(fig, ax, shown, "density" if j == cols - 1 else "", size=6)
            if i == 0:
                ax.set_title(column_labels[j], fontsize=10)
        axes[i, 0].set_ylabel(f"{row_labels[i]}\nz₂", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("z₁", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def trace_figure(traces: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Loss traces against the iteration, one line per entry, with a legend of their names.

    Args:
        traces: ``name -> (T,)`` annealed free energies :math:`F_t` (nats) per iteration.
        path: the PNG file to write.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, trace in traces.items():
        ax.plot(trace.detach().cpu().numpy(), lw=0.6, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("annealed free energy F_t (nats)")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


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
    """Data | model density | model samples, for 2-D data.

    Over a box around the central 99.8% of ``x``: a 2-D histogram of the data, the model
    density as a heatmap (exact: ``exp(flow.log_prob)`` on a grid, scaled to a peak of 1) and
    a 2-D histogram of ``samples`` model draws; labelled axes and a colour bar on every panel.

    Args:
        x: ``(n, 2)`` data points (e.g. the test set).
        flow: a flow over 2-D points (``log_prob`` and ``sample``).
        path: the PNG file to write.
        resolution: grid points per axis of the density panel.
        samples: model draws in the last panel.
        title: a title over the three panels.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``x`` is not of shape ``(n, 2)``.
    """
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"density_figure draws 2-D data (n, 2), not {tuple(x.shape)}")
    param = _tensor_of(flow)
    x = x.detach().cpu().double()
    box = _box(x)
    extent = (*box[0], *box[1])
    q = density_image(flow.log_prob, box, resolution, dtype=param.dtype, device=param.device)
    s = flow.sample((samples,)).cpu()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    *_, shown = axes[0].hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=150, range=box)
    axes[0].set_title(f"data ({len(x)} points)", fontsize=9)
    _colorbar(fig, axes[0], shown, "points per bin")
    shown = axes[1].imshow(q.numpy(), origin="lower", extent=extent, cmap="viridis", aspect="auto")
    axes[1].set_title("model density q (exact)", fontsize=9)
    _colorbar(fig, axes[1], shown, "density (peak = 1)")
    *_, shown = axes[2].hist2d(s[:, 0].numpy(), s[:, 1].numpy(), bins=150, range=box)
    axes[2].set_title(f"{samples} model samples", fontsize=9)
    _colorbar(fig, axes[2], shown, "samples per bin")
    for ax in axes:
        _coordinates(ax, box)
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
    """A ``rows × rows`` grid of model samples (or of given images), as grey images framed
    by one grey pixel.

    Samples are dequantized pixel values in ``[0, levels)``; they are floored to integer
    levels and clipped to ``[0, levels - 1]`` for display (black 0, white ``levels - 1``).

    Args:
        flow: a flow over ``D``-pixel images (``sample``); unused with ``images``.
        path: the PNG file to write.
        levels: the number of pixel levels.
        shape: the image shape; its last two entries are height and width (``H W = D``).
        rows: images per row and per column.
        images: ``(n, D)`` pixel values to draw instead of samples (the first ``rows²``).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``shape[-2:]`` does not hold ``D`` pixels.
    """
    n = rows * rows
    x = flow.sample((n,)) if images is None else images[:n]
    x = torch.floor(x.detach().cpu().double()).clamp(0, levels - 1) / max(levels - 1, 1)
    tiles, grid_rows = _tiles(x, shape, rows, gap=1)
    fig, ax = plt.subplots(figsize=(6, 6 * grid_rows / rows + 0.3))
    ax.imshow(tiles.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    what = "model samples" if images is None else "images"
    ax.set_title(f"{len(x)} {what} ({levels} grey levels)")
    fig.tight_layout()
    return _save(fig, path)


def variance_figure(rows: Sequence[dict], path: str | Path, *, titles: dict | None = None) -> Path:
    """Log-log variance of gradient estimators against the number of samples.

    One panel per ``row["problem"]`` and one line per ``row["estimator"]`` (legend), points at
    ``row["samples"]``; ``row["variance_theory"]`` (where not ``None``) dashed in the same
    colour. The rows are those of :func:`flowvi.app.estimators.run_estimators`.

    Args:
        rows: dicts with ``problem``, ``estimator``, ``samples``, ``variance`` and optionally
            ``variance_theory``.
        path: the PNG file to write.
        titles: a panel title per problem, in place of its name.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``rows`` is empty.
    """
    if not rows:
        raise ValueError("variance_figure needs at least one row")
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
        ax.legend(fontsize=8, title="dashed: theory", title_fontsize=7)
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
    r"""Fitted unit-variance mixture components over 2-D data.

    Points are coloured by ``labels`` (e.g. the most responsible component), grey without.
    Component ``k`` shows its posterior mean :math:`m_k` (a black cross) and two circles in
    the colour of its points: radius 1 (solid) and 2 (dashed) standard deviations of its
    predictive density :math:`\mathcal N(m_k, (1 + s_k^2) I)`, i.e. radii
    :math:`\sqrt{1 + s_k^2}` and :math:`2\sqrt{1 + s_k^2}`, where :math:`s_k^2 I` is the
    posterior covariance of the component's mean and 1 the components' unit variance. A legend
    says so; the axes are labelled, with equal scales.

    Args:
        x: ``(n, 2)`` data points.
        means: ``(K, 2)`` posterior means :math:`m_k`.
        variances: ``(K,)`` posterior variances :math:`s_k^2` of the means.
        path: the PNG file to write.
        labels: ``(n,)`` component indices in ``[0, K)``, colouring the points.
        title: the panel title (default: the number of components and points).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``x`` or ``means`` is not 2-D points, or ``variances`` has not one entry
            per component.
    """
    x, means, variances = (t.detach().cpu().double() for t in (x, means, variances))
    if x.dim() != 2 or x.shape[1] != 2 or means.dim() != 2 or means.shape[1] != 2:
        raise ValueError(
            f"mixture_figure draws 2-D points, not x {tuple(x.shape)}, means {tuple(means.shape)}"
        )
    if variances.shape != (len(means),):
        raise ValueError(f"variances {tuple(variances.shape)}: one per component ({len(means)})")
    fig, ax = plt.subplots(figsize=(6, 6))
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
    handles = [
        Line2D([], [], ls="", marker="x", color="k", ms=7, mew=2, label="posterior mean m_k"),
        Line2D([], [], color="0.3", lw=1, label="1 sd of N(m_k, (1 + s_k²) I)"),
        Line2D([], [], color="0.3", lw=1, ls="--", label="2 sd of N(m_k, (1 + s_k²) I)"),
    ]
    ax.legend(
        handles=handles,
        fontsize=7,
        loc="upper left",
        title="circles: component k's predictive density",
        title_fontsize=7,
    )
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
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
    """Curves against a log-scale x axis (e.g. SVI's ELBO for several minibatch sizes against
    examples seen), one line per entry, with a legend.

    Args:
        curves: ``label -> (xs, ys)``.
        path: the PNG file to write.
        reference: a dashed horizontal line at this value (e.g. CAVI's optimum).
        reference_label: its legend entry.
        xlabel, ylabel: the axis labels.
        title: the panel title.
        logy: a log-scale y axis too (e.g. for gaps to an optimum).

    Points outside a log axis (x <= 0, or y <= 0 with ``logy``) are left out.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if a curve's ``xs`` and ``ys`` differ in length.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (label, (xs, ys)) in enumerate(curves.items()):
        if len(xs) != len(ys):
            plt.close(fig)
            raise ValueError(f"curve {label!r}: {len(xs)} x values, {len(ys)} y values")
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
    """Pixel probabilities as a grid of grey images, each framed by one grey pixel.

    Args:
        images: ``(n, D)`` values in ``[0, 1]`` (a VAE decoder's Bernoulli means, or binary
            images; clamped), drawn black 0 to white 1, row by row.
        path: the PNG file to write.
        shape: the image shape; its last two entries are height and width (``H W = D``).
        title: the figure title.
        columns: images per row (the last row is padded with black).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``shape[-2:]`` does not hold ``D`` pixels.
    """
    tiles, rows = _tiles(images, shape, columns, gap=1)
    fig, ax = plt.subplots(figsize=(columns * 0.75, rows * 0.75 + 0.4))
    ax.imshow(tiles.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def reconstructions_grid(
    x: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, *, shape: tuple[int, ...]
) -> Path:
    """32 images ``x: (32, D)`` and their ``reconstructions: (32, D)`` (values in ``[0, 1]``),
    as :func:`vae_grid` draws them: the images in odd rows of 8, each row's reconstructions in
    the even row below it.

    Raises:
        ValueError: if ``x`` and ``reconstructions`` are not both ``(32, D)``, or ``shape[-2:]``
            does not hold ``D`` pixels.
    """
    if x.shape != reconstructions.shape or x.shape[0] != 32:
        raise ValueError(
            f"expected 32 images and 32 reconstructions, got {tuple(x.shape)} and "
            f"{tuple(reconstructions.shape)}"
        )
    pairs = torch.stack([x.reshape(4, 8, -1), reconstructions.reshape(4, 8, -1)], 1)
    title = "test images (odd rows) and reconstructions (even rows)"
    return vae_grid(pairs.reshape(64, -1), path, shape=shape, title=title)


def _tiles(
    images: torch.Tensor, shape: tuple[int, ...], columns: int, *, gap: int = 0
) -> tuple[torch.Tensor, int]:
    """``images: (n, D)`` clamped to [0, 1] and tiled row by row, ``columns`` per row (the
    last row padded with black), framed by ``gap`` grey (0.5) pixels between tiles and around
    the grid: ``(rows * (H + gap) + gap, columns * (W + gap) + gap)`` and the number of rows.

    Raises:
        ValueError: if ``shape[-2:]`` does not hold ``D`` pixels.
    """
    x = images.detach().cpu().double().clamp(0, 1)
    h, w = shape[-2:]
    if x.dim() != 2 or x.shape[1] != h * w:
        raise ValueError(f"images {tuple(x.shape)} are not (n, {h * w}) for shape {tuple(shape)}")
    rows = math.ceil(len(x) / columns)
    x = torch.cat([x, x.new_zeros(rows * columns - len(x), x.shape[1])])
    x = torch.nn.functional.pad(x.reshape(-1, h, w), (0, gap, 0, gap), value=0.5)
    h, w = h + gap, w + gap
    tiles = x.reshape(rows, columns, h, w).permute(0, 2, 1, 3).reshape(rows * h, columns * w)
    tiles = torch.nn.functional.pad(tiles[None], (gap, 0, gap, 0), value=0.5)[0]
    return tiles, rows


def image_panels(
    panels: dict[str, torch.Tensor],
    path: str | Path,
    *,
    shape: tuple[int, ...],
    columns: int = 8,
    title: str = "",
) -> Path:
    """Grids of images side by side, one panel per entry (e.g. samples of several generative
    models), each image framed by one grey pixel.

    Args:
        panels: ``title -> (n, D)`` values in ``[0, 1]`` (pixel probabilities or binary
            images; clamped), drawn black 0 to white 1, row by row.
        path: the PNG file to write.
        shape: the image shape; its last two entries are height and width (``H W = D``).
        columns: images per row of each panel.
        title: the figure title.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``panels`` is empty, or ``shape[-2:]`` does not hold ``D`` pixels.
    """
    if not panels:
        raise ValueError("image_panels needs at least one panel")
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
    r"""2-D latent posteriors of a few images, exactly on grids (Kingma et al. 2016, Figure 1).

    One row per image; per run two panels on that image's grid, each with labelled axes
    (:math:`z_1, z_2`) and a colour bar (density):

    - left, heatmap: the true posterior :math:`p(z \mid x) \propto p(x \mid z) p(z)`,
      normalized on the grid;
    - right, heatmap: the amortized :math:`q(z \mid x)` (exact ``log_prob``), with the true
      posterior's contours drawn over it in white; titled with the grid's
      :math:`\mathrm{KL}(q \| p(z \mid x))` (the inference gap, nats). Titles and a legend say
      which is which.

    With ``images`` and their ``shape``, a first column shows each image.

    Args:
        runs: ``(label, grids)`` per model, ``grids`` a list of
            :class:`flowvi.vae.latent2d.PosteriorGrid` (one per image, the same images for
            every run).
        path: the PNG file to write.
        images: ``(n, D)`` the images whose posteriors are drawn.
        shape: their shape; its last two entries are height and width.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``runs`` is empty or its runs have different numbers of grids.
    """
    if not runs:
        raise ValueError("latent_posteriors_figure needs at least one run")
    n = len(runs[0][1])
    if any(len(grids) != n for _, grids in runs):
        raise ValueError("every run needs one grid per image, the same images")
    lead = images is not None
    cols = 2 * len(runs) + lead
    fig, axes = plt.subplots(n, cols, figsize=(3.0 * cols, 2.6 * n), squeeze=False)
    contour_key = Line2D([], [], color="white", lw=0.8, label="contours: p(z|x)")
    for i in range(n):
        if lead:
            axes[i, 0].imshow(images[i].detach().cpu().reshape(shape[-2:]).numpy(), cmap="gray")
            axes[i, 0].set_axis_off()
            axes[i, 0].set_title("x", fontsize=8)
        for r, (label, grids) in enumerate(runs):
            g = grids[i]
            extent = (*g.box[0], *g.box[1])
            post, q = torch.exp(g.log_post).numpy(), torch.exp(g.log_q).numpy()
            left, right = axes[i, lead + 2 * r], axes[i, lead + 2 * r + 1]
            shown = left.imshow(post, origin="lower", extent=extent, cmap="viridis", aspect="auto")
            _colorbar(fig, left, shown, "p(z|x)", size=6)
            shown = right.imshow(q, origin="lower", extent=extent, cmap="viridis", aspect="auto")
            _colorbar(fig, right, shown, "q(z|x)", size=6)
            xs = torch.linspace(*g.box[0], post.shape[1]).numpy()
            ys = torch.linspace(*g.box[1], post.shape[0]).numpy()
            right.contour(xs, ys, post, levels=4, colors="white", linewidths=0.5)
            right.legend(
                handles=[contour_key],
                fontsize=6,
                loc="lower right",
                facecolor="0.2",
                labelcolor="white",
                framealpha=0.8,
            )
            left.set_title(f"{label}: heatmap p(z|x)", fontsize=8)
            right.set_title(f"{label}: heatmap q(z|x), KL {g.kl:.2f}", fontsize=8)
            for ax in (left, right):
                _coordinates(ax, g.box, ("z₁", "z₂"), size=7)
    fig.tight_layout()
    return _save(fig, path)
