"""The QR linear layer (W = Q R, Q a Householder product), and the linear-Gaussian limit.

The layer contract (inverse, log-det against autograd, gradients, dtypes, amortization) runs over
``qr`` in tests/test_layer_contract.py and tests/test_transforms.py; here: the map is the matrix
it claims, it reaches any invertible matrix, and a stack of linear layers applied to a Gaussian
is exactly the Gaussian with the implied covariance.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from flowvi.distributions import StandardNormal
from flowvi.flows import (
    LAYERS,
    LU,
    QR,
    Affine,
    NormalizingFlow,
    Permutation,
    TriangularAffine,
    build,
    describe,
    rebuild,
)
from flowvi.transforms import QRTransform

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reflection(v: torch.Tensor) -> torch.Tensor:
    """The Householder matrix I - 2 v vᵀ / ‖v‖² built directly (the identity for v = 0)."""
    eye = torch.eye(len(v), dtype=v.dtype)
    return eye if not v.any() else eye - 2 * torch.outer(v, v) / (v @ v)


def test_qr_is_the_matrix_q_r_with_the_stated_log_det():
    d, k = 4, 3
    g = _gen(0)
    v = torch.randn(k, d, generator=g, dtype=F64)
    upper = torch.randn(d, d, generator=g, dtype=F64)
    log_diag = torch.randn(d, generator=g, dtype=F64)
    bias = torch.randn(d, generator=g, dtype=F64)
    q = _reflection(v[0]) @ _reflection(v[1]) @ _reflection(v[2])
    r = torch.diag(log_diag.exp()) @ (torch.eye(d, dtype=F64) + torch.triu(upper, 1))
    w = q @ r
    z = torch.randn(6, d, generator=g, dtype=F64)
    y, ladj = QRTransform(v, upper, log_diag, bias).call_and_ladj(z)
    torch.testing.assert_close(y, z @ w.T + bias, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.T @ q, torch.eye(d, dtype=F64), rtol=0, atol=1e-14)
    sign, logabs = torch.linalg.slogdet(w)
    torch.testing.assert_close(ladj, logabs.expand(6), rtol=0, atol=1e-12)
    assert float(sign) == -1.0  # three reflections: det Q = -1, which LU with e^ℓ cannot reach


def _householder_qr(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflection vectors ``v: (d, d)`` and upper triangular ``r`` with a positive diagonal such
    that ``a = H(v_1) ... H(v_d) r`` (Householder QR, each step sending a column to +‖x‖ e_1)."""
    d = len(a)
    r, vs = a.clone(), []
    for k in range(d):
        x = r[k:, k]
        v = x.clone()
        v[0] -= torch.linalg.vector_norm(x)
        v = torch.cat([torch.zeros(k, dtype=a.dtype), v])
        if k == d - 1:  # a 1-vector: reflect only if its entry is negative
            v = torch.zeros(d, dtype=a.dtype)
            v[k] = float(x[0] < 0)
        r = _reflection(v) @ r
        vs.append(v)
    return torch.stack(vs), torch.triu(r)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qr_reaches_any_invertible_matrix(seed):
    d = 4
    a = torch.randn(d, d, generator=_gen(seed), dtype=F64)
    v, r = _householder_qr(a)
    diag = torch.diagonal(r)
    assert (diag > 0).all()
    t = QRTransform(v, r / diag.unsqueeze(-1), diag.log(), torch.zeros(d, dtype=F64))
    z = torch.randn(5, d, generator=_gen(10 + seed), dtype=F64)
    torch.testing.assert_close(t(z), z @ a.T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(t.inv(z @ a.T), z, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        t.log_abs_det_jacobian(z, None), torch.linalg.slogdet(a)[1].expand(5), rtol=0, atol=1e-10
    )


def test_qr_layer_starts_volume_preserving_and_round_trips_its_description():
    torch.manual_seed(0)
    layer = QR(3).double()
    t = layer()
    torch.testing.assert_close(t.q @ t.q.T, torch.eye(3, dtype=F64), rtol=0, atol=1e-14)
    assert not torch.allclose(t.q.abs(), torch.eye(3, dtype=F64))  # a random rotation/reflection
    assert torch.equal(t.call_and_ladj(torch.ones(2, 3, dtype=F64))[1], torch.zeros(2, dtype=F64))
    flow = build("qr", 3, length=2)
    spec = describe(flow)
    assert spec["layers"] == [{"layer": "qr", "context_dim": None, "reflections": 3, "count": 2}]
    assert describe(rebuild(spec)) == spec
    assert LAYERS["qr"](5, reflections=2).params["v"].shape == (2, 5)
    with pytest.raises(ValueError, match="reflections"):
        QR(3, reflections=0)


def _linear_flow(d: int) -> NormalizingFlow:
    torch.manual_seed(1)
    layers = [QR(d), LU(d), Permutation(d), TriangularAffine(d), Affine(d), QR(d, reflections=1)]
    flow = NormalizingFlow(StandardNormal(d), layers).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 0.5)
    return flow


def test_a_linear_flow_of_a_gaussian_is_exactly_the_implied_gaussian():
    """x = A z + c for any stack of linear layers, so q = N(c, A Aᵀ): no depth adds shape."""
    d = 3
    flow = _linear_flow(d)
    f = flow().flow
    with torch.no_grad():
        c = f(torch.zeros(1, d, dtype=F64))[0]
        a = (f(torch.eye(d, dtype=F64)) - c).T  # column j is A e_j
        gaussian = MultivariateNormal(c, covariance_matrix=a @ a.T)
        x = c + 3 * torch.randn(200, d, generator=_gen(5), dtype=F64)
        torch.testing.assert_close(flow.log_prob(x), gaussian.log_prob(x), rtol=1e-11, atol=1e-9)
        # and the map really is affine: f at a combination is the combination of images
        z = torch.randn(4, d, generator=_gen(6), dtype=F64)
        torch.testing.assert_close(f(z), z @ a.T + c, rtol=0, atol=1e-12)
        x, log_q = flow.rsample_and_log_prob((300,))
        torch.testing.assert_close(log_q, gaussian.log_prob(x), rtol=1e-11, atol=1e-9)
