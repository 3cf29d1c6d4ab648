"""``flowvi show`` (Rezende & Mohamed 2015, Figure 1) and the uniform base it needs.

The densities are exact (``exp(log_prob)`` on a grid), so they must integrate to 1: over the
image of the box for the uniform base (zero outside it), over a box holding the image of the
radius-4 disc for the Gaussian.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowvi.app.cli import main
from flowvi.app.show import (
    GAUSS_RADIUS,
    ShowConfig,
    base_module,
    boundary,
    bounds,
    build_layers,
    density_grid,
    planar_layer,
    radial_layer,
    random_parameters,
    square_box,
)
from flowvi.distributions import BoxUniform
from flowvi.flows import NormalizingFlow
from flowvi.metrics import cell_area

F64 = torch.float64


def _integral(flow: NormalizingFlow, base: str, n: int) -> float:
    """Midpoint rule for ``exp(log_prob)`` on an ``n × n`` grid over the image of the base's
    region (the box, or the disc of radius 4), padded by 2%."""
    box = square_box([bounds(flow().flow(boundary(base)))], pad=0.02)
    return float(density_grid(flow.log_prob, box, n).sum()) * cell_area(box, n)


@pytest.mark.parametrize("family", ["planar", "radial"])
@pytest.mark.parametrize("seed", [0, 1])
def test_uniform_base_densities_integrate_to_one_over_the_image_of_the_box(family, seed):
    layers = build_layers(random_parameters(2, seed=seed), 2)[family]
    for k in (1, 2):
        flow = NormalizingFlow(base_module("uniform"), layers[:k])
        assert _integral(flow, "uniform", 500) == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("family", ["planar", "radial"])
def test_gaussian_base_densities_integrate_to_one(family):
    layers = build_layers(random_parameters(2, seed=2), 2)[family]
    outside = math.exp(-0.5 * GAUSS_RADIUS**2)  # Gaussian mass outside the disc, 3.4e-4
    for k in (1, 2):
        flow = NormalizingFlow(base_module("gaussian"), layers[:k])
        assert _integral(flow, "gaussian", 300) == pytest.approx(1 - outside, abs=1e-3)


@pytest.mark.parametrize("family", ["planar", "radial"])
def test_uniform_base_density_is_zero_exactly_outside_the_image_of_the_box(family):
    """Points mapped forward from inside the box get the change-of-variables density, points
    mapped from outside it get log_prob = -inf (the forward map decides, not the inverse)."""
    flow = NormalizingFlow(BoxUniform(2, low=-1.0, high=1.0).double(), [])
    flow.layers.extend(build_layers(random_parameters(2, seed=3), 2)[family])
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(400, 2, generator=g, dtype=F64)
    direction = direction / direction.abs().amax(-1, keepdim=True)  # on the box's boundary
    scale = torch.rand(400, 1, generator=g, dtype=F64)
    inside, outside = 0.99 * scale * direction, (1.01 + scale) * direction
    f = flow().flow
    x_in, ladj = f.call_and_ladj(inside)
    torch.testing.assert_close(flow.log_prob(x_in), -math.log(4.0) - ladj, rtol=0, atol=1e-9)
    assert torch.isneginf(flow.log_prob(f(outside))).all()


def test_box_uniform_base():
    q = BoxUniform(3, low=-2.0, high=0.5).double()()
    x = torch.tensor([[0.0, -1.0, 0.4], [0.0, -1.0, 0.6], [-2.0, -2.0, -2.0]], dtype=F64)
    torch.testing.assert_close(
        q.log_prob(x), torch.tensor([-3 * math.log(2.5), -math.inf, -3 * math.log(2.5)], dtype=F64)
    )
    s = q.sample((1000,))
    assert s.shape == (1000, 3) and (s >= -2).all() and (s < 0.5).all()
    for low, high in [(1.0, 1.0), (0.0, math.inf), (math.nan, 1.0)]:
        with pytest.raises(ValueError, match="low < high"):
            BoxUniform(2, low=low, high=high)


def test_paper_parameters_are_the_maps_parameters():
    """The paper's u (with w·u > -1), alpha > 0 and beta > -alpha reach the transform as given,
    including u with w·u near the limit -1 and a radial contraction with beta near -alpha."""
    w = [2.0, -0.5]
    with pytest.raises(ValueError, match="w·u > -1 to be invertible"):
        planar_layer([-0.45, 0.3], w, 0.0)  # w·u = -1.05
    with pytest.raises(ValueError, match="w must be nonzero"):
        planar_layer([1.0, 0.0], [0.0, 0.0], 0.0)
    for u in ([-0.45, 0.19], [-0.4, 0.2], [3.0, 1.0], [0.0, 0.0]):  # w·u = -0.995, ...
        t = planar_layer(u, w, 0.7)()
        torch.testing.assert_close(t.u_hat, torch.tensor(u, dtype=F64), rtol=0, atol=1e-12)
        z = torch.tensor([[0.3, -0.2]], dtype=F64)
        expected = z + torch.tensor(u, dtype=F64) * torch.tanh(z @ torch.tensor(w, dtype=F64) + 0.7)
        torch.testing.assert_close(t(z), expected, rtol=0, atol=1e-12)
    t = radial_layer([0.5, -1.0], 0.3, -0.299)()
    torch.testing.assert_close(t.alpha, torch.tensor(0.3, dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(t.beta, torch.tensor(-0.299, dtype=F64), rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="beta > -alpha"):
        radial_layer([0.0, 0.0], 0.3, -0.3)
    with pytest.raises(ValueError, match="alpha must be positive"):
        radial_layer([0.0, 0.0], 0.0, 1.0)
    with pytest.raises(ValueError, match="z0"):
        radial_layer([0.0, 0.0, 0.0], 0.5, 1.0)


def test_bad_parameter_files_name_what_is_wrong():
    good = random_parameters(2, seed=0)
    with pytest.raises(ValueError, match="at least 3 planar"):
        build_layers(good, 3)
    with pytest.raises(ValueError, match="planar"):
        build_layers({"radial": good["radial"]}, 1)
    bad = json.loads(json.dumps(good))
    bad["radial"][1]["alpha"] = "big"
    with pytest.raises(ValueError, match="radial layer 1: 'alpha'"):
        build_layers(bad, 2)
    bad["radial"][1] = {"z0": [0, 0], "alpha": 1.0, "beta": float("nan")}
    with pytest.raises(ValueError, match="'beta' must be a finite number"):
        build_layers(bad, 2)


def test_show_command_writes_the_figure_and_its_parameters(tmp_path, capsys):
    out = tmp_path / "show"
    args = ["show", "--lengths", "1,2", "--resolution", "48", "--seed", "4"]
    assert main([*args, "--out", str(out)]) == 0
    assert (out / "figure1.png").stat().st_size > 10_000
    summary = json.loads((out / "figure1.json").read_text())
    assert summary["config"]["lengths"] == [1, 2] and summary["config"]["seed"] == 4
    assert len(summary["parameters"]["planar"]) == len(summary["parameters"]["radial"]) == 2
    panels = summary["panels"]
    assert [(p["base"], p["family"], p["K"]) for p in panels[:3]] == [
        ("gaussian", "planar", 0),
        ("gaussian", "planar", 1),
        ("gaussian", "planar", 2),
    ]
    assert len(panels) == 12
    for p in panels:  # a coarse grid: sharp edges cost a few per cent at 48 x 48
        assert p["integral"] == pytest.approx(1.0, abs=0.05), p
    assert "grid integrals within" in capsys.readouterr().out
    # the written parameters reproduce the run exactly
    again = tmp_path / "again"
    params = ["--params", str(out / "figure1.json")]
    assert (
        main(["show", "--lengths", "1,2", "--resolution", "48", *params, "--out", str(again)]) == 0
    )
    redo = json.loads((again / "figure1.json").read_text())
    assert [p["integral"] for p in redo["panels"]] == pytest.approx(
        [p["integral"] for p in panels], rel=1e-12
    )


def test_show_command_refuses_bad_settings(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"planar": [{"u": [0, -1], "w": [0, 2], "b": 0}], "radial": []}))
    assert main(["show", "--lengths", "1", "--params", str(bad), "--out", str(tmp_path)]) == 2
    assert "planar layer 0" in capsys.readouterr().err
    assert main(["show", "--lengths", "0,2", "--out", str(tmp_path)]) == 2
    assert "flow length" in capsys.readouterr().err
    assert main(["show", "--params", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "figure1.png").exists()
    with pytest.raises(ValueError, match="half-width"):
        ShowConfig(half_width=-1.0).validate()
