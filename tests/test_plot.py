"""flowvi.plot: importing it leaves matplotlib's backend alone; figures save without a display."""

from __future__ import annotations

import os
import subprocess
import sys


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter without a display or MPLBACKEND; its stdout."""
    hidden = ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_flowvi_plot_keeps_the_backend_a_user_chose():
    code = (
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import flowvi, flowvi.plot\n"
        "print(matplotlib.get_backend(), matplotlib.rcParams['backend'])\n"
    )
    assert _python(code) == "svg svg"


def test_figures_save_without_a_display(tmp_path):
    path = tmp_path / "trace.png"
    code = (
        "import torch, matplotlib\n"
        "import flowvi.plot\n"
        f"flowvi.plot.trace_figure({{'a': torch.linspace(3, 1, 50)}}, {str(path)!r})\n"
        "print(matplotlib.get_backend().lower())\n"
    )
    assert _python(code) == "agg"  # matplotlib's own fallback without a display
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# What each figure helper draws: read back from the figure it saved.

import pytest  # noqa: E402
import torch  # noqa: E402

import flowvi.plot as plot  # noqa: E402
from flowvi.flows import build  # noqa: E402
from flowvi.targets import get  # noqa: E402
from flowvi.vae.latent2d import PosteriorGrid  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """The figures the helpers save, in order (still readable after ``plt.close``)."""
    figures = []
    save = plot._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plot, "_save", keep)
    return figures


def _colorbars(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _labelled(ax) -> bool:
    """Tick labels and a label on both axes."""
    ticks = [t.get_text() for t in (*ax.get_xticklabels(), *ax.get_yticklabels())]
    return all(ticks) and len(ticks) >= 4 and bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def _image(ax):
    return ax.get_images()[0].get_array()


def test_fit_figure_labels_its_axes_and_says_what_colour_means(tmp_path, drawn):
    torch.manual_seed(0)
    flow = build("planar", 2, length=1)
    plot.fit_figure([(get("banana"), flow)], tmp_path / "fit.png", resolution=20, samples=500)
    (fig,) = drawn
    panels = _panels(fig)
    assert len(panels) == 3 and all(_labelled(ax) for ax in panels)
    bars = [ax.get_ylabel() for ax in _colorbars(fig)]
    assert bars == ["density (peak = 1)", "density (peak = 1)", "samples per bin"]
    assert "target p" in panels[0].get_title() and "flow q" in panels[1].get_title()
    assert float(_image(panels[0]).max()) == pytest.approx(1.0)  # scaled to a peak of 1


def test_fit_figure_refuses_titles_that_do_not_match(tmp_path):
    flow = build("planar", 2, length=1)
    with pytest.raises(ValueError, match="2 titles for 1 fits"):
        plot.fit_figure([(get("banana"), flow)], tmp_path / "f.png", titles=["a", "b"])


def test_density_figure_labels_axes_and_colour_bars(tmp_path, drawn):
    torch.manual_seed(0)
    flow = build("planar", 2, length=1)
    x = torch.randn(300, 2)
    plot.density_figure(x, flow, tmp_path / "d.png", resolution=20, samples=500)
    (fig,) = drawn
    assert all(_labelled(ax) for ax in _panels(fig))
    labels = [ax.get_ylabel() for ax in _colorbars(fig)]
    assert labels == ["points per bin", "density (peak = 1)", "samples per bin"]
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        plot.density_figure(torch.randn(10, 3), flow, tmp_path / "e.png")


def test_flow_panels_figure_has_ticks_and_a_colour_bar_per_panel(tmp_path, drawn):
    images = [[torch.rand(10, 10) for _ in range(3)] for _ in range(2)]
    boxes = [((-2.0, 2.0), (-1.0, 1.0))] * 2
    path = tmp_path / "f1.png"
    plot.flow_panels_figure(images, boxes, path, row_labels=["a", "b"], column_labels="xyz")
    (fig,) = drawn
    panels = _panels(fig)
    assert len(panels) == 6 and len(_colorbars(fig)) == 6
    assert all(all(t.get_text() for t in ax.get_xticklabels()) for ax in panels)
    assert panels[0].get_ylabel().startswith("a") and panels[3].get_xlabel() == "z₁"
    assert panels[0].get_xlim() == (-2.0, 2.0) and panels[0].get_ylim() == (-1.0, 1.0)


def _grid(box=((-3.0, 3.0), (-3.0, 3.0)), n=30) -> PosteriorGrid:
    axis = torch.linspace(-3, 3, n)
    z = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1)
    log_post = (-0.5 * (z**2).sum(-1)).double()
    log_q = (-0.5 * ((z - 0.5) ** 2).sum(-1)).double()
    return PosteriorGrid(box=box, log_q=log_q, log_post=log_post, log_px=-1.0, kl=0.25, q_mass=1)


def test_latent_posteriors_figure_says_which_is_q_and_which_is_p(tmp_path, drawn):
    runs = [("iaf", [_grid(), _grid()])]
    path = tmp_path / "posterior2d.png"
    plot.latent_posteriors_figure(runs, path, images=torch.rand(2, 16), shape=(4, 4))
    (fig,) = drawn
    panels = _panels(fig)
    _, left, right = panels[:3]
    assert "heatmap p(z|x)" in left.get_title()
    assert "heatmap q(z|x)" in right.get_title() and "KL 0.25" in right.get_title()
    legend = [t.get_text() for t in right.get_legend().get_texts()]
    assert legend == ["contours: p(z|x)"]
    assert _labelled(left) and _labelled(right)
    assert sorted(ax.get_ylabel() for ax in _colorbars(fig)) == ["p(z|x)"] * 2 + ["q(z|x)"] * 2
    with pytest.raises(ValueError, match="one grid per image"):
        plot.latent_posteriors_figure([("a", [_grid()]), ("b", [])], tmp_path / "x.png")


def test_mixture_figure_circles_are_one_and_two_predictive_sds_and_a_legend_says_so(
    tmp_path, drawn
):
    x = torch.randn(100, 2)
    means = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    variances = torch.tensor([0.21, 0.44])
    plot.mixture_figure(x, means, variances, tmp_path / "c.png", labels=(x[:, 0] > 0).long())
    (fig,) = drawn
    (ax,) = fig.axes
    rings = [line for line in ax.get_lines() if len(line.get_xdata()) == 200]
    radii = [
        float(((torch.tensor(line.get_xydata()) - means[k // 2]) ** 2).sum(-1).sqrt().max())
        for k, line in enumerate(rings)
    ]
    sd = (1 + variances).sqrt().tolist()  # predictive N(m_k, (1 + s_k²) I)
    assert radii == pytest.approx([sd[0], 2 * sd[0], sd[1], 2 * sd[1]], rel=1e-6)
    legend = ax.get_legend()
    assert "predictive density" in legend.get_title().get_text()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0] == "posterior mean m_k" and texts[1].startswith("1 sd") and "2 sd" in texts[2]
    assert _labelled(ax)


@pytest.mark.parametrize("helper", ["image_grid", "vae_grid", "image_panels"])
def test_image_grids_frame_every_tile_in_grey(tmp_path, drawn, helper):
    images = torch.zeros(4, 6)  # black 2 × 3 images
    if helper == "image_grid":
        plot.image_grid(None, tmp_path / "g.png", levels=4, shape=(2, 3), rows=2, images=images)
    elif helper == "vae_grid":
        plot.vae_grid(images, tmp_path / "g.png", shape=(2, 3), columns=2)
    else:
        plot.image_panels({"a": images}, tmp_path / "g.png", shape=(2, 3), columns=2)
    tiles = torch.as_tensor(_image(drawn[0].axes[0]))
    assert tuple(tiles.shape) == (1 + 2 * 3, 1 + 2 * 4)  # a grey pixel around every tile
    grey = torch.full((9,), 0.5, dtype=tiles.dtype)
    for row in (0, 3, 6):
        assert torch.equal(tiles[row], grey)
    for column in (0, 4, 8):
        assert torch.equal(tiles[:, column], grey[:7])
    assert torch.equal(tiles[1:3, 1:4], torch.zeros(2, 3, dtype=tiles.dtype))
    with pytest.raises(ValueError, match=r"not \(n, 6\)"):
        plot.vae_grid(torch.zeros(4, 5), tmp_path / "bad.png", shape=(2, 3))


def test_line_figures_label_axes_and_name_their_lines(tmp_path, drawn):
    plot.trace_figure({"planar": torch.linspace(3, 1, 20)}, tmp_path / "t.png")
    rows = [
        {"problem": "p", "estimator": e, "samples": s, "variance": 1 / s, "variance_theory": None}
        for e in ("score", "reparam")
        for s in (1, 10)
    ]
    plot.variance_figure(rows, tmp_path / "v.png")
    plot.elbo_curves_figure({"B=10": ([1, 10], [-3, -2])}, tmp_path / "e.png", reference=-1.0)
    expected = [["planar"], ["score", "reparam"], ["B=10", "optimum"]]
    for fig, names in zip(drawn, expected, strict=True):
        (ax,) = fig.axes
        assert ax.get_xlabel() and ax.get_ylabel()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == names


def test_importing_flowvi_plot_changes_no_rcparams():
    code = (
        "import matplotlib\n"
        "before = dict(matplotlib.rcParams)\n"
        "import flowvi.plot\n"
        "changed = [k for k, v in matplotlib.rcParams.items() if before[k] != v]\n"
        "print(changed)\n"
    )
    assert _python(code) == "[]"
