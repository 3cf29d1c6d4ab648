"""The softplus-scaled affine transformer: exact, invertible, positive-scaled, and an option of
the coupling and MADE layers, of ``build`` and of the ``fit``/``density`` runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from flowvi.app.density import DensityConfig
from flowvi.flows import IAF, MAF, RealNVP, build, describe, rebuild
from flowvi.transforms.transformers import TRANSFORMERS, SoftplusAffineTransformer

T = TRANSFORMERS["softplus-affine"]


def _params(n, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 2, generator=g, dtype=torch.float64) * scale


def test_map_derivative_and_inverse_are_exact():
    x = torch.randn(6, 4, dtype=torch.float64)
    params = _params(6)
    y, log_dy = T.call(x, params)
    shift, raw = params.unbind(-1)
    scale = torch.log1p(torch.exp(raw)) + 1e-3
    torch.testing.assert_close(y, shift + scale * x, rtol=1e-12, atol=1e-12)
    # elementwise derivative by autograd
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(T.call(xg, params)[0].sum(), xg)
    torch.testing.assert_close(log_dy, grad.log(), rtol=1e-12, atol=1e-12)
    back, log_dy_back = T.inverse(y, params)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(log_dy_back, log_dy, rtol=0, atol=1e-12)


def test_scale_is_positive_floored_and_starts_at_ln_2():
    x = torch.ones(1, 3, dtype=torch.float64)
    raw = torch.tensor([[-800.0, 0.0, 800.0]], dtype=torch.float64)
    params = torch.stack([torch.zeros_like(raw), raw], -1)
    y, log_dy = T.call(x, params)
    torch.testing.assert_close(y, torch.tensor([[1e-3, math.log(2) + 1e-3, 800.001]]).double())
    assert torch.isfinite(log_dy).all()


@pytest.mark.parametrize("cls", [RealNVP, MAF, IAF])
def test_layers_with_it_keep_the_layer_contract(cls):
    torch.manual_seed(0)
    layer = cls(4, hidden=(8, 8), transformer="softplus-affine").double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.7)
    t = layer()
    z = torch.randn(5, 4, dtype=torch.float64)
    y, ladj = t.call_and_ladj(z)
    exact = torch.stack([torch.linalg.slogdet(jacobian(t, zi))[1] for zi in z])
    torch.testing.assert_close(ladj, exact, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(t.inv(y), z, rtol=0, atol=1e-8)
    assert torch.autograd.gradcheck(lambda z: t.call_and_ladj(z), (z.requires_grad_(),))


def test_build_and_runs_take_it_and_keep_it():
    torch.manual_seed(0)
    flow = build("maf", 3, length=2, hidden=(8,), transformer="softplus-affine")
    assert all(isinstance(layer.transformer, SoftplusAffineTransformer) for layer in flow.layers)
    again = rebuild(json.loads(json.dumps(describe(flow))))
    assert isinstance(again.layers[1].transformer, SoftplusAffineTransformer)
    # a zero-initialized MADE starts every MAF layer at the contraction by ln 2 from data to
    # noise (the direction of its one-pass density)
    x = torch.randn(4, 3)
    _, ladj = flow.layers[0]().inv.call_and_ladj(x)
    torch.testing.assert_close(ladj, torch.full((4,), 3 * math.log(math.log(2) + 1e-3)))
    with pytest.raises(ValueError, match="coupling and autoregressive layers only"):
        build("planar", 2, transformer="softplus-affine")
    with pytest.raises(ValueError, match="transformer"):
        build("realnvp", 2, transformer="cubic")
    with pytest.raises(ValueError, match="transformer"):
        DensityConfig(transformer="cubic").validate()
