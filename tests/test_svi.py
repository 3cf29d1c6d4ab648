"""SVI for the unit-variance mixture: unbiased intermediate parameters whose mean is the CAVI
global step, CAVI's optimum as the fixed point, a full-batch unit step as a CAVI sweep, and
convergence to CAVI's optimum from minibatches."""

import math

import pytest
import torch

from flowvi.inference.cavi import (
    cavi,
    initial_responsibilities,
    mixture_elbo,
    simulate,
    update_globals,
)
from flowvi.inference.cavi import update_locals as locals_of
from flowvi.inference.svi import (
    intermediate_params,
    natural_params,
    starting_params,
    step_size,
    svi,
)

F64 = torch.float64


def data(n=300, k=3, d=2, prior_std=5.0, seed=0):
    return simulate(n, k, d, prior_std=prior_std, seed=seed).x


def partition_mean(x, means, variances, *, batch, prior_std, seed=0):
    """The mean of λ̂ over the minibatches of one random partition of the data."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    parts = [
        intermediate_params(x[idx], means, variances, n=len(x), prior_std=prior_std)
        for idx in order.split(batch)
    ]
    return tuple(torch.stack(p).mean(0) for p in zip(*parts, strict=True))


def test_intermediate_parameters_average_to_the_cavi_global_step():
    x = data()
    g = torch.Generator().manual_seed(1)
    means, variances = 3 * torch.randn(3, 2, generator=g, dtype=F64), torch.rand(3, dtype=F64)
    eta, precision = partition_mean(x, means, variances, batch=30, prior_std=5.0)
    step = update_globals(x, locals_of(x, means, variances).exp(), prior_std=5.0)
    eta_cavi, precision_cavi = natural_params(*step)
    assert torch.allclose(eta, eta_cavi, atol=1e-11, rtol=0)
    assert torch.allclose(precision, precision_cavi, atol=1e-11, rtol=0)


def test_cavi_optimum_is_the_fixed_point_of_svi():
    x = data(seed=2)
    fit = cavi(x, 3, prior_std=5.0, tol=1e-15, max_iter=500)
    eta_star, precision_star = natural_params(fit.means, fit.variances)
    eta, precision = partition_mean(x, fit.means, fit.variances, batch=20, prior_std=5.0, seed=3)
    # E[λ̂] − λ, the natural gradient, vanishes at CAVI's optimum
    assert (eta - eta_star).abs().max() < 1e-8 * eta_star.abs().max()
    assert (precision - precision_star).abs().max() < 1e-8 * precision_star.max()


def test_a_full_batch_unit_step_is_a_cavi_sweep():
    x = data(n=120, seed=4)
    g = torch.Generator().manual_seed(0)
    resp0 = initial_responsibilities(x, 3, init="random", generator=g)  # every row weighted
    one = svi(x, 3, prior_std=5.0, batch_size=120, steps=1, tau=0.0, kappa=1.0, init=resp0)
    sweep = cavi(x, 3, prior_std=5.0, init=resp0, tol=0, max_iter=1)
    assert torch.allclose(one.means, sweep.means, atol=1e-12, rtol=0)
    assert torch.allclose(one.variances, sweep.variances, atol=1e-14, rtol=0)


def test_a_start_at_k_points_is_scaled_like_a_minibatch_of_k():
    x = data(n=200, seed=7)
    resp0 = initial_responsibilities(x, 3, generator=torch.Generator().manual_seed(0))
    eta, precision = starting_params(x, resp0, prior_std=5.0)
    points = x[resp0.argmax(0)]  # the three seed points
    assert torch.allclose(precision, torch.full((3,), 200 / 3 + 1 / 25, dtype=F64), rtol=1e-14)
    assert torch.allclose(eta, points * 200 / 3, rtol=1e-14)
    dense = resp0 + 0.1
    dense = dense / dense.sum(1, keepdim=True)
    eta, precision = starting_params(x, dense, prior_std=5.0)  # all rows: CAVI's global step
    eta_cavi, precision_cavi = natural_params(*update_globals(x, dense, prior_std=5.0))
    assert torch.allclose(eta, eta_cavi, rtol=1e-13)
    assert torch.allclose(precision, precision_cavi, rtol=1e-13)


def test_svi_from_minibatches_reaches_the_cavi_optimum():
    x = data(n=400, seed=5)
    best = cavi(x, 3, prior_std=5.0, restarts=3, tol=1e-12)
    fit = svi(x, 3, prior_std=5.0, batch_size=20, steps=2000, tau=1.0, kappa=0.7, seed=1)
    assert 0 <= best.elbo_per_datum - fit.elbo_per_datum < 1e-5  # CAVI's is the maximum
    distance = torch.cdist(fit.means, best.means)
    assert distance.min(1).values.max() < 0.01
    assert sorted(distance.argmin(1).tolist()) == [0, 1, 2]
    # the trace climbs from the start to within 1e-5 nats per point of CAVI
    elbos = fit.trace[:, 3] / len(x)
    assert elbos[0] < best.elbo_per_datum - 0.01 and elbos[-1] > best.elbo_per_datum - 1e-5


def test_trace_records_steps_examples_and_the_full_data_elbo():
    x = data(n=200, seed=6)
    fit = svi(x, 3, prior_std=5.0, batch_size=16, steps=300, evaluations=6, tau=2.0, kappa=0.8)
    steps, examples, rho = fit.trace[:, 0], fit.trace[:, 1], fit.trace[:, 2]
    assert steps[0] == 0 and steps[-1] == 300 and (steps.diff() > 0).all()
    assert torch.equal(examples, steps * 16) and fit.examples == 4800
    assert torch.allclose(rho[1:], (steps[1:] + 2.0) ** -0.8, rtol=1e-14)
    direct = mixture_elbo(x, fit.means, fit.variances, prior_std=5.0)
    assert abs(float(direct) - fit.elbo) < 1e-9 * abs(fit.elbo)
    assert step_size(3, tau=1.0, kappa=0.5 + 0.25) == 4**-0.75


def test_invalid_settings_are_refused():
    x = data(n=50)
    for kwargs, match in [
        ({"kappa": 0.5}, "kappa"),
        ({"kappa": 1.2}, "kappa"),
        ({"tau": -1.0}, "tau"),
        ({"batch_size": 51}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"init": "kmeans"}, "init"),
        ({"evaluations": -1}, "evaluations"),
        ({"prior_std": math.inf}, "prior_std"),
    ]:
        with pytest.raises(ValueError, match=match):
            svi(x, 2, steps=5, **{"batch_size": 10, **kwargs})
