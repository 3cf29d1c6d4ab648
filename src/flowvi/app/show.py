r"""Rezende & Mohamed (2015), Figure 1: what K planar or radial layers do to a density.

``flowvi show`` pushes a unit Gaussian and a uniform box through K = 1, 2, 10 planar and radial
layers in two dimensions and draws each density *exactly*: ``exp(log_prob)`` on a grid, every
grid point inverted through the layers (no sampling, no kernel density estimate). The layers of
the K = 2 panel are the first two of the K = 10 panel, and both bases go through the same
layers, so a row shows one flow growing.

The uniform base has bounded support: a point whose inverse lands outside the box has
``log_prob = -inf`` (zero density), so the drawn density is zero outside the image of the box,
which a flow maps onto a bounded region with a sharp edge.

Parameters are the paper's (their Section 4.1), not flowvi's raw ones: a planar layer
:math:`f(z) = z + u \tanh(w^\top z + b)` is given by ``u``, ``w``, ``b`` with
:math:`w^\top u > -1`; a radial layer :math:`f(z) = z + \beta (z - z_0) / (\alpha + \|z - z_0\|)`
by ``z0``, ``alpha > 0``, ``beta > -alpha``. They are converted to raw parameters that
:class:`flowvi.flows.Planar` and :class:`flowvi.flows.Radial` map back to exactly these values.
A parameter file (JSON) has the form written to ``figure1.json``::

    {"planar": [{"u": [1.0, 0.5], "w": [3.0, 0.0], "b": 0.0}, ...],
     "radial": [{"z0": [0.2, -0.1], "alpha": 0.5, "beta": 1.5}, ...]}

with at least ``max(lengths)`` layers per family (the first K are used).

Each panel's grid integral :math:`\sum q \,\Delta A` over its row's box is recorded; a correct
density gives 1 (the uniform base: the whole image of the box lies inside the row's box) or at
least the Gaussian mass of the disc of radius :data:`GAUSS_RADIUS` (whose image the box
contains), :math:`1 - e^{-R^2/2}`, less the midpoint rule's error at sharp edges.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowvi._checks import check_choice, check_dim
from flowvi.app.options import command, given, output
from flowvi.distributions import BoxUniform, StandardNormal
from flowvi.flows import NormalizingFlow, Planar, Radial
from flowvi.io import check_output, write_json
from flowvi.metrics import cell_area, grid
from flowvi.plot import flow_panels_figure

FAMILIES = ("planar", "radial")
FIGURE_BASES = ("gaussian", "uniform")
GAUSS_RADIUS = 4.0
"""The Gaussian panels' box holds the image of the disc of this radius: mass 1 - e^{-8}."""
Box = tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class ShowConfig:
    """Settings of ``flowvi show``; saved in ``figure1.json``.

    ``params``: a JSON file of layer parameters (module docstring), or ``None`` to draw them
    from ``seed``. ``half_width``: the uniform base is on ``[-half_width, half_width]²``.
    ``resolution``: grid points per side of each panel.
    """

    lengths: tuple[int, ...] = field(
        default=(1, 2, 10), metadata={"help": "flow lengths K of the columns, e.g. 1,2,10"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random layer parameters"})
    params: str | None = field(
        default=None,
        metadata={
            "help": "JSON file of layer parameters, e.g. a figure1.json "
            '({"planar": [{"u", "w", "b"}, ...], "radial": [{"z0", "alpha", "beta"}, ...]})'
        },
    )
    half_width: float = field(default=1.0, metadata={"help": "the uniform base is on [-h, h]²"})
    resolution: int = field(default=300, metadata={"help": "grid points per side of each panel"})

    def validate(self) -> None:
        """Raises ``ValueError`` for an empty or non-positive ``lengths``, a non-positive
        ``resolution`` or ``half_width``, or a missing parameter file."""
        if not self.lengths:
            raise ValueError("--lengths needs at least one flow length K")
        for k in self.lengths:
            check_dim(k, "every flow length K in --lengths")
        check_dim(self.resolution, "--resolution")
        if not (math.isfinite(self.half_width) and self.half_width > 0):
            raise ValueError(f"--half-width must be positive and finite, got {self.half_width}")
        if self.params is not None and not Path(self.params).is_file():
            raise ValueError(f"parameter file {self.params} does not exist")


def random_parameters(k: int, *, seed: int = 0) -> dict[str, list[dict]]:
    """``k`` planar and ``k`` radial layers' parameters (paper form) drawn from ``seed``.

    Planar: ``w`` of norm 1.5-4 in a uniform direction, its hyperplane through a point
    :math:`\\mathcal N(0, 0.5^2 I)`, ``u`` with :math:`w^\\top u` in (-0.95, 1.5) (a contraction
    towards the hyperplane or an expansion away from it; -1 is the singular limit) plus a
    shear along the hyperplane of up to 1. Radial: ``z0`` from
    :math:`\\mathcal N(0, 0.5^2 I)`, ``alpha`` in 0.2-1, ``beta`` in ``alpha`` × (-0.8, 1.2):
    contractions towards ``z0`` and expansions away from it.
    """
    check_dim(k, "number of layers")
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    def direction() -> Tensor:
        angle = uniform(0.0, 2 * math.pi)
        return torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)

    planar = []
    for _ in range(k):
        norm = uniform(1.5, 4.0)
        w = norm * direction()
        along = torch.stack([-w[1], w[0]]) / norm  # unit vector along the hyperplane
        through = 0.5 * torch.randn(2, generator=g, dtype=torch.float64)
        c = uniform(-0.95, 1.5)  # w·u: contraction towards the hyperplane (< 0) or expansion
        u = c / norm**2 * w + uniform(-1.0, 1.0) * along
        planar.append({"u": u.tolist(), "w": w.tolist(), "b": -float(w @ through)})
    radial = []
    for _ in range(k):
        z0 = 0.5 * torch.randn(2, generator=g, dtype=torch.float64)
        alpha = uniform(0.2, 1.0)
        radial.append({"z0": z0.tolist(), "alpha": alpha, "beta": alpha * uniform(-0.8, 1.2)})
    return {"planar": planar, "radial": radial}


def _softplus_inverse(s: float) -> float:
    """The ``x`` with ``softplus(x) = ln(1 + e^x) = s`` for ``s > 0``: ``s + ln(1 - e^{-s})``."""
    return s + math.log(-math.expm1(-s))


def _vector(value: object, key: str, where: str) -> Tensor:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(x, int | float) and math.isfinite(x) for x in value)
    ):
        raise ValueError(f"{where}: {key!r} must be a list of two finite numbers, got {value!r}")
    return torch.tensor(value, dtype=torch.float64)


def _scalar(value: object, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def planar_layer(
    u: Sequence[float], w: Sequence[float], b: float, *, where: str = "planar"
) -> Planar:
    r"""A float64 :class:`flowvi.flows.Planar` on :math:`\mathbb R^2` whose map is exactly
    :math:`z + u \tanh(w^\top z + b)` (the paper's ``u``, i.e. flowvi's :math:`\hat u`).

    Raises:
        ValueError: if a value is not finite, a vector not of length 2, :math:`w = 0`, or
            :math:`w^\top u \le -1` (not invertible).
    """
    u_hat, w_t, b = _vector(u, "u", where), _vector(w, "w", where), _scalar(b, "b", where)
    w_sq = float(w_t @ w_t)
    c = float(w_t @ u_hat)
    if w_sq == 0:
        raise ValueError(f"{where}: w must be nonzero")
    if not c > -1:
        raise ValueError(f"{where}: the planar map needs w·u > -1 to be invertible, got {c:.6g}")
    # Planar's û = u + (softplus(w·u) - 1 - w·u) w/‖w‖² equals the given u when the raw u has
    # w·u = softplus⁻¹(1 + c): add (softplus⁻¹(1 + c) - c) w/‖w‖² to the given u.
    raw_u = u_hat + (_softplus_inverse(1 + c) - c) / w_sq * w_t
    layer = Planar(2).double()
    with torch.no_grad():
        layer.params["u"].copy_(raw_u)
        layer.params["w"].copy_(w_t)
        layer.params["b"].fill_(b)
    return layer


def radial_layer(
    z0: Sequence[float], alpha: float, beta: float, *, where: str = "radial"
) -> Radial:
    r"""A float64 :class:`flowvi.flows.Radial` on :math:`\mathbb R^2` whose map is exactly
    :math:`z + \beta (z - z_0) / (\alpha + \|z - z_0\|)`.

    Raises:
        ValueError: for a non-finite value, a ``z0`` not of length 2, or unless
            :math:`\alpha > 0` and :math:`\beta > -\alpha` (invertibility).
    """
    z0_t = _vector(z0, "z0", where)
    alpha, beta = _scalar(alpha, "alpha", where), _scalar(beta, "beta", where)
    if not alpha > 0:
        raise ValueError(f"{where}: alpha must be positive, got {alpha}")
    if not beta > -alpha:
        raise ValueError(f"{where}: the radial map needs beta > -alpha, got {beta} <= {-alpha}")
    layer = Radial(2).double()
    with torch.no_grad():
        layer.params["z0"].copy_(z0_t)
        layer.params["alpha"].fill_(_softplus_inverse(alpha))
        layer.params["beta"].fill_(_softplus_inverse(beta + alpha))
    return layer


def build_layers(params: dict, k: int) -> dict[str, list[nn.Module]]:
    """The first ``k`` planar and radial layers of ``params`` (module docstring's form).

    Raises:
        ValueError: if a family is missing, has fewer than ``k`` layers, or a layer's
            parameters are malformed or not invertible (the message names the layer).
    """
    if not isinstance(params, dict):
        raise ValueError(f"layer parameters must be a JSON object, got {type(params).__name__}")
    out = {}
    for family in FAMILIES:
        entries = params.get(family)
        if not isinstance(entries, list) or len(entries) < k:
            got = len(entries) if isinstance(entries, list) else entries
            raise ValueError(f"parameters need a list of at least {k} {family} layers, got {got}")
        layers = []
        for i, entry in enumerate(entries[:k]):
            where = f"{family} layer {i}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object of parameters, got {entry!r}")
            if family == "planar":
                layers.append(
                    planar_layer(entry.get("u"), entry.get("w"), entry.get("b"), where=where)
                )
            else:
                layers.append(
                    radial_layer(
                        entry.get("z0"), entry.get("alpha"), entry.get("beta"), where=where
                    )
                )
        out[family] = layers
    return out


def base_module(name: str, half_width: float = 1.0) -> nn.Module:
    """``gaussian``: :math:`\\mathcal N(0, I_2)`; ``uniform``: the box ``[-h, h]²``; float64.

    Raises:
        ValueError: for another ``name``, or ``h`` not positive and finite.
    """
    check_choice(name, FIGURE_BASES, "base")
    if name == "gaussian":
        return StandardNormal(2).double()
    return BoxUniform(2, low=-half_width, high=half_width).double()


def boundary(name: str, half_width: float = 1.0, n: int = 4000) -> Tensor:
    """Points along the boundary of the base's region: the box's edges (uniform) or the circle
    of radius :data:`GAUSS_RADIUS` (Gaussian), shape ``(n, 2)``, float64.

    A flow is a homeomorphism of the plane, so it maps the region onto the region bounded by
    the image of this curve: the image's bounding box is that of the mapped curve.
    """
    check_choice(name, FIGURE_BASES, "base")
    if name == "gaussian":
        angle = torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
        return GAUSS_RADIUS * torch.stack([angle.cos(), angle.sin()], -1)
    h = half_width
    side = -h + 2 * h * torch.linspace(0, 1, n // 4 + 1, dtype=torch.float64)[:-1]
    ones = torch.full_like(side, h)
    return torch.cat(
        [
            torch.stack([side, -ones], -1),
            torch.stack([ones, side], -1),
            torch.stack([-side, ones], -1),
            torch.stack([-ones, -side], -1),
        ]
    )


def bounds(points: Tensor) -> Box:
    """The bounding box ``((x0, x1), (y0, y1))`` of ``points: (n, 2)``."""
    lo, hi = points.detach().amin(0), points.detach().amax(0)
    return ((float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1])))


def square_box(boxes: Sequence[Box], pad: float = 0.05) -> Box:
    """The smallest square holding every box, grown by ``pad`` of its side on each side."""
    x0 = min(b[0][0] for b in boxes)
    x1 = max(b[0][1] for b in boxes)
    y0 = min(b[1][0] for b in boxes)
    y1 = max(b[1][1] for b in boxes)
    half = 0.5 * max(x1 - x0, y1 - y0) * (1 + 2 * pad)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return ((cx - half, cx + half), (cy - half, cy + half))


@torch.no_grad()
def density_grid(
    log_prob: Callable[[Tensor], Tensor], box: Box, n: int, *, chunk: int = 65_536
) -> Tensor:
    """``exp(log_prob)`` at the ``n × n`` cell centres of ``box`` (see
    :func:`flowvi.metrics.grid`), an ``(n, n)`` float64 image with rows along the second axis;
    zero where ``log_prob`` is ``-inf`` (outside a bounded support)."""
    points, _, _ = grid(box, n)
    values = torch.cat([log_prob(c) for c in points.split(chunk)])
    return values.exp().reshape(n, n)


@torch.no_grad()
def figure1(
    params: dict,
    *,
    lengths: Sequence[int] = (1, 2, 10),
    resolution: int = 300,
    half_width: float = 1.0,
) -> list[dict]:
    """The panels of Figure 1: one row per (base, family), columns base then each K.

    Returns:
        rows ``{"base", "family", "box", "panels": [{"K", "density": (n, n), "integral",
        "mass_in_box"}]}``; ``K = 0`` is the base itself; ``box`` the row's square
        (``((x0, x1), (y0, y1))``), holding the image of the base's region for every K;
        ``integral`` the midpoint-rule integral of the density over it; ``mass_in_box`` a
        lower bound on the exact integral (1 for the uniform base, 1 - e^{-8} for the
        Gaussian).

    Raises:
        ValueError: for bad ``params`` (see :func:`build_layers`).
    """
    layers = build_layers(params, max(lengths))
    rows = []
    for base in FIGURE_BASES:
        curve = boundary(base, half_width)
        for family in FAMILIES:
            flows = [
                NormalizingFlow(base_module(base, half_width), layers[family][:k])
                for k in (0, *lengths)
            ]
            box = square_box([bounds(f().flow(curve)) for f in flows])
            area = cell_area(box, resolution)
            mass = 1.0 if base == "uniform" else -math.expm1(-0.5 * GAUSS_RADIUS**2)
            panels = []
            for k, flow in zip((0, *lengths), flows, strict=True):
                # K = 0: the base itself (a flow without layers has the base's support, and
                # torch's argument validation refuses points outside it instead of scoring -inf)
                q = density_grid(flow.log_prob if k else flow.base().log_prob, box, resolution)
                panels.append(
                    {"K": k, "density": q, "integral": float(q.sum()) * area, "mass_in_box": mass}
                )
            rows.append({"base": base, "family": family, "box": box, "panels": panels})
    return rows


def load_parameters(path: str | Path) -> dict:
    """Read a parameter file (JSON): the parameters themselves, or a ``figure1.json`` (its
    ``parameters`` entry). Raises ``ValueError`` if it is not valid JSON."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"parameter file {path} is not valid JSON: {error}") from None
    if isinstance(data, dict) and "parameters" in data:
        return data["parameters"]
    return data


def run_show(config: ShowConfig, directory: str | Path) -> dict:
    """Draw Figure 1 into ``directory``: ``figure1.png`` and ``figure1.json`` (the settings,
    the parameters used, in the parameter-file form, and each panel's grid integral).

    Raises:
        ValueError: for bad settings or parameters.
    """
    config.validate()
    k = max(config.lengths)
    if config.params is None:
        params = random_parameters(k, seed=config.seed)
    else:
        params = load_parameters(config.params)
    build_layers(params, k)  # refuse bad parameters before any work
    params = {family: params[family][:k] for family in FAMILIES}
    rows = figure1(
        params,
        lengths=config.lengths,
        resolution=config.resolution,
        half_width=config.half_width,
    )
    directory = Path(directory)
    labels = {"gaussian": "unit Gaussian", "uniform": f"uniform [±{config.half_width:g}]²"}
    flow_panels_figure(
        [[panel["density"] for panel in row["panels"]] for row in rows],
        [row["box"] for row in rows],
        directory / "figure1.png",
        row_labels=[f"{labels[row['base']]}, {row['family']}" for row in rows],
        column_labels=["base q0", *(f"K = {k}" for k in config.lengths)],
    )
    summary = {
        "config": asdict(config),
        "parameters": params,
        "panels": [
            {
                "base": row["base"],
                "family": row["family"],
                "K": panel["K"],
                "box": row["box"],
                "grid": config.resolution,
                "integral": panel["integral"],
                "mass_in_box": panel["mass_in_box"],
            }
            for row in rows
            for panel in row["panels"]
        ],
    }
    write_json(directory / "figure1.json", summary)
    return summary


def add_command(commands: Any) -> None:
    """``flowvi show``."""
    command(
        commands,
        "show",
        _show,
        config=ShowConfig,
        out="show",
        quiet=False,
        help="draw what K planar and radial layers do to a Gaussian and a uniform box (Figure 1)",
        description=(
            "Rezende & Mohamed (2015), Figure 1: the exact density (exp(log_prob) on a grid, "
            "no sampling) of a unit Gaussian and of a uniform box after K planar and radial "
            "layers, with random (--seed) or given (--params) parameters. Writes figure1.png "
            "and figure1.json (settings, the parameters used, in --params form, and each "
            "panel's grid integral, 1 for a correct density)."
        ),
    )


def _show(args: argparse.Namespace) -> int:
    config = ShowConfig(**given(args, ShowConfig))
    directory = check_output(output(args, "show"))
    summary = run_show(config, directory)
    worst = max(abs(p["integral"] - 1) for p in summary["panels"])
    print(f"{len(summary['panels'])} panels, grid integrals within {worst:.1e} of 1 -> {directory}")
    return 0
