"""Conjugate normal-mean inference and the Gaussian KL identities: closed forms checked against
independent computations (hand formulas, quadrature, the joint Gaussian of the data, autograd)."""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from flowvi.inference import NormalMean, gaussian_kl, kl_standard_normal

F64 = torch.float64


def data(n=7, *event, seed=0, loc=1.3, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return loc + scale * torch.randn(n, *event, generator=g, dtype=F64)


MODEL = NormalMean(sigma=2.0, prior_mean=-0.5, prior_std=1.5)
PRIOR = Normal(torch.tensor(-0.5, dtype=F64), torch.tensor(1.5, dtype=F64))


def test_posterior_equals_the_closed_form():
    x = data(7)
    n, xbar = len(x), float(x.mean())
    s2, t2, m0 = 2.0**2, 1.5**2, -0.5
    precision = 1 / t2 + n / s2  # written out by hand, independently of the module
    post = MODEL.posterior(x)
    assert isinstance(post, Normal)
    assert abs(float(post.mean) - (m0 / t2 + n * xbar / s2) / precision) < 1e-12
    assert abs(float(post.stddev) - precision**-0.5) < 1e-12
    assert abs(float(MODEL.map(x)) - float(post.mean)) < 1e-15
    assert abs(float(MODEL.mle(x)) - xbar) < 1e-15


def test_posterior_equals_normalized_prior_times_likelihood_by_quadrature():
    x = data(5, seed=3)
    mu = torch.linspace(-12, 12, 40_001, dtype=F64)
    log_joint = MODEL.log_likelihood(x, mu) + PRIOR.log_prob(mu)
    w = torch.softmax(log_joint, 0)  # trapezoid = Riemann sum here (tails are ~0)
    mean = (w * mu).sum()
    var = (w * (mu - mean) ** 2).sum()
    post = MODEL.posterior(x)
    assert abs(float(mean - post.mean)) < 1e-10
    assert abs(float(var - post.variance)) < 1e-10
    # and the evidence is the normalizer of the same integrand
    h = float(mu[1] - mu[0])
    log_z = torch.logsumexp(log_joint, 0) + math.log(h)
    assert abs(float(log_z - MODEL.log_evidence(x))) < 1e-9


def test_log_likelihood_is_the_sum_of_normal_log_densities():
    x = data(6, 3, seed=1)
    mu = torch.randn(4, 3, dtype=F64)
    expected = Normal(mu[:, None, :], 2.0).log_prob(x).sum((-2, -1))
    assert torch.allclose(MODEL.log_likelihood(x, mu), expected, atol=1e-11, rtol=0)


def test_vector_data_are_independent_coordinates():
    x = data(9, 3, seed=2)
    post = MODEL.posterior(x)
    assert isinstance(post, Independent) and post.event_shape == (3,)
    for j in range(3):
        one = MODEL.posterior(x[:, j])
        assert abs(float(post.mean[j] - one.mean)) < 1e-14
        assert abs(float(post.stddev[j] - one.stddev)) < 1e-14
    total = sum(MODEL.log_evidence(x[:, j]) for j in range(3))
    assert abs(float(MODEL.log_evidence(x) - total)) < 1e-11


def test_evidence_is_the_joint_gaussian_of_the_data():
    x = data(6, seed=4)
    n = len(x)
    cov = 2.0**2 * torch.eye(n, dtype=F64) + 1.5**2 * torch.ones(n, n, dtype=F64)
    joint = MultivariateNormal(torch.full((n,), -0.5, dtype=F64), cov)
    assert abs(float(joint.log_prob(x) - MODEL.log_evidence(x))) < 1e-11


def test_posterior_predictive_is_the_ratio_of_evidences():
    x = data(5, seed=5)
    new = torch.tensor([-1.0, 0.3, 4.0], dtype=F64)
    ratio = torch.stack([MODEL.log_evidence(torch.cat([x, v[None]])) for v in new])
    ratio = ratio - MODEL.log_evidence(x)
    assert torch.allclose(MODEL.posterior_predictive(x).log_prob(new), ratio, atol=1e-11, rtol=0)


def test_map_is_a_stationary_point_of_the_log_posterior_and_tends_to_the_mle():
    x = data(8, seed=6)
    mu = MODEL.map(x).clone().requires_grad_()
    (MODEL.log_likelihood(x, mu) + PRIOR.log_prob(mu)).backward()
    assert abs(float(mu.grad)) < 1e-12
    flat = NormalMean(sigma=2.0, prior_mean=-0.5, prior_std=1e6)
    assert abs(float(flat.map(x) - flat.mle(x))) < 1e-9


def test_elbo_of_a_gaussian_guide_is_evidence_minus_kl_to_the_posterior():
    x = data(10, 2, seed=7)
    post = MODEL.posterior(x)
    assert torch.allclose(
        MODEL.elbo(x, post.mean, post.stddev), MODEL.log_evidence(x), atol=1e-11, rtol=0
    )
    loc = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]], dtype=F64)
    scale = torch.tensor([[0.3, 1.2], [0.7, 0.2], [1.0, 1.0]], dtype=F64)
    q = Independent(Normal(loc, scale), 1)
    gap = MODEL.log_evidence(x) - MODEL.elbo(x, loc, scale)
    assert torch.allclose(gap, gaussian_kl(q, post), atol=1e-11, rtol=0)
    assert (gap > 0).all()


def test_elbo_by_monte_carlo():
    x = data(4, seed=8)
    loc, scale = torch.tensor(0.4, dtype=F64), torch.tensor(0.8, dtype=F64)
    mu = (
        Normal(loc, scale)
        .sample(
            (400_000,),
        )
        .double()
    )
    terms = MODEL.log_likelihood(x, mu) + PRIOR.log_prob(mu) - Normal(loc, scale).log_prob(mu)
    se = float(terms.std()) / math.sqrt(len(terms))
    assert abs(float(terms.mean() - MODEL.elbo(x, loc, scale))) < 5 * se


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError, match="sigma"):
        NormalMean(sigma=bad)
    with pytest.raises(ValueError, match="prior_std"):
        NormalMean(sigma=1.0, prior_std=bad)


def test_invalid_data_are_refused():
    with pytest.raises(ValueError, match="n >= 1"):
        MODEL.posterior(torch.zeros(0, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        MODEL.posterior(torch.tensor([1.0, math.nan], dtype=F64))


# ----------------------------------------------------------------------------- Gaussian KL


def random_spd(d, g):
    a = torch.randn(d, d, generator=g, dtype=F64)
    return a @ a.T + 0.5 * torch.eye(d, dtype=F64)


def kl_by_hand(mq, cq, mp, cp):
    d = len(mq)
    inv = torch.linalg.inv(cp)
    diff = mp - mq
    return 0.5 * (
        torch.trace(inv @ cq) + diff @ inv @ diff - d + torch.logdet(cp) - torch.logdet(cq)
    )


def test_full_and_diagonal_kl_match_the_formula():
    g = torch.Generator().manual_seed(0)
    d = 4
    mq, mp = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    cq, cp = random_spd(d, g), random_spd(d, g)
    sq, sp = (
        torch.rand(d, generator=g, dtype=F64) + 0.2,
        torch.rand(d, generator=g, dtype=F64) + 0.2,
    )
    full_q, full_p = MultivariateNormal(mq, cq), MultivariateNormal(mp, cp)
    diag_q, diag_p = Independent(Normal(mq, sq), 1), Independent(Normal(mp, sp), 1)
    cases = [
        (full_q, full_p, mq, cq, mp, cp),
        (diag_q, diag_p, mq, sq.square().diag(), mp, sp.square().diag()),
        (diag_q, full_p, mq, sq.square().diag(), mp, cp),  # mixed: not registered in torch
        (full_q, diag_p, mq, cq, mp, sp.square().diag()),
    ]
    for q, p, *moments in cases:
        assert abs(float(gaussian_kl(q, p) - kl_by_hand(*moments))) < 1e-11
    assert abs(float(gaussian_kl(full_q, full_q))) < 1e-12


def test_kl_batches_and_the_standard_normal_form():
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(5, 3, generator=g, dtype=F64)
    scale = torch.rand(5, 3, generator=g, dtype=F64) + 0.1
    std = Independent(Normal(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)), 1)
    kl = gaussian_kl(Independent(Normal(loc, scale), 1), std)
    assert kl.shape == (5,)
    assert torch.allclose(kl_standard_normal(loc, scale), kl, atol=1e-13, rtol=0)
    by_hand = 0.5 * (scale**2 + loc**2 - 2 * scale.log() - 1).sum(-1)
    assert torch.allclose(kl, by_hand, atol=1e-13, rtol=0)
    # scalar Normals: elementwise
    assert gaussian_kl(Normal(loc, scale), Normal(0.0, 1.0)).shape == (5, 3)


def test_kl_refuses_what_is_not_a_gaussian_pair():
    q = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    with pytest.raises(TypeError, match="Gaussian"):
        gaussian_kl(q, torch.distributions.Laplace(torch.zeros(2), 1.0))
    with pytest.raises(TypeError, match="Independent"):
        gaussian_kl(Normal(0.0, 1.0), MultivariateNormal(torch.zeros(2), torch.eye(2)))
    with pytest.raises(ValueError, match="event shapes"):
        gaussian_kl(q, MultivariateNormal(torch.zeros(3), torch.eye(3)))
