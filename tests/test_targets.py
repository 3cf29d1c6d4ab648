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
