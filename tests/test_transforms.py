"""Contract of the parametric flow layers (free raw parameters -> Transform), in float64.

For every ``ParametricLayer`` in ``flowvi.flows.LAYERS`` (planar, radial, affine, triangular,
lu, ...), with random and with extreme raw parameters: the inverse recovers the input,
``call_and_ladj``'s log-determinant equals that of the autograd Jacobian, the inverse returns
``(z, -ladj)``, gradients pass ``gradcheck``, every parameter gets a gradient, float32 works,
and amortized layers give each datapoint its own exact bijection. The invertibility constraints
of planar (w·û > -1) and radial (β̂ > -α) are checked directly.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from flowvi.flows import LAYERS, ParametricLayer
from flowvi.transforms import PlanarTransform, RadialTransform

F64 = torch.float64
DIMS = [1, 2, 5]
NAMES = sorted(name for name, cls in LAYERS.items() if issubclass(cls, ParametricLayer))
CONTEXT = 4


def test_the_parametric_layers_are_all_covered():
    assert {"planar", "radial", "affine", "triangular"} <= set(NAMES)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_raw(name, d, seed=0, scale=1.0):
    """Random raw parameters of the layer ``name``, float64."""
    g = _gen(seed)
    shapes = LAYERS[name](d).shapes
    return {k: torch.randn(shape, generator=g, dtype=F64) * scale for k, shape in shapes.items()}


def _extreme_raws(name, d):
    """Raw parameter sets far out in the constrained directions.

    Unconstrained offsets (affine ``loc`` with a tiny scale, the off-diagonal of the linear maps)
    are kept so that the map stays well conditioned: beyond that, float64 itself, not the code,
    limits what an inverse can recover.
    """
    g = _gen(7)
    ones = torch.ones(d, dtype=F64)
    if name == "planar":
        w = torch.randn(d, generator=g, dtype=F64) * 3
        # w·u = -50 exactly in direction w, plus an orthogonal part: w·û -> -1 from above
        v = torch.randn(d, generator=g, dtype=F64)
        v = v - (v @ w) / (w @ w) * w
        u_neg = -50 * w / (w @ w) + v
        return [
            {"u": 30 * ones, "w": 30 * ones, "b": torch.tensor(30.0, dtype=F64)},
            {"u": -30 * ones, "w": 30 * ones, "b": torch.tensor(-30.0, dtype=F64)},
            {"u": -30 * ones, "w": -30 * ones, "b": torch.tensor(-30.0, dtype=F64)},
            {"u": u_neg, "w": w, "b": torch.tensor(0.3, dtype=F64)},
        ]
    if name == "radial":
        z0 = 0.5 * ones
        return [
            {"z0": z0, "alpha": torch.tensor(a, dtype=F64), "beta": torch.tensor(b, dtype=F64)}
            for a, b in [(30.0, 30.0), (30.0, -30.0), (-30.0, 30.0), (-30.0, -30.0), (0.0, -30.0)]
        ]
    if name == "affine":
        return [
            {"loc": 30 * ones, "log_scale": 30 * ones},
            {"loc": -30 * ones, "log_scale": 30 * ones},
            {"loc": 0 * ones, "log_scale": -30 * ones},
        ]
    if name == "triangular":
        off = torch.tril(torch.randn(d, d, generator=g, dtype=F64), -1)
        return [
            {"loc": 30 * ones, "matrix": 30 * torch.eye(d, dtype=F64) + 30 * off},
            {"loc": 0 * ones, "matrix": -30 * torch.eye(d, dtype=F64) + 1e-13 * off},
        ]
    if name == "lu":
        m = torch.randn(d, d, generator=g, dtype=F64) * 0.5
        return [
            {"lower": m, "upper": 30 * m, "log_diag": 30 * ones, "bias": 30 * ones},
            {"lower": m, "upper": 1e-13 * m, "log_diag": -30 * ones, "bias": 0 * ones},
        ]
    if name == "qr":  # R = diag(e^ℓ)(I + N): ℓ = ±30 scales R's rows, N stays O(1)
        m = torch.randn(d, d, generator=g, dtype=F64) * 0.5
        v = torch.randn(d, d, generator=g, dtype=F64)
        return [
            {"v": 30 * v, "upper": m, "log_diag": 30 * ones, "bias": 30 * ones},
            {"v": 1e-30 * v, "upper": m, "log_diag": -30 * ones, "bias": 0 * ones},
        ]
    if name.startswith("sylvester"):
        # r_ii r̃_ii = tanh(±30) tanh(∓30) rounds to -1 (exactly, 1 + r_ii r̃_ii ≈ 4e-26) or is
        # +1; Q from raw matrices scaled far up or down (Q depends only on their directions)
        q = torch.randn(d, d, generator=g, dtype=F64)
        v = torch.randn(4, d, generator=g, dtype=F64)
        eye = torch.eye(d, dtype=F64)
        off = torch.randn(d, d, generator=g, dtype=F64) * (1 - eye)
        basis = {"sylvester-o": {"q": q}, "sylvester-h": {"v": v}, "sylvester-t": {}}[name]
        return [
            {
                **{key: k * value for key, value in basis.items()},
                "r": off + rho * eye,
                "r_tilde_diag": rho_tilde * ones,
                "b": b * ones,
            }
            for k, rho, rho_tilde, b in [(30, 30, -30, 3), (1e-30, -30, 30, -3), (-1, 30, 30, 0)]
        ]
    raise AssertionError(f"no extreme parameters written for layer {name}")


def _transform(name, raw):
    return LAYERS[name].transform(**raw)


def _points(d, n=6, scale=1.0, seed=1):
    return torch.randn(n, d, generator=_gen(seed), dtype=F64) * scale


def _autograd_log_det(t, z):
    """log|det| of each sample's Jacobian, from the full (n, d, n, d) Jacobian of the batch,
    checking on the way that samples do not interact (off-diagonal blocks are zero)."""
    n = len(z)
    jac = jacobian(lambda x: t(x), z)
    idx = torch.arange(n)
    blocks = jac[idx, :, idx, :]
    off = jac.clone()
    off[idx, :, idx, :] = 0
    assert off.abs().max() == 0, "samples of a batch must not interact"
    sign, logabs = torch.linalg.slogdet(blocks)
    assert (sign != 0).all()
    return logabs


def _check_contract(t, z, *, atol=1e-8, rtol=0.0):
    y, ladj = t.call_and_ladj(z)
    assert y.shape == z.shape and ladj.shape == z.shape[:-1]
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    torch.testing.assert_close(t(z), y, rtol=0, atol=0)
    torch.testing.assert_close(t.inv(y), z, rtol=rtol, atol=atol)
    torch.testing.assert_close(ladj, _autograd_log_det(t, z), rtol=rtol, atol=atol)
    x, inv_ladj = t.inv.call_and_ladj(y)
    torch.testing.assert_close(x, z, rtol=rtol, atol=atol)
    torch.testing.assert_close(inv_ladj, -ladj, rtol=rtol, atol=atol)
    torch.testing.assert_close(t.log_abs_det_jacobian(z, y), ladj, rtol=0, atol=0)
    torch.testing.assert_close(t.inv.log_abs_det_jacobian(y, z), -ladj, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_contract_with_random_parameters(name, d, scale):
    for seed in (0, 1):
        t = _transform(name, _random_raw(name, d, seed=seed))
        _check_contract(t, _points(d, scale=scale, seed=seed + 10))


def test_layer_call_gives_the_transform_of_its_raw_parameters():
    torch.manual_seed(0)
    layer = LAYERS["planar"](3).double()
    t = layer()
    assert isinstance(t, PlanarTransform)
    raw = {k: v.detach() for k, v in layer.params.items()}
    z = _points(3)
    torch.testing.assert_close(t(z), _transform("planar", raw)(z), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", DIMS)
def test_contract_with_extreme_parameters(name, d):
    for i, raw in enumerate(_extreme_raws(name, d)):
        t = _transform(name, raw)
        for scale in (1.0, 10.0):
            z = _points(d, scale=scale, seed=20 + i)
            _check_contract(t, z, atol=1e-8, rtol=1e-10)


def test_planar_near_the_boundary_has_the_exact_log_det():
    """w·u = -50: w·û = -1 + softplus(-50) ≈ -1 + 2e-22, so the Jacobian determinant
    t² + s(1 - t²) is tiny near the hyperplane; ladj must still equal its logarithm."""
    w = torch.tensor([1.0, 0.0], dtype=F64)
    u = torch.tensor([-50.0, 0.7], dtype=F64)
    t = PlanarTransform(u, w, torch.tensor(0.0, dtype=F64))
    z = torch.tensor([[1e-3, 0.5], [0.3, -1.0], [-2.0, 4.0]], dtype=F64)
    th = torch.tanh(z[:, 0])
    s = torch.nn.functional.softplus(torch.tensor(-50.0, dtype=F64))
    expected = torch.log(th * th + s * (1 - th * th))
    torch.testing.assert_close(t.call_and_ladj(z)[1], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(t.inv(t(z)), z, rtol=0, atol=1e-8)


def _flat_fn(name, names, *, inverse):
    def fn(x, *raw):
        t = _transform(name, dict(zip(names, raw, strict=True)))
        return t.inv.call_and_ladj(x) if inverse else t.call_and_ladj(x)

    return fn


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", [1, 3])
def test_gradcheck_forward_and_inverse(name, d):
    raw = _random_raw(name, d, seed=3, scale=0.8)
    names = list(raw)
    params = [raw[k].clone().requires_grad_() for k in names]
    z = _points(d, n=3, scale=1.5).requires_grad_()
    forward = _flat_fn(name, names, inverse=False)
    inverse = _flat_fn(name, names, inverse=True)
    assert torch.autograd.gradcheck(forward, (z, *params))
    y = forward(z, *params)[0].detach().requires_grad_()
    assert torch.autograd.gradcheck(inverse, (y, *params))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", DIMS)
def test_every_parameter_gets_a_gradient(name, d):
    torch.manual_seed(0)
    layer = LAYERS[name](d).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 1.0)
    y, ladj = layer().call_and_ladj(_points(d))
    (ladj.sum() + y.sum()).backward()
    params = dict(layer.named_parameters())
    assert params
    for key, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        used = _used_entries(key.removeprefix("params."), p)
        assert (p.grad[used] != 0).all(), key  # every entry the map reads gets a gradient
        assert (p.grad[~used] == 0).all(), key  # and the ignored triangle gets none


def _used_entries(key, p):
    """The raw entries a layer reads: the linear maps ignore part of their square matrices."""
    ones = torch.ones_like(p, dtype=torch.bool)
    if (key == "q" and p.shape[-2] == 1) or (key == "v" and p.shape[-1] == 1):
        return ~ones  # Sylvester's Q in one dimension is ±1, a constant
    if key == "matrix":
        return torch.tril(ones)
    if key == "lower":
        return torch.tril(ones, -1)
    if key == "upper":
        return torch.triu(ones, 1)
    return ones


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", [1, 3])
def test_float32_follows_the_input_and_module(name, d):
    torch.manual_seed(0)
    layer = LAYERS[name](d)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.7)
    z64 = _points(d)
    y64, ladj64 = layer.double()().call_and_ladj(z64)
    layer = layer.float()
    z = z64.float()
    t = layer()
    y, ladj = t.call_and_ladj(z)
    assert y.dtype == ladj.dtype == torch.float32
    x, inv_ladj = t.inv.call_and_ladj(y)
    assert x.dtype == inv_ladj.dtype == torch.float32
    torch.testing.assert_close(y, y64.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ladj, ladj64.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x, z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(inv_ladj, -ladj, rtol=1e-4, atol=1e-4)


def _amortized(name, d, seed=0):
    torch.manual_seed(seed)
    layer = LAYERS[name](d, context_dim=CONTEXT).double()
    with torch.no_grad():  # make the context matter: raw parameters vary by O(1) across contexts
        layer.head.weight.normal_(0.0, 0.5)
    return layer


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", DIMS)
def test_amortized_layer_gives_each_sample_its_own_transform(name, d):
    layer = _amortized(name, d)
    n = 5
    context = torch.randn(n, CONTEXT, generator=_gen(4), dtype=F64)
    t = layer(context)
    # two different contexts, the same z: two different outputs
    z_same = _points(d, n=1).expand(2, d)
    y_same = layer(context[:2])(z_same)
    assert (y_same[0] - y_same[1]).abs().max() > 1e-3
    # the contract, per sample
    z = _points(d, n=n, scale=2.0)
    _check_contract(t, z)
    # row i is exactly the transform of context i alone
    y, ladj = t.call_and_ladj(z)
    for i in range(n):
        yi, li = layer(context[i : i + 1]).call_and_ladj(z[i : i + 1])
        torch.testing.assert_close(yi[0], y[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(li[0], ladj[i], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_amortized_layer_refuses_a_missing_or_wrong_context(name):
    layer = _amortized(name, 2)
    with pytest.raises(ValueError, match="context"):
        layer()
    with pytest.raises(ValueError, match="context"):
        layer(torch.zeros(3, CONTEXT + 1, dtype=F64))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", [0, -1, 2.5])
def test_invalid_dimension_raises(name, d):
    with pytest.raises(ValueError):
        LAYERS[name](d)
    with pytest.raises(ValueError):
        LAYERS[name](d, context_dim=CONTEXT)


def _rounding(u, w, u_hat):
    """Float64 rounding of w·û: û = u + k w cancels to O(eps |u|) per entry."""
    norm = torch.linalg.vector_norm
    return 1e-14 * norm(w, dim=-1) * (norm(u, dim=-1) + norm(u_hat, dim=-1))


def test_planar_invertibility_condition_for_any_raw_parameters():
    g = _gen(0)
    for scale in [0.1, 1.0, 3.0]:
        u = torch.randn(2000, 3, generator=g, dtype=F64) * scale
        w = torch.randn(2000, 3, generator=g, dtype=F64) * scale
        wu = torch.linalg.vecdot(w, u)
        # where w·u > -20, w·û = -1 + softplus(w·u) is above -1 by far more than rounding
        keep = wu > -20
        assert keep.sum() > 1500
        t = PlanarTransform(u[keep], w[keep], torch.zeros(int(keep.sum()), dtype=F64))
        wu_hat = torch.linalg.vecdot(w[keep], t.u_hat)
        assert (wu_hat > -1).all()
        expected = torch.nn.functional.softplus(wu[keep]) - 1
        torch.testing.assert_close(wu_hat, expected, rtol=1e-10, atol=1e-12)
    for scale in [10.0, 30.0, 100.0]:
        # extreme raw values: w·û = -1 + softplus(w·u) can round to -1 itself, but never below
        u = torch.randn(2000, 3, generator=g, dtype=F64) * scale
        w = torch.randn(2000, 3, generator=g, dtype=F64) * scale
        t = PlanarTransform(u, w, torch.zeros(2000, dtype=F64))
        wu_hat = torch.linalg.vecdot(w, t.u_hat)
        rounding = _rounding(u, w, t.u_hat)
        assert (wu_hat >= -1 - rounding).all()
        assert (t.s > 0).all()  # the determinant's floor: t² + s(1 - t²) > 0
    # the extreme patterns of the contract test: all ±30, and w·u = -50
    for sign_u, sign_w in [(1, 1), (-1, 1), (1, -1), (-1, -1)]:
        u = torch.full((4,), 30.0 * sign_u, dtype=F64)
        w = torch.full((4,), 30.0 * sign_w, dtype=F64)
        t = PlanarTransform(u, w, torch.tensor(0.0, dtype=F64))
        rounding = _rounding(u, w, t.u_hat)
        assert torch.linalg.vecdot(w, t.u_hat) >= -1 - rounding and t.s > 0
    w = torch.tensor([2.0, -1.0], dtype=F64)
    t = PlanarTransform(-50 * w / 5, w, torch.tensor(0.0, dtype=F64))
    assert torch.linalg.vecdot(w, t.u_hat).item() == pytest.approx(-1.0, abs=1e-14)
    assert t.s.item() == pytest.approx(float(torch.exp(torch.tensor(-50.0, dtype=F64))), rel=1e-9)


def test_radial_invertibility_condition_for_any_raw_parameters():
    g = _gen(1)
    raw = torch.randn(2, 5000, generator=g, dtype=F64) * 10
    raw = raw[:, raw[1] > -30]  # there β̂ + α = softplus(β_raw) > 1e-13 is above rounding
    t = RadialTransform(torch.zeros(raw.shape[1], 3, dtype=F64), raw[0], raw[1])
    assert (t.alpha > 0).all()
    assert (t.beta > -t.alpha).all()
    torch.testing.assert_close(t.beta + t.alpha, torch.nn.functional.softplus(raw[1]))
    raw = torch.randn(2, 5000, generator=g, dtype=F64) * 100  # may round to β̂ = -α, not below
    t = RadialTransform(torch.zeros(5000, 3, dtype=F64), raw[0], raw[1])
    assert (t.alpha >= 0).all() and (t.beta >= -t.alpha).all()
    # raw β very negative: β̂ just above -α
    t = RadialTransform(
        torch.zeros(3, dtype=F64), torch.tensor(2.0, dtype=F64), torch.tensor(-30.0, dtype=F64)
    )
    assert t.beta > -t.alpha
    assert (t.beta + t.alpha).item() == pytest.approx(float(torch.exp(torch.tensor(-30.0))), 1e-6)
