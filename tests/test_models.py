"""Bayesian models on real data: log densities by hand, Markov blankets, guides vs NUTS."""

from __future__ import annotations

import math

import pytest
import torch

import flowvi
from flowvi.inference.guides import GUIDES, build_guide, compare, moment_errors, psis_khat
from flowvi.targets import EightSchools, LogisticRegression
from flowvi.targets.bayes import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y


def _normal(x, mean, sd):
    return -0.5 * ((x - mean) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))


def _eight_schools_by_hand(z):
    mu, log_tau, theta_t = z[0], z[1], z[2:]
    tau = math.exp(log_tau)
    total = _normal(mu, 0, 5) + math.log(2 / (math.pi * 5 * (1 + (tau / 5) ** 2))) + log_tau
    for t, y, s in zip(theta_t, EIGHT_SCHOOLS_Y, EIGHT_SCHOOLS_SIGMA, strict=True):
        total += _normal(t, 0, 1) + _normal(y, mu + tau * t, s)
    return total


POINTS = [
    [0.0] * 10,
    [4.4, 0.9, 0.3, 0.1, -0.1, 0.05, -0.2, -0.1, 0.4, 0.1],
    [-3.0, -2.5, 1.5, -1.0, 0.7, 2.2, -0.3, 0.0, -1.8, 0.9],
]


def test_eight_schools_log_joint_by_hand():
    target = flowvi.targets.get("eight-schools")
    z = torch.tensor(POINTS, dtype=torch.float64)
    by_hand = torch.tensor([_eight_schools_by_hand(p) for p in POINTS], dtype=torch.float64)
    torch.testing.assert_close(target.log_prob(z), by_hand, rtol=0, atol=1e-10)
    assert target.log_prob(z.float()).dtype == torch.float32


def test_eight_schools_matches_pymcs_log_density_on_the_nuts_draws():
    pytest.importorskip("arviz")
    import arviz

    draws = EightSchools.reference()
    assert draws.shape == (2000, 10)
    lp = torch.as_tensor(arviz.load_arviz_data("non_centered_eight").sample_stats["lp"].values)
    diff = EightSchools().log_prob(draws) - lp.reshape(-1)
    assert float(diff.abs().max()) < 1e-6  # PyMC keeps every constant: same density


def test_eight_schools_markov_blankets():
    # ∂ local_j / ∂ z_j = ∂ ln p / ∂ z_j: local_j holds every term that involves z_j
    target = EightSchools()
    z = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    (grad_p,) = torch.autograd.grad(target.log_prob(z).sum(), z)
    local = target.local(z)
    for j in range(10):
        (grad_j,) = torch.autograd.grad(local[:, j].sum(), z, retain_graph=True)
        torch.testing.assert_close(grad_j[:, j], grad_p[:, j], rtol=0, atol=1e-10)
    # and the θ̃_j columns involve nothing else
    (cross,) = torch.autograd.grad(local[:, 2].sum(), z, retain_graph=True)
    assert float(cross[:, 3:].abs().max()) == 0


def test_logistic_regression_log_joint_by_hand():
    x = torch.tensor([[0.5, -1.0], [1.5, 2.0], [-0.3, 0.2]], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    target = LogisticRegression(x, y, prior_sd=2.0)
    w = [0.3, -0.7, 1.1]
    total = sum(_normal(v, 0, 2.0) for v in w)
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        eta = w[0] + w[1] * xi[0] + w[2] * xi[1]
        p = 1 / (1 + math.exp(-eta))
        total += math.log(p) if yi == 1 else math.log(1 - p)
    z = torch.tensor([w], dtype=torch.float64)
    assert target.log_prob(z).item() == pytest.approx(total, abs=1e-12)
    with pytest.raises(ValueError, match="0 or 1"):
        LogisticRegression(x, y + 1)
    with pytest.raises(ValueError, match="prior_sd"):
        LogisticRegression(x, y, prior_sd=0.0)


def test_breast_cancer_target_is_standardized_and_registered():
    target = flowvi.targets.get("logistic-regression")
    assert target.dim == 31 and target.features.shape == (569, 30)
    torch.testing.assert_close(target.features.mean(0), torch.zeros(30, dtype=torch.float64))
    torch.testing.assert_close(
        target.features.std(0, correction=0), torch.ones(30, dtype=torch.float64)
    )
    # at w = 0 every label has probability 1/2; the N(0, 1) prior adds 31 ln φ(0)
    expected = -569 * math.log(2) - 31 * 0.5 * math.log(2 * math.pi)
    assert target.log_prob(torch.zeros(1, 31)).item() == pytest.approx(expected, rel=1e-6)


def test_psis_khat_estimates_the_tail_index():
    pytest.importorskip("arviz")
    # w = U^(-k) has a generalized Pareto tail with shape k
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (0.3, 0.8):
        assert psis_khat(-k * torch.log(u)) == pytest.approx(k, abs=0.1)


def test_moment_errors_are_in_reference_sd_units():
    ref = torch.tensor([[0.0, 0.0], [2.0, 4.0], [4.0, 8.0]], dtype=torch.float64)  # sd 2, 4
    draws = torch.tensor([[1.0, 0.0], [3.0, 4.0], [5.0, 8.0]], dtype=torch.float64)
    mean_error, sd_error = moment_errors(draws, ref)
    torch.testing.assert_close(mean_error, torch.tensor([0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(sd_error, torch.zeros(2, dtype=torch.float64))


def test_eight_schools_guide_comparison_on_a_tiny_budget():
    pytest.importorskip("arviz")
    target = EightSchools()
    reference = EightSchools.reference()
    rows = compare(
        target, reference, guides=["mean-field", "iaf"], iters=30, batch_size=32, samples=500
    )
    assert [row["guide"] for row in rows] == ["mean-field", "iaf"]
    for row in rows:
        assert len(row["mean_error"]) == len(row["sd_error"]) == 10
        assert math.isfinite(row["elbo"]) and math.isfinite(row["khat"])
        assert row["max_abs_mean_error"] >= row["rms_mean_error"] >= 0
    with pytest.raises(ValueError, match="unknown guide"):
        compare(target, reference, guides=["laplace"])
    with pytest.raises(ValueError, match="reference"):
        compare(target, reference[:, :3])


def test_every_guide_builds_and_samples():
    for name in GUIDES:
        x, log_q = build_guide(name, 10, hidden=(8,))(None).rsample_and_log_prob((4,))
        assert x.shape == (4, 10) and log_q.shape == (4,)
