"""Figures, saved as PNG (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
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
        param = next(flow.parameters())
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
