"""Properties specific to the Sylvester flows (van den Berg et al. 2018), in float64.

The generic contract (inverse, log-determinant, gradcheck, extreme raw parameters) runs in
tests/test_layer_contract.py and tests/test_transforms.py; here: ``Q`` is orthonormal (the
polar factor for O-SNF), ``M < d``, the log-determinant's closed form, the diagonal constraint,
amortized per-sample transforms, T-SNF's triangular structure, stacking and describe/rebuild.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

import flowvi
from flowvi.distributions import StandardNormal
from flowvi.flows import (
    FlowDistribution,
    SylvesterH,
    SylvesterO,
    SylvesterT,
    build,
    describe,
    rebuild,
)
from flowvi.transforms import SylvesterTransform
from flowvi.transforms.sylvester import householder, orthonormalize

F64 = torch.float64
KINDS = ["sylvester-o", "sylvester-h", "sylvester-t"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randomize(layer, scale=1.0, seed=0):
    g = _gen(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return layer


def _orthonormal_error(q):
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    return (q.mT @ q - eye).abs().max().item()


def _log_abs_det(t, z):
    return torch.stack([torch.linalg.slogdet(jacobian(t, zi))[1] for zi in z])


@pytest.mark.parametrize("m", [6, 3, 1])
def test_orthonormalize_gives_the_polar_factor(m):
    g = _gen(m)
    # a batch of raw matrices with singular values from 1e-3 to 1e3 (condition number 1e6)
    u = torch.linalg.qr(torch.randn(4, 6, m, generator=g, dtype=F64)).Q
    v = torch.linalg.qr(torch.randn(4, m, m, generator=g, dtype=F64)).Q
    sigma = torch.logspace(-3, 3, m, dtype=F64) if m > 1 else torch.tensor([1e-3], dtype=F64)
    raw = u @ torch.diag_embed(sigma.expand(4, m)) @ v.mT
    q = orthonormalize(raw)
    assert q.shape == (4, 6, m)
    assert _orthonormal_error(q) < 1e-12
    svd_u, _, svd_vh = torch.linalg.svd(raw, full_matrices=False)
    torch.testing.assert_close(q, svd_u @ svd_vh, rtol=0, atol=1e-10)
    q32 = orthonormalize(raw.float())
    assert q32.dtype == torch.float32 and _orthonormal_error(q32) < 1e-5


def test_orthonormalize_is_differentiable_with_fewer_columns_than_rows():
    raw = torch.randn(5, 2, generator=_gen(1), dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(orthonormalize, (raw,))


@pytest.mark.parametrize("shape", [(3, 6, 6), (3, 7, 4), (2, 5, 1), (2, 3, 5, 4)])
def test_orthonormalize_gradient_is_the_polar_factors(shape):
    """The analytic backward equals autograd through the SVD's polar factor U Vᵀ, square and
    tall, batched over one or two dimensions, and works under torch.func."""
    g = _gen(len(shape) + shape[-1])
    raw = torch.randn(*shape, generator=g, dtype=F64).requires_grad_()
    weights = torch.randn(*shape, generator=g, dtype=F64)
    (grad,) = torch.autograd.grad((orthonormalize(raw) * weights).sum(), raw)
    u, _, vh = torch.linalg.svd(raw, full_matrices=False)
    (expected,) = torch.autograd.grad(((u @ vh) * weights).sum(), raw)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    functional = torch.func.grad(lambda q: (orthonormalize(q) * weights).sum())(raw.detach())
    torch.testing.assert_close(functional, grad, rtol=0, atol=0)


def test_orthonormalize_refuses_what_it_cannot_orthonormalize():
    with pytest.raises(ValueError, match="linearly dependent"):
        orthonormalize(torch.ones(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="linearly dependent"):
        orthonormalize(torch.full((3, 2), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="M <= d"):
        orthonormalize(torch.randn(2, 3, dtype=F64))


def test_householder_product_is_orthogonal_at_any_scale():
    g = _gen(2)
    v = torch.randn(3, 5, 4, generator=g, dtype=F64)
    v[0, 1] *= 1e-200  # under- and overflow-prone norms
    v[1, 2] *= 1e200
    q = householder(v)
    assert q.shape == (3, 4, 4) and _orthonormal_error(q) < 1e-12
    # one reflection: the closed form I - 2 v vᵀ / ‖v‖², which depends on v's direction only
    w = v[2, 0]
    expected = torch.eye(4, dtype=F64) - 2 * torch.outer(w, w) / (w @ w)
    torch.testing.assert_close(householder(w[None]), expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(householder(-1e-250 * w[None]), expected, rtol=0, atol=1e-14)
    # a zero vector is the identity, not NaN
    torch.testing.assert_close(householder(torch.zeros(1, 4, dtype=F64)), torch.eye(4, dtype=F64))
    assert torch.autograd.gradcheck(householder, (v[2, :2].clone().requires_grad_(),))


@pytest.mark.parametrize("layer", [SylvesterO(5), SylvesterO(5, m=2), SylvesterH(5)])
def test_layer_q_has_orthonormal_columns(layer):
    t = _randomize(layer.double(), scale=2.0)()
    assert t.q.shape == (5, layer.m)
    assert _orthonormal_error(t.q) < 1e-12


@pytest.mark.parametrize("m", [1, 2])
def test_fewer_hidden_units_than_dimensions(m):
    layer = _randomize(SylvesterO(5, m=m).double(), scale=1.5, seed=m)
    t = layer()
    z = torch.randn(6, 5, generator=_gen(3), dtype=F64) * 3
    y, ladj = t.call_and_ladj(z)
    torch.testing.assert_close(t.inv(y), z, rtol=0, atol=1e-10)
    torch.testing.assert_close(ladj, _log_abs_det(t, z), rtol=0, atol=1e-10)
    x, inv_ladj = t.inv.call_and_ladj(y)
    torch.testing.assert_close(x, z, rtol=0, atol=1e-10)
    torch.testing.assert_close(inv_ladj, -ladj, rtol=0, atol=1e-10)
    # the d - M directions orthogonal to Q's columns are left unchanged
    moved = (y - z) - (y - z) @ t.q @ t.q.mT
    assert moved.abs().max() < 1e-12
    assert (y - z).abs().max() > 1e-2


def test_log_det_closed_form():
    """ln|det J| = Σ_i ln|1 + r_ii r̃_ii (1 - t_i²)|, t = tanh(R̃ Qᵀ z + b) (their Section 2),
    with r_ii = tanh(ρ_i), r̃_ii = tanh(ρ̃_i), written out here from the raw parameters."""
    g = _gen(4)
    q = orthonormalize(torch.randn(4, 3, generator=g, dtype=F64))
    r, r_tilde = torch.randn(2, 3, 3, generator=g, dtype=F64)
    b = torch.randn(3, generator=g, dtype=F64)
    t = SylvesterTransform(q, r, r_tilde, b)
    z = torch.randn(8, 4, generator=g, dtype=F64)
    big_r = torch.triu(r, 1) + torch.diag(torch.tanh(r.diagonal()))
    big_rt = torch.triu(r_tilde, 1) + torch.diag(torch.tanh(r_tilde.diagonal()))
    h = torch.tanh(z @ q @ big_rt.T + b)
    y_expected = z + h @ (q @ big_r).T
    diag = big_r.diagonal() * big_rt.diagonal()
    ladj_expected = torch.log((1 + diag * (1 - h * h)).abs()).sum(-1)
    y, ladj = t.call_and_ladj(z)
    torch.testing.assert_close(y, y_expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(ladj, ladj_expected, rtol=0, atol=1e-13)


def test_diagonal_constraint_holds_for_any_raw_parameters():
    g = _gen(5)
    eye = torch.eye(4, dtype=F64)
    q = eye
    for scale in [1.0, 10.0, 100.0, 1000.0]:
        raw = torch.randn(2, 500, 4, generator=g, dtype=F64) * scale
        t = SylvesterTransform(q, raw[0, :, :, None] * eye, raw[1, :, :, None] * eye, raw[0] * 0)
        assert (t.c >= -1).all() and (t.s > 0).all()  # r_ii r̃_ii >= -1 after rounding
        # s = 1 + r_ii r̃_ii = cosh(ρ + ρ̃) / (cosh ρ cosh ρ̃), to rounding, wherever cosh is finite
        rho, rho_tilde = raw
        moderate = raw.abs().amax(0) < 300
        exact = torch.cosh(rho + rho_tilde) / (torch.cosh(rho) * torch.cosh(rho_tilde))
        torch.testing.assert_close(t.s[moderate], exact[moderate], rtol=1e-12, atol=0)
        far = 1 + t.c > 1e-3  # there 1 + r_ii r̃_ii is itself far above rounding
        torch.testing.assert_close(t.s[far], 1 + t.c[far], rtol=1e-12, atol=0)
    # r_ii r̃_ii rounds to -1, yet 1 + r_ii r̃_ii = 1 / cosh²(30) exactly, and ladj stays finite
    t = SylvesterTransform(
        eye[:1, :1],
        torch.full((1, 1), 30.0, dtype=F64),
        torch.full((1, 1), -30.0, dtype=F64),
        torch.zeros(1, dtype=F64),
    )
    assert t.c.item() == -1.0
    assert t.s.item() == pytest.approx(1 / torch.cosh(torch.tensor(30.0, dtype=F64)).item() ** 2)
    _, ladj = t.call_and_ladj(torch.zeros(1, 1, dtype=F64))
    assert torch.isfinite(ladj).all() and ladj.item() == pytest.approx(t.s.log().item())


@pytest.mark.parametrize("name", KINDS)
def test_amortized_layers_give_per_sample_transforms(name):
    d, c, n = 4, 3, 5
    torch.manual_seed(0)
    kwargs = {"m": 2} if name == "sylvester-o" else {}
    layer = flowvi.flows.LAYERS[name](d, context_dim=c, **kwargs).double()
    with torch.no_grad():
        layer.head.weight.normal_(0.0, 0.7)
    context = torch.randn(n, c, generator=_gen(6), dtype=F64)
    t = layer(context)
    if name != "sylvester-t":
        assert t.q.shape == (n, d, layer.m) and _orthonormal_error(t.q) < 1e-12
        assert (t.q[0] - t.q[1]).abs().max() > 1e-3  # each datapoint its own Q
    z = torch.randn(n, d, generator=_gen(7), dtype=F64) * 2
    y, ladj = t.call_and_ladj(z)
    same = t(z[:1].expand(n, d))
    assert (same[0] - same[1]).abs().max() > 1e-3
    torch.testing.assert_close(t.inv(y), z, rtol=0, atol=1e-10)
    for i in range(n):
        ti = layer(context[i])
        yi, li = ti.call_and_ladj(z[i : i + 1])
        torch.testing.assert_close(yi[0], y[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(li[0], ladj[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(li, _log_abs_det(ti, z[i : i + 1]), rtol=0, atol=1e-10)
    # a sample axis in front of the batch broadcasts against the per-datapoint parameters
    zs = torch.randn(2, n, d, generator=_gen(8), dtype=F64)
    ys, ladjs = t.call_and_ladj(zs)
    assert ys.shape == (2, n, d) and ladjs.shape == (2, n)
    torch.testing.assert_close(t.inv(ys), zs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("flip", [False, True])
def test_triangular_layer_has_a_triangular_jacobian(flip):
    t = _randomize(SylvesterT(4, flip=flip).double(), scale=1.0)()
    jac = jacobian(t, torch.randn(1, 4, generator=_gen(9), dtype=F64))[0, :, 0, :]
    ignored = torch.tril(jac, -1) if not flip else torch.triu(jac, 1)
    kept = torch.triu(jac, 1) if not flip else torch.tril(jac, -1)
    assert ignored.abs().max() == 0 and kept.abs().max() > 1e-3


def test_build_alternates_the_triangular_flip_and_describe_rebuild_round_trip():
    flow = build("sylvester-t", 3, length=3)
    assert [layer.spec["flip"] for layer in flow.layers] == [False, True, False]
    torch.manual_seed(0)
    layers = [SylvesterO(4, m=2), SylvesterH(4, reflections=2), SylvesterT(4, flip=True)]
    layers.append(SylvesterO(4, context_dim=3))
    flow = flowvi.NormalizingFlow(StandardNormal(4), layers).double()
    spec = describe(flow)
    assert [entry.get("m") for entry in spec["layers"]] == [2, None, None, 4]
    again = rebuild(spec).double()
    assert describe(again) == spec
    again.load_state_dict(flow.state_dict())  # the same parameter and buffer shapes
    context = torch.randn(5, 3, generator=_gen(10), dtype=F64)
    x = torch.randn(5, 4, generator=_gen(11), dtype=F64)
    torch.testing.assert_close(
        again.log_prob(x, context=context), flow.log_prob(x, context=context), rtol=0, atol=0
    )


def test_stacked_build_equals_per_layer_build():
    torch.manual_seed(0)
    layers = [SylvesterO(3), SylvesterO(3), SylvesterH(3), SylvesterH(3)]
    layers += [SylvesterT(3), SylvesterT(3, flip=True), SylvesterO(3, m=1), SylvesterO(3, m=1)]
    flow = _randomize(flowvi.NormalizingFlow(StandardNormal(3), layers).double(), scale=1.2)
    stacked = flow()
    separate = FlowDistribution(flow.base(), [layer() for layer in flow.layers])
    z = torch.randn(20, 3, generator=_gen(12), dtype=F64)
    y1, l1 = stacked.flow.call_and_ladj(z)
    y2, l2 = separate.flow.call_and_ladj(z)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(l1, l2, rtol=0, atol=1e-12)
    torch.testing.assert_close(stacked.log_prob(y1), separate.log_prob(y1), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SylvesterO, {"m": 0}, "positive integer"),
        (SylvesterO, {"m": 2.5}, "positive integer"),
        (SylvesterO, {"m": 4}, "at most d"),
        (SylvesterH, {"reflections": 0}, "positive integer"),
    ],
)
def test_bad_arguments_are_refused(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(3, **kwargs)
