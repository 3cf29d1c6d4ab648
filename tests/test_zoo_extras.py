"""ActNorm, sigmoid and leaky-ReLU layers, coupling masks, MADE orderings and the RQ spline.

The generic layer contract (tests/test_layer_contract.py) covers the new registered layers;
here are the properties particular to each: ActNorm's data-dependent initialization and its
persistence, the exact zero pattern of MADE's Jacobian for every ordering, the checkerboard
partition and its Jacobian, the spline's continuity at the knots and identity tails, and the
sigmoid's finite log-determinant at extreme inputs.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.autograd.functional import jacobian

from flowvi.distributions import StandardNormal
from flowvi.flows import (
    IAF,
    LAYERS,
    MAF,
    NSF,
    ActNorm,
    Affine,
    LeakyReLU,
    NormalizingFlow,
    NSFAutoregressive,
    RealNVP,
    Sigmoid,
    build,
    describe,
    rebuild,
)
from flowvi.flows.coupling import coupling_mask
from flowvi.io import load, save
from flowvi.nn import MADE, MaskedLinear, hidden_degrees
from flowvi.transforms import LeakyReLUTransform, SigmoidTransform
from flowvi.transforms.transformers import SplineTransformer

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randomize(module, *, scale=1.0, seed=0):
    """Every parameter of ``module`` at random, network weights ~ N(0, scale²/fan_in)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[1] if p.dim() == 2 else 1
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale / fan_in**0.5)
    return module


# ---------------------------------------------------------------------------------------------
# MADE orderings


def _allowed(order):
    """``allowed[i, j]``: output ``i`` may depend on input ``j`` (``j`` is earlier in ``order``)."""
    rank = torch.empty(len(order), dtype=torch.long)
    rank[torch.as_tensor(order)] = torch.arange(len(order))
    return rank[None, :] < rank[:, None]


@pytest.mark.parametrize("order", ["natural", "reverse", "random"])
@pytest.mark.parametrize("hidden", [(), (9,), (9, 7), (9, 7, 6)])
def test_made_jacobian_is_exactly_triangular_in_the_order(order, hidden):
    d, k = 5, 2
    torch.manual_seed(0)
    layer = MAF(d, hidden=hidden, order=order).double()
    made = layer.made
    expected = {"natural": list(range(d)), "reverse": list(range(d))[::-1]}.get(order)
    if expected is not None:
        assert made.order.tolist() == expected
    allowed = _allowed(made.order)[:, None, :].expand(d, k, d)
    # 1. Random weights and biases: the forbidden entries are exactly 0 at every point.
    _randomize(made, scale=1.5, seed=1)
    for x in torch.randn(4, d, generator=_gen(2), dtype=F64):
        jac = jacobian(made, x)  # (d, k, d)
        assert (jac[~allowed] == 0.0).all()
    # 2. Positive weights and large biases keep every ReLU active, so the network is linear:
    #    each allowed entry is a sum of positive products over the mask's paths, so nonzero
    #    exactly where the masks connect the input to the output.
    with torch.no_grad():
        for module in made.net:
            if isinstance(module, MaskedLinear):
                module.weight.abs_()
                module.bias.fill_(50.0)
    jac = jacobian(made, torch.randn(d, generator=_gen(3), dtype=F64))
    assert (jac[~allowed] == 0.0).all()
    assert (jac[allowed].abs() > 1e-8).all()


def test_random_orders_are_seeded_saved_and_rebuilt(tmp_path):
    d = 6
    a = MAF(d, hidden=(8,), order="random", seed=11)
    b = MAF(d, hidden=(8,), order="random", seed=11)
    c = MAF(d, hidden=(8,), order="random", seed=12)
    assert a.spec == {"hidden": [8], "order": "random", "seed": 11}
    assert torch.equal(a.made.order, b.made.order)
    assert sorted(a.made.order.tolist()) == list(range(d))
    for ma, mb in zip(a.made.net, b.made.net, strict=True):  # the random degrees too
        if isinstance(ma, MaskedLinear):
            assert torch.equal(ma.mask, mb.mask)
    assert not torch.equal(a.made.order, c.made.order)
    assert "made.order" in a.state_dict()
    # a stack built with order="random": each layer its own seed; describe/rebuild and
    # save/load restore the orders
    torch.manual_seed(5)
    flow = build("iaf", d, length=3, hidden=(8,), order="random").double()
    seeds = [layer.spec["seed"] for layer in flow.layers]
    assert len(set(seeds)) == 3
    again = rebuild(json.loads(json.dumps(describe(flow))))
    for one, two in zip(flow.layers, again.layers, strict=True):
        assert torch.equal(one.made.order, two.made.order)
    save(flow, tmp_path)
    loaded = load(tmp_path)
    x = torch.randn(5, d, dtype=F64)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), rtol=0, atol=1e-12)


def test_build_alternates_natural_and_reverse_by_default():
    flow = build("maf", 4, length=3, hidden=(8,))
    assert [layer.spec["order"] for layer in flow.layers] == ["natural", "reverse", "natural"]
    assert flow.layers[1].made.order.tolist() == [3, 2, 1, 0]
    flow = build("nsf-ar", 4, length=2, hidden=(8,), order="reverse")
    assert all(layer.made.order.tolist() == [3, 2, 1, 0] for layer in flow.layers)
    with pytest.raises(ValueError, match="order"):
        build("realnvp", 4, order="random")
    with pytest.raises(ValueError, match="order"):
        MAF(4, order="sideways")
    with pytest.raises(ValueError, match="seed"):
        MAF(4, order="natural", seed=3)
    with pytest.raises(ValueError, match="permutation"):
        MAF(3, order=[0, 0, 1])


def test_explicit_orders_of_older_specs_still_rebuild():
    layer = MAF(4, hidden=(8,), order=[2, 0, 3, 1])
    assert layer.spec["order"] == [2, 0, 3, 1]
    assert layer.made.order.tolist() == [2, 0, 3, 1]


def test_random_hidden_degrees_follow_the_made_scheme():
    """Germain et al. (2015): degrees within [min of the previous layer, d - 1]; with enough
    units every degree is present, so no permitted dependency is cut."""
    d = 7
    for seed in range(20):
        layers = hidden_degrees(d, [6, 12, 3], "random", _gen(seed))
        low = 1
        for degree in layers:
            assert degree.min() >= low and degree.max() <= d - 1
            low = int(degree.min())
        assert set(layers[0].tolist()) == set(range(1, d)) == set(layers[1].tolist())
    assert hidden_degrees(4, [5], "cyclic")[0].tolist() == [1, 2, 3, 1, 2]
    with pytest.raises(ValueError, match="degrees"):
        hidden_degrees(4, [5], "sorted")
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, 2, (4,), order=[0, 1, 1])


def test_made_with_context_keeps_the_order_for_the_inputs():
    d, c = 4, 3
    made = _randomize(MADE(d, 2, (16, 16), order=[1, 3, 0, 2], context_dim=c).double(), seed=4)
    x, h = torch.randn(d, dtype=F64), torch.randn(c, dtype=F64)
    jac_x = jacobian(lambda x: made(x, h), x)
    assert (jac_x[~_allowed([1, 3, 0, 2])[:, None, :].expand(d, 2, d)] == 0).all()
    # the context reaches every output, the first in the order (input 1) included (at some
    # of a few points: a ReLU unit may be off at any one of them)
    reach = torch.zeros(d, 2, dtype=torch.bool)
    for seed in range(5):
        g = _gen(seed)
        x, h = torch.randn(d, generator=g, dtype=F64), torch.randn(c, generator=g, dtype=F64)
        reach |= jacobian(lambda h: made(x, h), h).abs().sum(-1) > 0  # noqa: B023
    assert reach.all()


@pytest.mark.parametrize("degrees", ["cyclic", "random"])
def test_made_degree_zero_units_see_the_context_alone(degrees):
    generator = torch.Generator().manual_seed(0)
    made = MADE(3, 2, (6, 6), degrees=degrees, generator=generator, context_dim=2)
    first = made.net[0].mask.bool()  # (6, d + c): inputs first, context last
    assert not made.net[0].mask[:, :3][_degree_zero(made, first)].any()
    assert MADE(3, 2, (6,), degrees=degrees).net[0].mask[:, :3].any(1).all()  # no context: none


def _degree_zero(made, mask):
    """Rows of the first layer that see no input: the degree-0 units."""
    return ~mask[:, :3].any(1)


# ---------------------------------------------------------------------------------------------
# Rational-quadratic spline


def _spline_params(spline, n, seed=0, scale=2.0):
    return torch.randn(n, spline.num_params, generator=_gen(seed), dtype=F64) * scale


def test_spline_is_monotone_with_the_derivative_it_reports():
    spline = SplineTransformer()
    params = _spline_params(spline, 5)
    x = torch.linspace(-4, 4, 1601, dtype=F64)[None, :].expand(5, -1).contiguous()
    p = params[:, None, :].expand(-1, x.shape[1], -1)
    y, ladj = spline.call(x, p)
    assert (y.diff(dim=-1) > 0).all()
    assert torch.isfinite(ladj).all()
    xr = x.clone().requires_grad_()
    (dy,) = torch.autograd.grad(spline.call(xr, p)[0].sum(), xr)
    torch.testing.assert_close(ladj, dy.log(), rtol=0, atol=1e-10)


def test_spline_is_continuous_at_the_knots():
    spline = SplineTransformer()
    K = spline.bins
    params = _spline_params(spline, 4, seed=1, scale=3.0)
    xs, _ = spline._knots(params[:, :K])  # (4, K + 1), from -B to B
    ys, _ = spline._knots(params[:, K : 2 * K])
    p = params[:, None, :].expand(-1, K + 1, -1)
    left = torch.nextafter(xs, torch.full_like(xs, -torch.inf))
    right = torch.nextafter(xs, torch.full_like(xs, torch.inf))
    y_left, l_left = spline.call(left, p)
    y_right, l_right = spline.call(right, p)
    y_at, _ = spline.call(xs, p)
    torch.testing.assert_close(y_left, y_right, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_at, ys, rtol=0, atol=1e-12)  # the knots are interpolated
    # the derivative is continuous too, at the inner knots (C^1 spline)
    torch.testing.assert_close(l_left[:, 1:-1], l_right[:, 1:-1], rtol=0, atol=1e-9)


def test_spline_is_the_identity_in_the_tails():
    spline = SplineTransformer(bins=5, bound=2.0)
    params = _spline_params(spline, 6, seed=2)
    x = torch.tensor([-50.0, -7.0, -2.0 - 1e-9, 2.0, 2.5, 1e3], dtype=F64)
    y, ladj = spline.call(x, params)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros_like(x))
    x_in, y_in = spline.inverse(x, params)
    assert torch.equal(x_in, x) and torch.equal(y_in, torch.zeros_like(x))


def test_spline_inverse_is_exact():
    spline = SplineTransformer()
    n = 400
    x = torch.linspace(-3.5, 3.5, n, dtype=F64)
    for scale in (1.0, 4.0):  # typical, and sharp bins with slopes down to ~1e-7
        params = _spline_params(spline, n, seed=3, scale=scale)
        y, ladj = spline.call(x, params)
        x_back, ladj_back = spline.inverse(y, params)
        torch.testing.assert_close(ladj_back, ladj, rtol=0, atol=1e-9)
        # backward error at rounding level: the spline maps x_back onto y itself
        torch.testing.assert_close(spline.call(x_back, params)[0], y, rtol=0, atol=4e-15)
        # forward error: 1e-10, or what y's own rounding allows where the slope is tiny
        slack = 4 * torch.finfo(F64).eps * y.abs().clamp_min(1) / ladj.exp()
        assert ((x_back - x).abs() <= 1e-10 + slack).all()
        if scale == 1.0:
            torch.testing.assert_close(x_back, x, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# ActNorm


def _data(n=2000, seed=0):
    g = _gen(seed)
    mean = torch.tensor([1.0, -3.0, 20.0], dtype=F64)
    std = torch.tensor([0.5, 4.0, 1e-3], dtype=F64)
    return mean + std * torch.randn(n, 3, generator=g, dtype=F64)


def _normalized(flow, x):
    """The base-space point of ``x`` (all inverses applied)."""
    return flow().flow.inv(x)


def test_actnorm_initializes_from_the_first_log_prob():
    torch.manual_seed(0)
    layer = ActNorm(3)
    flow = NormalizingFlow(StandardNormal(3), [layer]).double()
    assert not layer.initialized
    x = _data()
    log_q = flow.log_prob(x)
    assert layer.initialized
    z = _normalized(flow, x)
    # x's rounding (eps · 20) divided by the std 1e-3 bounds what float64 can give: ~1e-12
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(3, dtype=F64), rtol=1e-10, atol=0)
    # the density is the standardized normal's, with the Jacobian of the standardization
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) - layer.log_scale.sum()
    torch.testing.assert_close(log_q, expected, rtol=0, atol=1e-10)
    # a second call, on other data, does not re-initialize
    before = [p.detach().clone() for p in layer.parameters()]
    flow.log_prob(_data(seed=1) * 3 + 1)
    for p, q in zip(layer.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_actnorm_normalizes_what_reaches_it_inside_a_stack():
    """In a stack, the layer initializes on its own input in the density direction: the data
    after the inverses of the layers that follow it."""
    torch.manual_seed(0)
    after = _randomize(Affine(3), scale=1.0, seed=5)
    norm = ActNorm(3)
    flow = NormalizingFlow(StandardNormal(3), [norm, after]).double()
    flow.log_prob(_data())
    z = _normalized(flow, _data())
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(3, dtype=F64), rtol=1e-10, atol=0)


def test_actnorm_first_used_for_sampling_starts_at_the_identity():
    layer = ActNorm(2)
    flow = NormalizingFlow(StandardNormal(2), [layer])
    flow.rsample_and_log_prob((50,))
    assert layer.initialized
    assert torch.equal(layer.loc, torch.zeros(2)) and torch.equal(layer.log_scale, torch.zeros(2))
    flow.log_prob(torch.randn(100, 2) * 5 + 3)  # no data-dependent init any more
    assert torch.equal(layer.loc, torch.zeros(2))
    # the parameters train: the loss reaches them
    _, log_q = flow.rsample_and_log_prob((50,))
    log_q.sum().backward()
    assert layer.log_scale.grad is not None and (layer.log_scale.grad != 0).all()


def test_actnorm_state_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    flow = NormalizingFlow(StandardNormal(3), [ActNorm(3), ActNorm(3)]).double()
    x = _data()
    log_q = flow.log_prob(x)
    save(flow, tmp_path)
    loaded = load(tmp_path)
    assert all(layer.initialized and layer._initialized for layer in loaded.layers)
    # the loaded model's first log_prob, on other data, keeps the saved parameters
    loaded.log_prob(_data(seed=3) * 10)
    torch.testing.assert_close(loaded.log_prob(x), log_q, rtol=0, atol=1e-12)
    assert describe(loaded)["layers"] == [{"layer": "actnorm", "context_dim": None, "count": 2}]


def test_actnorm_edge_cases():
    layer = ActNorm(2)
    flow = NormalizingFlow(StandardNormal(2), [layer])
    x = torch.tensor([[3.0, -1.0]])  # one sample: zero spread, so scale 1, shift to the point
    assert torch.isfinite(flow.log_prob(x)).all()
    torch.testing.assert_close(layer.loc.detach(), x[0])
    assert torch.equal(layer.log_scale, torch.zeros(2))
    layer = ActNorm(3)  # float32, several batch dimensions
    flow = NormalizingFlow(StandardNormal(3), [layer])
    x = (5 + 2 * torch.randn(600, 3, generator=_gen(0))).reshape(20, 30, 3)
    assert flow.log_prob(x).shape == (20, 30) and layer.loc.dtype == torch.float32
    z = _normalized(flow, x).reshape(-1, 3)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="positive integer"):
        ActNorm(0)


# ---------------------------------------------------------------------------------------------
# coupling masks


def _transformed(layer, x):
    """Which coordinates the layer changes at some row of ``x`` (the others pass exactly)."""
    return (layer()(x) != x).any(0)


@pytest.mark.parametrize("cls", [RealNVP, NSF])
@pytest.mark.parametrize("image_shape", [(2, 4, 5), (3, 3)])
def test_checkerboard_transforms_each_pixel_in_one_of_two_layers(cls, image_shape):
    d = int(torch.tensor(image_shape).prod())
    torch.manual_seed(0)
    layers = [
        _randomize(
            cls(d, mask="checkerboard", image_shape=image_shape, swap=s, hidden=(16,)).double(),
            seed=i,
        )
        for i, s in enumerate((False, True))
    ]
    x = torch.randn(8, d, generator=_gen(1), dtype=F64)
    first, second = (_transformed(layer, x) for layer in layers)
    assert not (first & second).any() and (first | second).all()
    # pixel (i, j) of every channel is left alone by the first layer iff i + j is even
    h, w = image_shape[-2:]
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pattern = ((i + j) % 2 == 0).flatten().repeat(d // (h * w))
    assert torch.equal(layers[0].mask, pattern) and torch.equal(~first, pattern)
    assert len(layers[0].index_a) + len(layers[0].index_b) == d


def test_coupling_jacobian_is_triangular_in_the_permuted_order():
    d = 12
    layer = _randomize(
        RealNVP(d, mask="checkerboard", image_shape=(3, 4), hidden=(16,)).double(), seed=2
    )
    t = layer()
    perm = torch.cat([layer.index_a, layer.index_b])
    n_a = len(layer.index_a)
    for x in torch.randn(3, d, generator=_gen(3), dtype=F64):
        jac = jacobian(t, x)[perm][:, perm]
        assert torch.equal(jac[:n_a, :n_a], torch.eye(n_a, dtype=F64))
        assert (jac[:n_a, n_a:] == 0).all()  # A does not see B
        bb = jac[n_a:, n_a:]
        assert (bb - torch.diag(torch.diagonal(bb)) == 0).all()  # B elementwise
        assert (jac[n_a:, :n_a] != 0).any()  # B is conditioned on A
        torch.testing.assert_close(
            t.call_and_ladj(x)[1], torch.diagonal(bb).abs().log().sum(), rtol=0, atol=1e-10
        )


def test_masks_round_trip_through_describe_and_rebuild(tmp_path):
    torch.manual_seed(0)
    layers = [
        RealNVP(24, mask="checkerboard", image_shape=(2, 3, 4), hidden=(8,)),
        RealNVP(24, mask="checkerboard", image_shape=(2, 3, 4), swap=True, hidden=(8,)),
        NSF(24, mask="alternate", hidden=(8,)),
        LAYERS["nice"](24, mask="alternating", hidden=(8,)),  # the old name, read as "alternate"
    ]
    flow = NormalizingFlow(StandardNormal(24), layers).double()
    spec = json.loads(json.dumps(describe(flow)))
    assert spec["layers"][0]["image_shape"] == [2, 3, 4]
    assert [e["mask"] for e in spec["layers"]] == ["checkerboard"] * 2 + ["alternate"] * 2
    again = rebuild(spec)
    assert describe(again) == spec
    for one, two in zip(flow.layers, again.layers, strict=True):
        assert torch.equal(one.mask, two.mask)
    save(flow, tmp_path)
    x = torch.randn(4, 24, dtype=F64)
    torch.testing.assert_close(load(tmp_path).log_prob(x), flow.log_prob(x))


def test_mask_options_and_their_errors():
    assert coupling_mask(5, "half").tolist() == [True, True, False, False, False]
    assert coupling_mask(5, "alternate").tolist() == [True, False, True, False, True]
    assert coupling_mask(4, "checkerboard").tolist() == [True, False, False, True]
    flow = build("realnvp", 16, length=2, mask="checkerboard", hidden=(8,))
    assert flow.layers[0].spec["image_shape"] == [4, 4]
    assert torch.equal(flow.layers[0].mask, ~flow.layers[1].mask)
    with pytest.raises(ValueError, match="not a square"):
        RealNVP(10, mask="checkerboard")
    with pytest.raises(ValueError, match="holds 12 values"):
        RealNVP(10, mask="checkerboard", image_shape=(3, 4))
    with pytest.raises(ValueError, match="checkerboard"):
        RealNVP(12, mask="half", image_shape=(3, 4))
    with pytest.raises(ValueError, match="mask"):
        RealNVP(4, mask="stripes")
    with pytest.raises(ValueError, match="no coordinate"):
        RealNVP(2, mask="checkerboard", image_shape=(2, 1, 1))
    with pytest.raises(ValueError, match="mask"):
        build("maf", 4, mask="alternate")


# ---------------------------------------------------------------------------------------------
# sigmoid and leaky ReLU


def test_sigmoid_is_stable_at_extreme_inputs():
    t = SigmoidTransform()
    x = torch.tensor([[-1000.0, -40.0, 0.0, 40.0, 1000.0]], dtype=F64)
    y, ladj = t.call_and_ladj(x)
    assert torch.isfinite(ladj).all() and ((y >= 0) & (y <= 1)).all()
    # ln σ'(x) = -|x| - 2 ln(1 + e^{-|x|}), summed
    expected = (-x.abs() - 2 * torch.log1p(torch.exp(-x.abs()))).sum(-1)
    torch.testing.assert_close(ladj, expected, rtol=1e-14, atol=0)
    one = torch.tensor([[40.0]], dtype=F64)
    assert t.call_and_ladj(one)[1].item() == pytest.approx(-40.0, abs=1e-15)
    # the logit of points near 0 (where float64 is dense) is exact far out
    y = torch.tensor([[1e-300, 1e-20, 0.5, 1 - 1e-10]], dtype=F64)
    x, inv_ladj = t.inv.call_and_ladj(y)
    assert torch.isfinite(x).all() and torch.isfinite(inv_ladj).all()
    torch.testing.assert_close(t(x), y, rtol=1e-12, atol=0)


def test_sigmoid_inverse_is_exact_away_from_the_boundary():
    t = SigmoidTransform()
    x = torch.linspace(-12, 12, 241, dtype=F64)[:, None]
    torch.testing.assert_close(t.inv(t(x)), x, rtol=0, atol=1e-10)
    y = torch.linspace(1e-6, 1 - 1e-6, 501, dtype=F64)[:, None]
    torch.testing.assert_close(t(t.inv(y)), y, rtol=0, atol=1e-15)


def test_sigmoid_at_the_data_end_gives_the_logit_normal_density():
    flow = NormalizingFlow(StandardNormal(1), [Sigmoid(1)]).double()
    y = torch.linspace(0.01, 0.99, 99, dtype=F64)[:, None]
    logit = torch.log(y / (1 - y))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(logit) - torch.log(y * (1 - y))
    torch.testing.assert_close(flow.log_prob(y), expected[:, 0], rtol=0, atol=1e-12)
    x, log_q = flow.rsample_and_log_prob((200,))
    assert ((x > 0) & (x < 1)).all()
    torch.testing.assert_close(flow.log_prob(x), log_q, rtol=0, atol=1e-10)
    assert flow().support.check(x).all() and not flow().support.check(x + 1).any()


def test_leaky_relu_slope_and_log_det():
    log_slope = torch.tensor([-30.0, 0.0, 2.0, 30.0], dtype=F64)
    t = LeakyReLUTransform(log_slope)
    x = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [2.0, -3.0, 0.0, 1e-300]], dtype=F64)
    y, ladj = t.call_and_ladj(x)
    alpha = log_slope.exp()
    torch.testing.assert_close(y[0], -alpha, rtol=1e-15, atol=0)
    assert torch.equal(y[1], x[1])  # slope 1, or the identity half
    torch.testing.assert_close(ladj, torch.tensor([2.0, 0.0], dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(t.inv(y), x, rtol=1e-14, atol=0)
    layer = LeakyReLU(3)
    assert torch.equal(layer()(x[:, :3].float()), x[:, :3].float())  # starts at the identity
    assert (layer().log_slope.exp() > 0).all()


@pytest.mark.parametrize("name", ["sigmoid", "leaky-relu", "actnorm"])
def test_elementwise_layers_build_save_and_describe(name, tmp_path):
    flow = build(name, 3, length=1 if name == "sigmoid" else 2).double()
    x = torch.rand(5, 3, dtype=F64) * 0.8 + 0.1
    log_q = flow.log_prob(x)
    save(flow, tmp_path)
    torch.testing.assert_close(load(tmp_path).log_prob(x), log_q, rtol=0, atol=1e-12)
    assert describe(flow)["layers"][0]["layer"] == name


def test_networked_layers_take_every_order_and_mask_with_context():
    """Spot check that options and amortization compose: the contract holds per context row."""
    d, c = 4, 2
    torch.manual_seed(0)
    for layer in [
        _randomize(MAF(d, hidden=(8,), order="random", seed=1, context_dim=c).double(), seed=1),
        _randomize(IAF(d, hidden=(8, 8), order="reverse", context_dim=c).double(), seed=2),
        _randomize(NSFAutoregressive(d, hidden=(8,), order="random", context_dim=c), seed=3),
        _randomize(RealNVP(d, mask="checkerboard", context_dim=c, hidden=(8,)).double(), seed=4),
    ]:
        layer = layer.double()
        h = torch.randn(3, c, dtype=F64)
        t = layer(h)
        z = torch.randn(3, d, generator=_gen(5), dtype=F64)
        y, ladj = t.call_and_ladj(z)
        torch.testing.assert_close(t.inv(y), z, rtol=0, atol=1e-8)
        for i in range(3):
            jac = jacobian(layer(h[i]), z[i])
            torch.testing.assert_close(ladj[i], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-8)
