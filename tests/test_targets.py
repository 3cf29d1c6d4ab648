"""Targets: U1–U4 against hand computation, confinement, normalized targets, user targets."""

from __future__ import annotations

import math

import pytest
import torch

import flowvi
from flowvi.metrics import log_normalizer
from flowvi.targets import box_penalty

POINTS = [(0.0, 0.0), (1.3, -0.7), (-2.1, 0.4), (2.5, 1.9)]


def _w1(z1):
    return math.sin(2 * math.pi * z1 / 4)


def _u_by_hand(name, z1, z2):
    if name == "U1":
        r = math.hypot(z1, z2)
        a = math.exp(-0.5 * ((z1 - 2) / 0.6) ** 2)
        b = math.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
        return 0.5 * ((r - 2) / 0.4) ** 2 - math.log(a + b)
    if name == "U2":
        return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2
    if name == "U3":
        w2 = 3 * math.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
        a = math.exp(-0.5 * ((z2 - _w1(z1)) / 0.35) ** 2)
        b = math.exp(-0.5 * ((z2 - _w1(z1) + w2) / 0.35) ** 2)
        return -math.log(a + b)
    w3 = 3 / (1 + math.exp(-(z1 - 1) / 0.3))
    a = math.exp(-0.5 * ((z2 - _w1(z1)) / 0.4) ** 2)
    b = math.exp(-0.5 * ((z2 - _w1(z1) + w3) / 0.35) ** 2)
    return -math.log(a + b)


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
@pytest.mark.parametrize("confine", [False, None])
def test_energies_match_table_1(name, confine):
    target = flowvi.targets.get(name, confine=confine)
    z = torch.tensor(POINTS, dtype=torch.float64)
    expected = torch.tensor([-_u_by_hand(name, *p) for p in POINTS], dtype=torch.float64)
    torch.testing.assert_close(target.log_prob(z), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(target.energy(z), -expected, rtol=1e-12, atol=1e-12)


def test_confinement_defaults_and_wall():
    assert flowvi.targets.get("U1").confine is False
    for name in ["U2", "U3", "U4"]:
        confined, free = flowvi.targets.get(name), flowvi.targets.get(name, confine=False)
        assert confined.confine and confined.normalizable and not free.normalizable
        outside = torch.tensor([[4.3, 0.0], [-5.0, 1.0], [0.0, -4.2]], dtype=torch.float64)
        gap = free.log_prob(outside) - confined.log_prob(outside)
        torch.testing.assert_close(gap, box_penalty(outside), rtol=0, atol=1e-12)
        assert (gap > 0).all()
    wall = box_penalty(torch.tensor([[4.1, 0.0]], dtype=torch.float64)).item()
    assert wall == pytest.approx(0.5 * (0.1 / 0.05) ** 2, rel=1e-12)
    assert box_penalty(torch.tensor([[3.99, -3.99]])).item() == 0.0


def test_log_normalizer_needs_a_normalizable_target():
    with pytest.raises(ValueError, match="not normalizable"):
        log_normalizer(flowvi.targets.get("U2", confine=False))


@pytest.mark.parametrize("name", ["gaussian", "mixture", "banana"])
def test_normalized_targets_integrate_to_one(name):
    target = flowvi.targets.get(name).double()
    assert target.log_normalizer == 0.0
    assert log_normalizer(target, n=800) == pytest.approx(0.0, abs=1e-3)


def test_gaussian_target_any_dimension():
    target = flowvi.targets.get("gaussian", dim=4).double()
    z = torch.randn(6, 4, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(target.mean, target.cov).log_prob(z)
    torch.testing.assert_close(target.log_prob(z), exact)


def test_unknown_name_and_wrong_dimension():
    with pytest.raises(ValueError, match="U1"):
        flowvi.targets.get("U5")
    with pytest.raises(ValueError, match="2-dimensional"):
        flowvi.targets.get("U1", dim=3)
    with pytest.raises(ValueError, match="expected z of shape"):
        flowvi.targets.get("U1").log_prob(torch.zeros(5, 3))


@pytest.mark.parametrize("dim", [-3, 0, 2.5, True, "2"])
@pytest.mark.parametrize("name", ["gaussian", "U1", "tests_userdens_unused:fn"])
def test_a_dimension_that_is_not_a_positive_integer_is_refused_by_name(name, dim):
    with pytest.raises(ValueError, match=rf"dim must be a positive integer, got {dim!r}"):
        flowvi.targets.get(name, dim=dim)


def test_user_targets(tmp_path, monkeypatch):
    (tmp_path / "userdens.py").write_text(
        "import torch\n"
        "def good(z):\n"
        "    return -0.5 * (z ** 2).sum(-1)\n"
        "def two_d_only(z):\n"
        "    a, b = z.unbind(-1)\n"
        "    return -(a ** 2 + b ** 2)\n"
        "not_callable = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    target = flowvi.targets.get("userdens:good", dim=2)
    assert target.dim == 2
    torch.testing.assert_close(target.log_prob(torch.ones(3, 2)), torch.full((3,), -1.0))
    with pytest.raises(ValueError, match="dimension"):
        flowvi.targets.get("userdens:good")
    with pytest.raises(ValueError, match="--dim 3"):
        flowvi.targets.get("userdens:two_d_only", dim=3)
    with pytest.raises(ValueError, match="not callable"):
        flowvi.targets.get("userdens:not_callable", dim=2)
    with pytest.raises(ValueError, match="cannot import"):
        flowvi.targets.get("userdens:missing", dim=2)


def _minus_u(name, points):
    return torch.tensor([-_u_by_hand(name, *map(float, p)) for p in points], dtype=torch.float64)


def _grid_points(lo, hi, n):
    xs = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.cartesian_prod(xs, xs)


@pytest.mark.parametrize("name", ["U2", "U3", "U4"])
def test_default_confinement_is_exact_inside_the_box_and_lower_outside(name):
    target = flowvi.targets.get(name)  # confined by default
    inside = _grid_points(-4.0, 4.0, 33)  # edges included
    expected = _minus_u(name, inside)
    torch.testing.assert_close(target.log_prob(inside), expected, rtol=1e-12, atol=1e-10)
    outside = torch.tensor(
        [[4.01, 0.0], [-4.5, 1.0], [0.3, 4.2], [-1.0, -6.0], [5.0, 5.0], [-4.3, -4.3]],
        dtype=torch.float64,
    )
    free = _minus_u(name, outside)
    confined = target.log_prob(outside)
    assert (confined < free).all()
    # further out, lower still (relative to the unconfined energy)
    far = outside * 1.2
    free_far = _minus_u(name, far)
    assert ((free_far - target.log_prob(far)) > (free - confined)).all()


def test_u1_is_unconfined_by_default():
    target = flowvi.targets.get("U1")
    points = [(5.0, 0.0), (-4.5, 3.0), (0.5, -6.0), (1.0, 1.0)]
    z = torch.tensor(points, dtype=torch.float64)
    expected = torch.tensor([-_u_by_hand("U1", *p) for p in points], dtype=torch.float64)
    torch.testing.assert_close(target.log_prob(z), expected, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("name", ["gaussian", "mixture", "banana"])
def test_normalized_targets_by_midpoint_rule_over_their_box(name):
    target = flowvi.targets.get(name)
    (x0, x1), (y0, y1) = target.box
    n = 800
    xs = x0 + (torch.arange(n, dtype=torch.float64) + 0.5) * (x1 - x0) / n
    ys = y0 + (torch.arange(n, dtype=torch.float64) + 0.5) * (y1 - y0) / n
    points = torch.cartesian_prod(xs, ys)
    log_p = target.log_prob(points)
    assert log_p.dtype == torch.float64
    log_z = torch.logsumexp(log_p, 0) + math.log((x1 - x0) * (y1 - y0) / n**2)
    assert log_z.item() == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("name", ["nope", "U0", "gauss"])
def test_unknown_target_lists_the_valid_names(name):
    with pytest.raises(ValueError, match="U1") as info:
        flowvi.targets.get(name)
    assert "banana" in str(info.value)


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4", "gaussian", "mixture", "banana"])
def test_wrong_last_dimension_raises(name):
    target = flowvi.targets.get(name)
    for d in (1, 3):
        with pytest.raises(ValueError):
            target.log_prob(torch.zeros(4, d, dtype=torch.float64))
    if name != "gaussian":  # the Gaussian target is built in any dimension
        with pytest.raises(ValueError):
            flowvi.targets.get(name, dim=3)


def test_user_target_values_and_wrong_dimension(tmp_path, monkeypatch):
    (tmp_path / "mydens.py").write_text(
        "def fn(z):\n    a, b = z.unbind(-1)\n    return -0.5 * (a ** 2 + 4 * b ** 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    target = flowvi.targets.get("mydens:fn", dim=2)
    z = torch.tensor([[1.0, 0.5], [-2.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(target.log_prob(z), torch.tensor([-1.0, -4.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        flowvi.targets.get("mydens:fn")
    with pytest.raises(ValueError):
        flowvi.targets.get("mydens:fn", dim=3)
    with pytest.raises(ValueError):
        target.log_prob(torch.zeros(2, 3, dtype=torch.float64))


def test_normalized_targets_by_hand():
    """Densities of gaussian (default 2-D), mixture and banana from their formulas, with math."""
    points = [(0.0, 0.0), (2.0, 2.0), (-1.5, 0.7), (1.2, -2.3)]
    z = torch.tensor(points, dtype=torch.float64)

    def gaussian(x, y):  # mean (1, -1), unit variances, correlation 0.8
        a, b, rho = x - 1, y + 1, 0.8
        quad = (a * a - 2 * rho * a * b + b * b) / (1 - rho**2)
        return -0.5 * quad - math.log(2 * math.pi * math.sqrt(1 - rho**2))

    def mixture(x, y):
        sd, dens = 0.5, 0.0
        for cx, cy in [(2, 2), (-2, 2), (-2, -2), (2, -2)]:
            dens += 0.25 * math.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / sd**2)
        return math.log(dens / (2 * math.pi * sd**2))

    def banana(x, y):
        sd = 0.5
        return (
            -0.5 * x * x
            - 0.5 * math.log(2 * math.pi)
            - 0.5 * ((y - 0.5 * (x * x - 1)) / sd) ** 2
            - math.log(sd * math.sqrt(2 * math.pi))
        )

    for name, fn in [("gaussian", gaussian), ("mixture", mixture), ("banana", banana)]:
        expected = torch.tensor([fn(*p) for p in points], dtype=torch.float64)
        got = flowvi.targets.get(name).log_prob(z)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10, msg=name)
