"""NormalizingFlow: a normalized density, one-pass densities of samples, torch interop, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Distribution, TransformedDistribution

import flowvi
from flowvi.distributions import DiagonalGaussian, StandardNormal
from flowvi.flows import Affine, Planar, Radial, TriangularAffine

F64 = torch.float64


def _flow(seed=0, base=None):
    """A 2-D flow mixing planar, radial and affine layers with random, mild parameters."""
    torch.manual_seed(seed)
    layers = [Planar(2), Radial(2), Affine(2), Planar(2), Radial(2), TriangularAffine(2), Planar(2)]
    flow = flowvi.NormalizingFlow(base or StandardNormal(2), layers).double()
    with torch.no_grad():
        for layer in flow.layers:
            for key, p in layer.params.items():
                p.normal_(0.0, 0.7 if key in ("u", "w", "z0", "beta") else 0.3)
    return flow


def _midpoint_grid(half_width, n):
    xs = -half_width + (torch.arange(n, dtype=F64) + 0.5) * (2 * half_width / n)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1), (2 * half_width / n) ** 2


@pytest.mark.parametrize("seed", [0, 2])
def test_density_integrates_to_one(seed):
    flow = _flow(seed)
    with torch.no_grad():
        x = flow.sample((20_000,))
        # the mass is well inside the box (mild parameters): without that the test means nothing
        assert x.abs().max() < 4.5
        points, cell = _midpoint_grid(8.0, 600)
        log_q = flow.log_prob(points)
        assert torch.isfinite(log_q).all()
        mass = torch.exp(log_q).sum() * cell
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


def test_density_is_the_change_of_variables_by_hand():
    """ln q(x) = ln N(z0; 0, I) - Σ ln|det J_k|, with z0 from inverting each layer in turn."""
    flow = _flow(2)
    x = torch.randn(10, 2, dtype=F64) * 2
    transforms = [layer() for layer in flow.layers]
    z, total = x, torch.zeros(10, dtype=F64)
    for t in reversed(transforms):
        z = t.inv(z)
        total = total + t.call_and_ladj(z)[1]
    base = -0.5 * (z * z).sum(-1) - math.log(2 * math.pi)
    torch.testing.assert_close(flow.log_prob(x), base - total, rtol=0, atol=1e-10)


def test_rsample_and_log_prob_agrees_with_log_prob():
    flow = _flow(3)
    x, log_q = flow.rsample_and_log_prob((400,))
    assert x.shape == (400, 2) and log_q.shape == (400,)
    assert x.dtype == log_q.dtype == F64
    assert x.requires_grad and log_q.requires_grad
    torch.testing.assert_close(flow.log_prob(x.detach()), log_q.detach(), rtol=0, atol=1e-8)


def test_is_a_torch_distribution_with_the_right_shapes():
    flow = _flow()
    assert isinstance(flow, Distribution) and isinstance(flow, torch.nn.Module)
    assert isinstance(flow(), TransformedDistribution)
    assert flow.event_shape == (2,) and flow.batch_shape == ()
    n, m = 5, 3
    assert flow.sample((n,)).shape == (n, 2)
    assert flow.rsample((n,)).shape == (n, 2)
    x = flow.sample((n, m))
    assert x.shape == (n, m, 2)
    x, log_q = flow.rsample_and_log_prob((n, m))
    assert x.shape == (n, m, 2) and log_q.shape == (n, m)
    # batched log_prob is the per-point log_prob
    flat = flow.log_prob(x.detach().reshape(-1, 2)).reshape(n, m)
    torch.testing.assert_close(flow.log_prob(x.detach()), flat, rtol=0, atol=1e-12)
    torch.testing.assert_close(flat, log_q.detach(), rtol=0, atol=1e-8)
    # the TransformedDistribution the call returns gives the same density
    torch.testing.assert_close(flow().log_prob(x.detach()), flat, rtol=0, atol=1e-12)


def test_log_prob_of_nan_raises():
    flow = _flow()
    with pytest.raises(ValueError):
        flow.log_prob(torch.tensor([[0.0, math.nan]], dtype=F64))
    with pytest.raises(ValueError):
        flow.log_prob(torch.tensor([[math.inf, 0.0]], dtype=F64))


def test_double_and_diagonal_gaussian_base_gradients():
    torch.manual_seed(0)
    flow = flowvi.NormalizingFlow(DiagonalGaussian(2), [Planar(2), Radial(2), Planar(2)])
    flow = flow.double()
    assert all(p.dtype == F64 for p in flow.parameters())
    x, log_q = flow.rsample_and_log_prob((64,))
    assert x.dtype == log_q.dtype == F64
    (log_q.mean() + x.square().mean()).backward()
    for p in (flow.base.loc, flow.base.log_scale):
        assert p.grad is not None and (p.grad != 0).all()
    # the base density is the diagonal Gaussian's: check log_prob by hand with loc, scale set
    with torch.no_grad():
        flow.base.loc.copy_(torch.tensor([0.5, -1.0]))
        flow.base.log_scale.copy_(torch.tensor([0.2, -0.3]))
    layerless = flowvi.NormalizingFlow(flow.base, [])
    z = torch.randn(7, 2, dtype=F64)
    sd = torch.exp(flow.base.log_scale.detach())
    by_hand = (
        -0.5 * (((z - flow.base.loc.detach()) / sd) ** 2).sum(-1)
        - torch.log(sd).sum()
        - math.log(2 * math.pi)
    )
    torch.testing.assert_close(layerless.log_prob(z), by_hand, rtol=0, atol=1e-12)


def test_build_refuses_unknown_names_and_empty_flows():
    with pytest.raises(ValueError, match="planar"):
        flowvi.flows.build("nope", 2)
    with pytest.raises(ValueError):
        flowvi.flows.build("planar", 2, length=0)
    flow = flowvi.flows.build("planar", 2, length=3)
    assert len(flow.layers) == 3 and all(isinstance(layer, Planar) for layer in flow.layers)


@pytest.mark.parametrize("name", ["maf", "realnvp", "planar", "residual"])
def test_log_prob_of_an_empty_batch_is_empty(name):
    from flowvi.flows import build

    flow = build(name, 3, length=2, hidden=(8,))
    assert flow.log_prob(torch.zeros(0, 3)).shape == (0,)
    assert flow.log_prob(torch.zeros(2, 0, 3)).shape == (2, 0)
    with pytest.raises(ValueError):
        flow.log_prob(torch.zeros(0, 4))
