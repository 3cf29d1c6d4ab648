"""The residual flow layer: spectral normalization, fixed-point inverse, log-determinant modes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.func import jacrev, vmap

from flowvi import load, save
from flowvi.distributions import StandardNormal
from flowvi.flows import LAYERS, NormalizingFlow, Residual, build, describe, rebuild
from flowvi.flows import residual as residual_module
from flowvi.transforms import ResidualTransform
from flowvi.transforms.residual import (
    fixed_point_tolerance,
    lipswish,
    lipswish_slope,
    log_det_series,
    series_bias_bound,
)

F64 = torch.float64


def _layer(d, *, hidden=(8, 8), scale=1.0, seed=0, **kwargs):
    """A layer with raw weights at ``scale`` times the 1/sqrt(fan_in) size (``scale`` large:
    every weight is cut down to spectral norm c)."""
    torch.manual_seed(seed)
    layer = Residual(d, hidden=hidden, **kwargs).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, scale / p.shape[-1] ** 0.5 if p.dim() == 2 else 1.0)
    return layer


def _points(n, d, *, scale=2.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64) * scale


def _autograd_jacobian(fn, z):
    """``∂fn/∂z`` per row of ``z: (n, d)``, by torch.func (vmap of jacrev): ``(n, d, d)``."""
    return vmap(jacrev(fn))(z)


def test_lipswish_is_one_lipschitz_and_its_slope_is_exact():
    a = torch.linspace(-40, 40, 20001, dtype=F64, requires_grad=True)
    (slope,) = torch.autograd.grad(lipswish(a).sum(), a)
    torch.testing.assert_close(lipswish_slope(a.detach()), slope, rtol=0, atol=1e-14)
    assert slope.abs().max() <= 1.0 and slope.max() > 0.999  # sup ≈ 1.0998 / 1.1


@pytest.mark.parametrize("scale", [0.3, 3.0, 1e3])
def test_normalized_weights_have_spectral_norm_at_most_coeff(scale):
    """Lip(g) < 1 holds for the weights the layer actually uses: σ_max by SVD <= c."""
    coeff = 0.7
    layer = _layer(3, hidden=(16, 5), scale=scale, coeff=coeff)
    t = layer()
    for raw, used in zip([lin.weight for lin in layer.net], t.weights, strict=True):
        sigma = torch.linalg.matrix_norm(raw.detach(), ord=2)
        norm = torch.linalg.matrix_norm(used.detach(), ord=2)
        assert norm <= coeff + 1e-10
        # W / max(1, σ/c): cut down to exactly c when σ > c, untouched otherwise
        torch.testing.assert_close(norm, torch.clamp_max(sigma, coeff), rtol=1e-10, atol=0)
    # and g is then a contraction with constant c^L on random pairs of points
    a, b = _points(200, 3, scale=3.0), _points(200, 3, scale=3.0, seed=2)
    ratio = (t.g(a) - t.g(b)).norm(dim=-1) / (a - b).norm(dim=-1)
    assert ratio.max() <= coeff ** len(t.weights) == t.lipschitz


def test_spectral_norm_while_training_and_at_rest():
    """Training in float32 (large Adam steps): each call's weights stay within 2% of c, far
    inside the margin 1/c - 1 that invertibility needs; once the weights rest, the estimates
    converge and the bound holds to rounding."""
    torch.manual_seed(0)
    layer = Residual(2, hidden=(16, 16))
    opt = torch.optim.Adam(layer.parameters(), lr=0.02)
    z = torch.randn(64, 2)
    for _ in range(25):
        t = layer()
        worst = max(torch.linalg.matrix_norm(w.detach().double(), ord=2) for w in t.weights)
        assert worst <= 1.02 * layer.coeff
        x, ladj = t.call_and_ladj(z)
        loss = -(ladj - 0.5 * x.square().sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer.double()
    for _ in range(5):  # a few calls (at most POWER_MAX_ITER steps each) at fixed weights
        weights = layer().weights
    for w in weights:
        assert torch.linalg.matrix_norm(w.detach(), ord=2) <= layer.coeff + 1e-10


def test_power_iteration_underestimates_and_converges(monkeypatch):
    """σ̂ = ‖W v‖ <= σ after any number of steps, rising to σ (hence the iteration to
    convergence rather than one step per call)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 30, 20, generator=g, dtype=F64)
    sigma = torch.linalg.matrix_norm(w[0], ord=2)
    v0 = torch.randn(1, 20, generator=g, dtype=F64)
    v0 = v0 / v0.norm()
    estimates = []
    for steps in [1, 2, 4, 8]:
        monkeypatch.setattr(residual_module, "POWER_MAX_ITER", steps)
        estimates.append(float((w @ residual_module.power_iteration(w, v0)[0]).norm()))
    assert all(e <= float(sigma) * (1 + 1e-15) for e in estimates)
    assert estimates == sorted(estimates) and estimates[0] < float(sigma) * (1 - 1e-6)
    monkeypatch.undo()
    v = residual_module.power_iteration(w, v0)
    torch.testing.assert_close((w[0] @ v[0]).norm(), sigma, rtol=1e-12, atol=0)


def test_zero_weight_keeps_its_singular_vectors():
    """The last layer starts at zero (identity map): its power iteration must not collapse."""
    layer = Residual(2, hidden=(4,)).double()
    z = _points(5, 2)
    x, ladj = layer().call_and_ladj(z)
    torch.testing.assert_close(x, z, rtol=0, atol=0)
    torch.testing.assert_close(ladj, torch.zeros(5, dtype=F64), rtol=0, atol=0)
    assert torch.allclose(layer.right.norm(dim=-1), torch.ones(2, dtype=F64))
    with torch.no_grad():
        layer.net[-1].weight.fill_(5.0)
    norm = torch.linalg.matrix_norm(layer().weights[-1].detach(), ord=2)
    torch.testing.assert_close(norm, torch.tensor(0.9, dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 6])
def test_exact_log_det_equals_slogdet_of_the_autograd_jacobian(d):
    t = _layer(d, scale=3.0, logdet="exact")()
    z = _points(9, d)
    _, ladj = t.call_and_ladj(z)
    jac = _autograd_jacobian(t, z)
    torch.testing.assert_close(ladj, torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(t.jacobian_g(z), _autograd_jacobian(t.g, z), rtol=0, atol=1e-12)


def test_auto_mode_is_exact_up_to_four_dimensions():
    assert Residual(4)().exact and not Residual(5)().exact
    assert Residual(5, logdet="exact")().exact and not Residual(2, logdet="series")().exact


@pytest.mark.parametrize("shape", [(7,), (3, 4), ()])
def test_fixed_point_inverse_to_1e10(shape):
    t = _layer(3, scale=3.0, coeff=0.95)()
    z = torch.randn(*shape, 3, dtype=F64) * 5
    x = t(z)
    torch.testing.assert_close(t.inv(x), z, rtol=0, atol=1e-10)
    torch.testing.assert_close(t(t.inv(x)), x, rtol=0, atol=1e-10)


def test_inverse_rate_is_geometric(monkeypatch):
    """‖z_k - z*‖ <= L^k ‖z_0 - z*‖ (Banach): the iterates approach the inverse at least as
    fast as the bound."""
    t = _layer(2, scale=3.0, coeff=0.95, hidden=(16,))()
    z = _points(50, 2, scale=3.0)
    x = t(z)
    iterate, errors = x, [(x - z).norm(dim=-1)]
    for _ in range(30):
        iterate = x - t.g(iterate)
        errors.append((iterate - z).norm(dim=-1))
    for k, err in enumerate(errors):
        assert (err <= t.lipschitz**k * errors[0] + 1e-12).all()


def test_inverse_that_cannot_converge_raises():
    w = [torch.eye(2, dtype=F64) * -3.0]  # g(z) = -3 z: Lip 3, not a contraction
    t = ResidualTransform(w, [torch.zeros(2, dtype=F64)], lipschitz=0.5)
    with pytest.raises(RuntimeError, match="did not converge"):
        t.inv(torch.ones(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        _layer(2)().inv(torch.tensor([[math.nan, 0.0]], dtype=F64))


@pytest.mark.parametrize(
    ("coeff", "hidden"), [(0.9, (64, 64)), (0.99, ())], ids=["L=0.729", "L=0.99"]
)
def test_float32_inverse_converges_at_the_stated_bound(coeff, hidden):
    """Float32 rows with one large component and small others: the changes settle at rounding
    level relative to the row's scale (its largest component feeds every output through the
    weights), not each component's, and grow like 1/(1 - L); an elementwise tolerance of
    64 eps refused these valid points as "not a contraction with Lipschitz bound 0.729"."""
    torch.manual_seed(0)
    layer = Residual(4, hidden=hidden, coeff=coeff)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 3.0 / p.shape[-1] ** 0.5 if p.dim() == 2 else 3.0)
        t = layer()
    assert t.lipschitz == pytest.approx(coeff ** (len(hidden) + 1))
    x = torch.randn(512, 4) * 0.01
    x[:, 0] = torch.linspace(-1e4, 1e4, 512)
    z = t.inv(x)
    scale = 1 + x.abs().amax(-1, keepdim=True)
    tol = fixed_point_tolerance(torch.float32, t.lipschitz)
    assert ((t(z) - x).abs() / scale).max() <= 2 * tol  # one more step's change
    # against the float64 inverse of the same weights: ‖z_k - z*‖ <= L/(1 - L) ‖Δ_k‖
    t64 = ResidualTransform(
        [w.double() for w in t.weights], [b.double() for b in t.biases], lipschitz=t.lipschitz
    )
    error = ((z.double() - t64.inv(x.double())).abs() / scale).max()
    assert error <= 2 * t.lipschitz / (1 - t.lipschitz) * tol


def test_inverse_gradient_is_the_implicit_gradient():
    """∂z*/∂x = (I + J_g(z*))⁻¹, against the explicit inverse Jacobian."""
    t = _layer(3, scale=3.0)()
    x = _points(4, 3)
    jac = torch.stack([jacobian(t.inv, xi) for xi in x])  # autograd (no torch.func for it)
    z = t.inv(x)
    expected = torch.linalg.inv(torch.eye(3, dtype=F64) + t.jacobian_g(z))
    torch.testing.assert_close(jac, expected, rtol=0, atol=1e-9)


def test_series_with_exact_traces_converges_to_the_exact_log_det():
    t = _layer(5, scale=3.0, logdet="exact", coeff=0.95)()
    z = _points(6, 5)
    exact = t.call_and_ladj(z)[1]
    jac = t.jacobian_g(z)
    errors = [(log_det_series(jac, n) - exact).abs().max() for n in (2, 8, 32, 400)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-12


def test_truncation_bias_bound_holds():
    """|ln det(I + J) - S_n| <= Σ_{k>n} d L^k / k for every n, on a layer cut to the bound."""
    d = 6
    t = _layer(d, scale=10.0, hidden=(), coeff=0.9, logdet="exact")()  # g affine: Lip = c
    z = _points(4, d)
    exact = t.call_and_ladj(z)[1]
    jac = t.jacobian_g(z)
    assert torch.linalg.matrix_norm(jac, ord=2).max() <= t.lipschitz + 1e-12
    for n in range(1, 16):
        error = (log_det_series(jac, n) - exact).abs().max()
        bound = series_bias_bound(d, t.lipschitz, n)
        assert error <= bound, (n, float(error), bound)
    assert series_bias_bound(d, 0.9, 10) == pytest.approx(
        d * sum(0.9**k / k for k in range(11, 2000)), rel=1e-10
    )


def test_hutchinson_series_is_unbiased_with_the_predicted_variance():
    """The mean over many Rademacher probes approaches the truncated series with exact
    traces within a few standard errors, and the spread matches Var = 2 Σ_{i≠j} sym(P)_ij²."""
    d, n_terms, m = 5, 6, 4000
    t = _layer(d, scale=3.0, logdet="series", n_terms=n_terms)()
    z = _points(1, d).expand(m, d)  # the same point m times: m independent probes
    torch.manual_seed(0)
    estimates = t.call_and_ladj(z)[1]
    jac = t.jacobian_g(z[:1])[0]
    truncated = log_det_series(jac, n_terms)
    mean, std = estimates.mean(), estimates.std()
    assert (mean - truncated).abs() <= 4 * std / math.sqrt(m)
    poly = sum((-1) ** (k + 1) * torch.linalg.matrix_power(jac, k) / k for k in range(1, 7))
    sym = (poly + poly.mT) / 2
    variance = 2 * (sym.square().sum() - sym.diagonal().square().sum())
    torch.testing.assert_close(std.square(), variance, rtol=0.1, atol=0)
    # more probes per sample: the variance falls like 1/m
    t4 = _layer(d, scale=3.0, logdet="series", n_terms=n_terms, n_probes=4)()
    spread = t4.call_and_ladj(z)[1].var()
    torch.testing.assert_close(spread, variance / 4, rtol=0.15, atol=0)


def test_series_mode_gradients_reach_every_parameter():
    layer = _layer(6, scale=2.0)
    x, ladj = layer().call_and_ladj(_points(8, 6))
    (x.square().sum() + ladj.sum()).backward()
    for key, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, key


def test_two_calls_before_backward():
    """The buffers are updated in place on each call; the graph must not hold them."""
    layer = _layer(2, scale=3.0)
    z = _points(4, 2)
    first = layer().call_and_ladj(z)[1].sum()
    second = layer().call_and_ladj(z)[1].sum()
    (first + second).backward()


def test_float32_and_flow_log_prob():
    torch.manual_seed(0)
    flow = build("residual", 2, length=3, hidden=(8,))
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 1.0)
    x, log_q = flow.rsample_and_log_prob((64,))
    assert x.dtype == log_q.dtype == torch.float32
    torch.testing.assert_close(flow.log_prob(x), log_q, rtol=1e-4, atol=1e-4)
    assert [lin.out_features for lin in flow.layers[0].net] == [8, 2]


def test_describe_rebuild_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    layers = [Residual(5, hidden=(6, 7), coeff=0.8, logdet="exact", n_terms=4) for _ in range(2)]
    flow = NormalizingFlow(StandardNormal(5), layers).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 1.0)
    spec = describe(flow)
    assert spec["layers"] == [
        {
            "layer": "residual",
            "context_dim": None,
            "hidden": [6, 7],
            "coeff": 0.8,
            "logdet": "exact",
            "n_terms": 4,
            "n_probes": 1,
            "count": 2,
        }
    ]
    assert describe(rebuild(spec)) == spec
    x = flow.sample((5,))
    save(flow, tmp_path)
    loaded = load(tmp_path)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(loaded.layers[0].right, flow.layers[0].right, rtol=0, atol=0)


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="not amortized"):
        LAYERS["residual"](2, context_dim=3)
    for coeff in [0.0, 1.0, 1.5, -0.1, True]:
        with pytest.raises(ValueError, match="coeff"):
            Residual(2, coeff=coeff)
    with pytest.raises(ValueError, match="logdet"):
        Residual(2, logdet="roulette")
    with pytest.raises(ValueError, match="series terms"):
        Residual(2, n_terms=0)
    with pytest.raises(ValueError, match="hidden"):
        Residual(2, hidden=(4, 0))
    w, b = [torch.eye(2)], [torch.zeros(2)]
    with pytest.raises(ValueError, match="lipschitz"):
        ResidualTransform(w, b, lipschitz=1.0)
    with pytest.raises(ValueError, match="chain"):
        ResidualTransform([torch.eye(2), torch.ones(3, 3)], [torch.zeros(2)] * 2, lipschitz=0.5)
    with pytest.raises(ValueError, match="Lipschitz"):
        series_bias_bound(2, 1.0, 3)
