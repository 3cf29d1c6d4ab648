"""The contract every flow layer honours, checked in float64 over every registered layer.

The layers come from the registry ``flowvi.flows.LAYERS``, whose classes all derive from
``flowvi.flows.Layer``; those that take a context (``takes_context``) are also checked amortized.

inverse recovers the input; ladj equals log|det| of the autograd Jacobian; gradients pass
gradcheck; every parameter gets a gradient; any raw parameters give an invertible layer;
amortized layers give each datapoint its own transform.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.func import functional_call

from flowvi.flows import LAYERS, Layer
from flowvi.transforms import PlanarTransform, RadialTransform, Transform

DIMS = [1, 2, 5]
NAMES = sorted(LAYERS)
AMORTIZABLE = [name for name in NAMES if LAYERS[name].takes_context]
COUPLINGS = [name for name in NAMES if "mask" in LAYERS[name].options()]
# options the contract needs: the residual layer's exact log-determinant at every d (its
# "auto" default is the randomized series for d > 4, checked in tests/test_residual.py); the
# monotone layers with two-layer scalar networks of 2 units, since gradcheck re-solves their
# bisection inverse once per weight
_MONOTONE = {"monotone_hidden": (2, 2)}
OPTIONS = {
    "residual": {"logdet": "exact"},
    "monotone-ar": _MONOTONE,
    "monotone-coupling": _MONOTONE,
}


def _skip_degenerate(name, d):
    if d == 1 and name in COUPLINGS:
        pytest.skip("a coupling layer needs d >= 2")


def _make(name, d, **kwargs):
    """``LAYERS[name](d, **kwargs)`` with small networks (8, 8): the contract holds at any size,
    and gradcheck perturbs every weight one at a time."""
    cls = LAYERS[name]
    kwargs = {**OPTIONS.get(name, {}), **kwargs}
    if "hidden" in cls.options():
        kwargs.setdefault("hidden", (8, 8))
    return cls(d, **kwargs)


def _layer(name, d, *, scale=1.0, seed=0, context_dim=None):
    torch.manual_seed(seed)
    layer = _make(name, d, context_dim=context_dim).double()
    with torch.no_grad():
        for key, p in layer.named_parameters():
            # network weight matrices at `scale` times the usual 1/sqrt(fan_in) size, so that
            # the layer is far from the identity but not absurdly saturated
            network = not key.startswith("params.") and p.dim() == 2
            p.normal_(0.0, scale / p.shape[1] ** 0.5 if network else scale)
    return layer


def _extreme(name, d, value):
    """A layer whose constrained raw parameters are at ``value`` (e.g. ±30): planar with
    ``w·u -> ∓∞`` (so ``w·û`` approaches -1 or is huge), radial with ``α, β`` saturated, the
    scales of the affine layers at ``e^{±value/3}`` (beyond that the map's conditioning, not
    the code, limits what float64 can recover)."""
    layer = _make(name, d).double()
    big = torch.exp(torch.tensor(value / 3))
    sylvester = {  # r_ii = tanh(±30) = ±1, r̃_ii = ∓1: r_ii r̃_ii rounds to -1 (exact: -1 + 4e-26);
        # Q from raw matrices scaled by ±30 (Q depends only on their directions)
        "q": value * (torch.eye(d) + 0.5 * torch.triu(torch.ones(d, d), 1)),
        "v": value * torch.cos(torch.arange(4.0 * d).reshape(4, d) + 1),
        "r": torch.full((d, d), 0.5) + torch.eye(d) * (value - 0.5),
        "r_tilde_diag": torch.full((d,), -value),
        "b": torch.full((d,), value / 10),
    }
    raw = {
        "planar": {
            "u": torch.full((d,), -value),
            "w": torch.full((d,), abs(value) / d),
            "b": torch.tensor(value / 10),
        },
        "radial": {
            "z0": torch.full((d,), 0.5),
            "alpha": torch.tensor(value),
            "beta": torch.tensor(value),
        },
        "affine": {"loc": torch.ones(d), "log_scale": torch.full((d,), value / 3)},
        "triangular": {  # L = e^{value/3} (I + strictly lower 0.5): extreme scale, well posed
            "loc": torch.ones(d),
            "matrix": torch.eye(d) * value / 3 + torch.tril(torch.ones(d, d), -1) * 0.5,
        },
        "lu": {
            "lower": torch.full((d, d), 0.5),
            "upper": torch.full((d, d), 0.5) * big,
            "log_diag": torch.full((d,), value / 3),
            "bias": torch.ones(d),
        },
        "sylvester-o": sylvester,
        "sylvester-h": sylvester,
        "sylvester-t": sylvester,
    }.get(name)
    with torch.no_grad():
        for key, p in layer.named_parameters():
            # networks: every weight at ±1, so outputs (shifts, log-scales) are in the thousands
            p.copy_(raw[key.removeprefix("params.")] if raw else torch.full_like(p, value / 30))
    return layer


def _log_abs_det(t, z):
    return torch.stack([torch.linalg.slogdet(jacobian(t, zi))[1] for zi in z])


def _points(d, n=7, scale=2.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_layer_derives_from_the_one_base(name):
    layer = _make(name, 3)
    assert isinstance(layer, Layer) and layer.d == 3
    assert isinstance(layer(), Transform)
    assert set(OPTIONS.get(name, {})) <= set(LAYERS[name].options())


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(AMORTIZABLE)))
def test_a_layer_without_context_refuses_a_context_dim(name):
    with pytest.raises(ValueError, match="not amortized"):
        LAYERS[name](3, context_dim=2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_inverse_and_log_det_match_autograd(name, d, scale):
    _skip_degenerate(name, d)
    t = _layer(name, d, scale=scale)()
    for z in (_points(d), _points(d, scale=10.0, seed=2)):
        y, ladj = t.call_and_ladj(z)
        torch.testing.assert_close(t.inv(y), z, rtol=0, atol=1e-8)
        torch.testing.assert_close(ladj, _log_abs_det(t, z), rtol=0, atol=1e-8)
        torch.testing.assert_close(t.log_abs_det_jacobian(z, y), ladj, rtol=0, atol=0)
        x, inv_ladj = t.inv.call_and_ladj(y)
        torch.testing.assert_close(x, z, rtol=0, atol=1e-8)
        torch.testing.assert_close(inv_ladj, -ladj, rtol=0, atol=1e-8)
        assert t.inv.inv is t


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [-30.0, 30.0])
def test_extreme_raw_parameters_still_give_an_exact_bijection(name, value):
    d = 3
    t = _extreme(name, d, value)()
    z = _points(d, scale=3.0)
    y, ladj = t.call_and_ladj(z)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    torch.testing.assert_close(t.inv(y), z, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(ladj, _log_abs_det(t, z), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_forward_and_inverse(name):
    layer = _layer(name, 3, scale=0.8)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    z = _points(3, n=4).requires_grad_()

    def transform(raw):
        return functional_call(layer, dict(zip(names, raw, strict=True)), ())

    def forward(z, *raw):
        return transform(raw).call_and_ladj(z)

    def inverse(y, *raw):
        return transform(raw).inv.call_and_ladj(y)

    assert torch.autograd.gradcheck(forward, (z, *params))
    y = forward(z, *params)[0].detach().requires_grad_()
    assert torch.autograd.gradcheck(inverse, (y, *params))


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    layer = _layer(name, 3)
    if not list(layer.parameters()):
        pytest.skip("a fixed layer has no parameters")
    y, ladj = layer().call_and_ladj(_points(3))
    (y.square().sum() + ladj.sum()).backward()
    for key, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", NAMES)
def test_dtype_follows_the_module(name):
    layer = _layer(name, 2).float()
    z = _points(2).float()
    y, ladj = layer().call_and_ladj(z)
    assert y.dtype == ladj.dtype == torch.float32
    torch.testing.assert_close(layer().inv(y), z, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", AMORTIZABLE)
def test_amortized_layer_gives_each_datapoint_its_own_transform(name):
    d, c = 2, 4
    layer = _layer(name, d, context_dim=c, scale=0.5)
    context = torch.randn(2, c, dtype=torch.float64)
    t = layer(context)
    z = _points(d, n=1).expand(2, d)  # the same point for both datapoints
    y, ladj = t.call_and_ladj(z)
    assert not torch.allclose(y[0], y[1])
    torch.testing.assert_close(t.inv(y), z, rtol=0, atol=1e-8)
    for i in range(2):  # each row is a bijection with its own Jacobian
        ti = layer(context[i])
        torch.testing.assert_close(ladj[i], _log_abs_det(ti, z[i : i + 1])[0], rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="context"):
        layer()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", [0, -1, 2.5, True])
def test_invalid_dimension_is_refused(name, d):
    with pytest.raises(ValueError, match="positive integer"):
        LAYERS[name](d)


@pytest.mark.parametrize("name", COUPLINGS)
def test_coupling_needs_two_dimensions(name):
    with pytest.raises(ValueError, match="d >= 2"):
        LAYERS[name](1)


def test_planar_constraint_holds_for_any_raw_parameters():
    g = torch.Generator().manual_seed(0)
    for scale in [0.1, 1.0, 10.0, 100.0]:
        u = torch.randn(500, 4, generator=g, dtype=torch.float64) * scale
        w = torch.randn(500, 4, generator=g, dtype=torch.float64) * scale
        t = PlanarTransform(u, w, torch.zeros(500, dtype=torch.float64))
        assert (t.s > 0).all()  # w·û = s - 1 > -1, up to the rounding of the dot product
        torch.testing.assert_close(torch.linalg.vecdot(w, t.u_hat), t.s - 1, rtol=1e-9, atol=1e-9)
    # w·u -> -inf: w·û -> -1 from above, and the log-determinant stays finite
    u, w = torch.tensor([-1e3, 0.0]), torch.tensor([1.0, 0.0])
    t = PlanarTransform(u, w, torch.tensor(0.0))
    assert torch.isfinite(t.call_and_ladj(torch.zeros(1, 2))[1]).all()


def test_radial_constraint_holds_for_any_raw_parameters():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 1000, generator=g, dtype=torch.float64) * 30
    t = RadialTransform(torch.zeros(1000, 3, dtype=torch.float64), raw[0], raw[1])
    assert (t.alpha > 0).all() and (t.beta >= -t.alpha).all()


def test_planar_inverse_at_points_it_did_not_sample():
    """log_prob needs the inverse anywhere: check it on a grid far from any sample."""
    t = _layer("planar", 2, scale=1.5)()
    y = torch.cartesian_prod(*(torch.linspace(-8, 8, 41, dtype=torch.float64),) * 2)
    torch.testing.assert_close(t(t.inv(y)), y, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["permutation", "reverse"])
def test_permutations_permute(name):
    torch.manual_seed(0)
    layer = _make(name, 6)
    x = _points(6)
    y, ladj = layer().call_and_ladj(x)
    assert torch.equal(y.sort(-1).values, x.sort(-1).values) and torch.equal(ladj, torch.zeros(7))
    if name == "reverse":
        assert torch.equal(y, x.flip(-1))
    assert torch.equal(layer().inv(y), x)
