"""The strictly monotone MLP transformer (NAF / UMNN-style) and the layers that use it.

The layer contract (tests/test_layer_contract.py) covers ``monotone-coupling`` and
``monotone-ar``; here are the transformer's own properties: strictly increasing and onto, its
log-derivative against autograd, an inverse exact in float64 far out and at extreme
parameters, the solver that inverts it, and a maximum-likelihood fit that learns.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowvi.data.toy import moons
from flowvi.density import fit_density, mean_nll
from flowvi.flows import (
    LAYERS,
    MAF,
    MonotoneAutoregressive,
    MonotoneCoupling,
    RealNVP,
    build,
    describe,
    rebuild,
)
from flowvi.io import load, save
from flowvi.transforms._solve import solve_increasing
from flowvi.transforms.transformers import TRANSFORMERS, MonotoneTransformer

F64 = torch.float64
SHAPES = [(8,), (3, 4), (2, 3, 2)]


def _params(m, n, k, *, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, m.num_params, generator=g, dtype=F64) * scale


@pytest.mark.parametrize("hidden", SHAPES)
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_strictly_increasing_with_the_exact_log_derivative(hidden, scale):
    m = MonotoneTransformer(hidden)
    p = _params(m, 1, 6, scale=scale, seed=0)  # 6 scalar maps, one grid each
    x = torch.linspace(-12, 12, 4001, dtype=F64)[:, None].expand(-1, 6).clone()
    y, log_dy = m.call(x, p)
    assert (y.diff(dim=0) > 0).all()
    # no lower slope than the linear term guarantees: y' >= ε
    assert (log_dy >= math.log(m.min_slope) - 1e-12).all()
    # the forward-mode log-derivative against autograd (each y_i depends on x_i only)
    x = x[::50].requires_grad_()
    y, log_dy = m.call(x, p)
    (dy,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_dy, dy.log(), rtol=0, atol=1e-12)


def test_log_derivative_stays_finite_where_tanh_saturates():
    m = MonotoneTransformer((4, 4))
    p = torch.full((1, 1, m.num_params), 40.0, dtype=F64)  # weights e^40-ish: every unit saturated
    x = torch.tensor([[-3.0], [0.0], [3.0]], dtype=F64)
    y, log_dy = m.call(x, p)
    assert torch.isfinite(y).all() and torch.isfinite(log_dy).all()
    # far from every unit's centre the slope is the linear term's alone, softplus(40 + shift)
    slope = m.min_slope + torch.nn.functional.softplus(
        torch.tensor(40.0 + m._slope_shift, dtype=F64)
    )
    torch.testing.assert_close(log_dy[[0, 2]], slope.log().expand(2, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("hidden", SHAPES)
@pytest.mark.parametrize("scale", [0.5, 3.0, 30.0])
def test_inverse_is_exact_in_float64(hidden, scale):
    m = MonotoneTransformer(hidden)
    p = _params(m, 200, 3, scale=scale, seed=1)
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(2), dtype=F64) * 5
    x[:5] *= 1e3  # far out on the linear tails
    y, log_dy = m.call(x, p)
    x_back, log_dy_back = m.inverse(y, p)
    torch.testing.assert_close(x_back, x, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(log_dy_back, log_dy, rtol=0, atol=1e-9)


def test_onto_the_real_line():
    """Any y, however far, has a preimage: the linear term's ε x outgrows the bounded tanh part."""
    m = MonotoneTransformer((8,))
    p = _params(m, 1, 4, scale=2.0, seed=3)
    y = torch.tensor([[-1e6], [-1.0], [1.0], [1e6]], dtype=F64).expand(-1, 4)
    x, _ = m.inverse(y, p)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(m.call(x, p)[0], y, rtol=1e-13, atol=1e-8)


@pytest.mark.parametrize("hidden", SHAPES)
def test_zero_parameters_give_an_odd_near_identity_map(hidden):
    m = MonotoneTransformer(hidden)
    x = torch.linspace(-6, 6, 121, dtype=F64)[:, None]
    y, log_dy = m.call(x, torch.zeros(121, 1, m.num_params, dtype=F64))
    torch.testing.assert_close(y, -y.flip(0), rtol=0, atol=1e-14)
    torch.testing.assert_close(y[80] - y[40], torch.tensor([4.0], dtype=F64))  # y(2) - y(-2)
    slope = log_dy.exp()
    assert (slope > 0.5).all() and (slope < 1.2).all()
    assert (slope[50:71] > 0.7).all()  # on [-1, 1]
    torch.testing.assert_close(
        slope[[0, -1]], torch.full((2, 1), 0.5, dtype=F64), atol=2e-3, rtol=0
    )


def test_float32_round_trip():
    m = MonotoneTransformer((8,))
    p = _params(m, 64, 2, scale=1.0, seed=4).float()
    x = torch.randn(64, 2) * 3
    y, log_dy = m.call(x, p)
    assert y.dtype == log_dy.dtype == torch.float32
    torch.testing.assert_close(m.inverse(y, p)[0], x, rtol=1e-4, atol=1e-4)


def test_parameter_count_and_bad_sizes():
    assert MonotoneTransformer((8,)).num_params == 8 + 8 + 8 + 2
    assert MonotoneTransformer((3, 4)).num_params == (3 + 3) + (12 + 4) + 4 + 2
    assert TRANSFORMERS["monotone"].hidden == (8,)
    for bad in [(), (0,), (2, -1), (2.5,), (True,)]:
        with pytest.raises(ValueError, match="hidden"):
            MonotoneTransformer(bad)


def test_solver_breaks_newton_cycles():
    """Newton cycles between two points on sigmoid-like g (tangents overshoot from both sides);
    the safeguard must still converge, quickly, for every element."""
    g = torch.Generator().manual_seed(5)
    n = 2000
    w = torch.rand(n, generator=g, dtype=F64) * 20 + 0.5
    b = torch.randn(n, generator=g, dtype=F64) * 2
    eps = 10 ** (-4 * torch.rand(n, generator=g, dtype=F64) - 1)
    target = torch.rand(n, generator=g, dtype=F64) * 1.8 - 0.9
    calls = []

    def fn(a):
        calls.append(1)
        u = w * a + b
        return eps * a + torch.tanh(u) - target, eps + w / torch.cosh(u) ** 2

    width = 2 / eps
    root = solve_increasing(fn, -width, width)
    assert len(calls) <= 80
    torch.testing.assert_close(fn(root)[0], torch.zeros(n, dtype=F64), rtol=0, atol=1e-13)


def test_layers_take_the_transformer_and_its_width_as_options(tmp_path):
    assert LAYERS["monotone-coupling"] is MonotoneCoupling
    assert LAYERS["monotone-ar"] is MonotoneAutoregressive
    layer = MonotoneCoupling(3, hidden=(8,), monotone_hidden=(4, 2))
    assert layer.transformer.hidden == (4, 2)
    assert layer.spec["monotone_hidden"] == [4, 2]
    # the transformer is an option of every coupling and MADE layer
    assert MAF(3, transformer="monotone").transformer is TRANSFORMERS["monotone"]
    assert RealNVP(3, transformer="spline").spec["transformer"] == "spline"
    assert "transformer" not in MonotoneAutoregressive(3).spec  # the class's own: not recorded
    with pytest.raises(ValueError, match="transformer"):
        MAF(3, transformer="cubic")
    with pytest.raises(ValueError, match="monotone_hidden applies to the monotone"):
        MAF(3, monotone_hidden=(4,))
    with pytest.raises(ValueError, match="hidden layer size"):
        MonotoneAutoregressive(3, monotone_hidden=(0,))
    # describe/rebuild and save/load keep the options
    torch.manual_seed(0)
    flow = build("monotone-ar", 3, length=2, hidden=(8,)).double()
    flow.layers[0] = MonotoneAutoregressive(3, hidden=(8,), monotone_hidden=(3,)).double()
    flow.layers[1] = MAF(3, hidden=(8,), order="reverse", transformer="monotone").double()
    spec = json.loads(json.dumps(describe(flow)))
    assert spec["layers"][0]["monotone_hidden"] == [3]
    assert spec["layers"][1]["transformer"] == "monotone"
    again = rebuild(spec)
    assert again.layers[0].transformer.hidden == (3,)
    assert again.layers[1].transformer is TRANSFORMERS["monotone"]
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.3)
    save(flow, tmp_path)
    x = torch.randn(6, 3, dtype=F64)
    torch.testing.assert_close(load(tmp_path).log_prob(x), flow.log_prob(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["monotone-coupling", "monotone-ar"])
def test_maximum_likelihood_fit_on_moons_lowers_the_nll(name):
    torch.manual_seed(0)
    x = moons(512, seed=0).float()
    x = (x - x.mean(0)) / x.std(0)
    flow = build(name, 2, length=2, hidden=(16, 16))
    before = float(mean_nll(flow, x))
    trace, _ = fit_density(flow, x, iters=60, batch_size=256, lr=5e-3, progress=False)
    after = float(mean_nll(flow, x))
    assert torch.isfinite(trace).all()
    # a standardized moons sample has NLL ~2.84 under N(0, I); the fit must learn structure
    assert after < before - 0.3
    samples = flow.sample((256,))
    assert torch.isfinite(samples).all()
