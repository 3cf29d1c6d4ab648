"""BBVI: the conjugate posterior recovered, mean-field guides, GMM assignments, STL, losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal

import flowvi
from flowvi.inference.bbvi import (
    BernoulliFactors,
    CategoricalFactors,
    GaussianMixtureModel,
    MeanField,
    NormalFactors,
    elbo_gradient,
    elbo_loss,
    fit_bbvi,
    guide_elbo,
)
from flowvi.targets import Gaussian


def _conjugate(n: int = 20, prior_sd: float = 10.0):
    """x_i ~ N(θ, 1), θ ~ N(0, prior_sd²): the posterior is N(m, s²) in closed form."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 1.7
    precision = 1 / prior_sd**2 + n
    m, s = float(x.sum() / precision), 1 / math.sqrt(precision)

    def log_joint(z):
        theta = z[:, 0]
        log_lik = Normal(theta[:, None], 1.0).log_prob(x).sum(-1)
        return log_lik + Normal(0.0, prior_sd).log_prob(theta)

    return log_joint, m, s


def test_gaussian_guide_recovers_the_conjugate_posterior_with_decaying_steps():
    torch.manual_seed(0)
    log_joint, m, s = _conjugate()
    q = MeanField([NormalFactors(1)]).double()
    loc, log_scale = q.blocks[0].loc, q.blocks[0].log_scale
    # Robbins-Monro ascent: λ += ρ_t P ĝ, ρ_t = (t + τ)^(-κ), ĝ the STL gradient, P a fixed
    # diagonal preconditioner (the inverse curvature of the ELBO at its optimum: s² for the
    # mean, 1/2 for the log-scale), so that the steps are dimensionless
    for t in range(250):
        grads, _ = elbo_gradient(q, log_joint, samples=8, estimator="stl")
        rho = (t + 10) ** -0.7
        with torch.no_grad():
            loc += rho * s**2 * grads["blocks.0.loc"]
            log_scale += rho * 0.5 * grads["blocks.0.log_scale"]
    assert abs(loc.item() - m) < 1e-3
    assert abs(log_scale.exp().item() - s) < 1e-3


def test_score_function_with_control_variates_also_finds_the_conjugate_posterior():
    torch.manual_seed(1)
    log_joint, m, s = _conjugate()
    q = MeanField([NormalFactors(1)]).double()
    fit_bbvi(q, log_joint, iters=150, samples=16, lr=0.1, estimator="score")
    assert abs(q.blocks[0].loc.item() - m) < 0.05
    assert abs(q.blocks[0].log_scale.exp().item() / s - 1) < 0.25


def test_mean_field_log_prob_is_the_product_of_its_factors():
    torch.manual_seed(2)
    q = MeanField(
        [
            NormalFactors(2, loc=torch.tensor([0.5, -1.0]), scale=2.0),
            CategoricalFactors(3, 4, logits=torch.randn(3, 4)),
            BernoulliFactors(2, logits=torch.tensor([0.3, -2.0])),
        ]
    ).double()
    z = q.sample((50,))
    assert z.shape == (50, 7)
    assert set(z[:, 2:5].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert set(z[:, 5:].unique().tolist()) <= {0.0, 1.0}
    by_hand = (
        Normal(q.blocks[0].loc, q.blocks[0].log_scale.exp()).log_prob(z[:, :2]).sum(-1)
        + Categorical(logits=q.blocks[1].logits).log_prob(z[:, 2:5].long()).sum(-1)
        + Bernoulli(logits=q.blocks[2].logits).log_prob(z[:, 5:]).sum(-1)
    )
    torch.testing.assert_close(q.log_prob(z), by_hand, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="discrete"):
        q.rsample((3,))
    with pytest.raises(ValueError, match="samples >= 3"):
        elbo_gradient(q, lambda z: z.sum(-1), samples=2)
    with pytest.raises(ValueError, match="unknown estimator"):
        elbo_gradient(q, lambda z: z.sum(-1), samples=4, estimator="pathwise")
    with pytest.raises(ValueError, match=r"\(S,\)"):
        elbo_gradient(q, lambda z: z, samples=4)


def _mixture_data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    c = torch.randint(0, 3, (n,), generator=g)
    return (centres[c] + torch.randn(n, 2, generator=g)).double()


def test_gmm_log_joint_and_markov_blankets_by_hand():
    x = _mixture_data(n=5)
    model = GaussianMixtureModel(x, k=3, prior_sd=2.0)
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-1.0, 3.0]]).double()
    c = torch.tensor([0, 2, 2, 1, 0])
    z = torch.cat([mu.reshape(-1), c.double()])[None]
    prior = sum(
        -0.5 * (v / 2.0) ** 2 - math.log(2.0 * math.sqrt(2 * math.pi)) for v in mu.flatten()
    )
    lik = [
        -0.5 * float(((x[i] - mu[c[i]]) ** 2).sum()) - math.log(2 * math.pi) - math.log(3)
        for i in range(5)
    ]
    assert model.log_joint(z).item() == pytest.approx(float(prior) + sum(lik), abs=1e-10)
    local = model.local(z)[0]
    for i in range(5):
        assert local[6 + i].item() == pytest.approx(lik[i], abs=1e-10)
    for k in range(3):
        member = sum(lik[i] + math.log(3) for i in range(5) if c[i] == k)
        for j in range(2):
            v = float(mu[k, j])
            own = -0.5 * (v / 2.0) ** 2 - math.log(2.0 * math.sqrt(2 * math.pi))
            assert local[2 * k + j].item() == pytest.approx(own + member, abs=1e-10)
    # Markov blanket: changing c_i changes ln p and local_i by the same amount
    z2 = z.clone()
    z2[0, 6 + 1] = 0.0
    delta = model.log_joint(z2) - model.log_joint(z)
    torch.testing.assert_close(delta, model.local(z2)[:, 7] - model.local(z)[:, 7])
    with pytest.raises(ValueError, match="at least k"):
        GaussianMixtureModel(x, k=6).guide()


def test_bbvi_on_gmm_assignments_improves_the_elbo():
    torch.manual_seed(0)
    model = GaussianMixtureModel(_mixture_data(), k=3)
    q = model.guide(generator=torch.Generator().manual_seed(1)).double()
    before, se0 = guide_elbo(q, model.log_joint, samples=500)
    fit_bbvi(q, model.log_joint, iters=40, samples=8, lr=0.2, estimator="score", local=model.local)
    after, se1 = guide_elbo(q, model.log_joint, samples=500)
    assert after - before > 20 * (se0 + se1)
    # the assignments' factors concentrate: most points' φ_i put > 0.9 on one component
    phi = torch.softmax(q.blocks[1].logits, -1)
    assert (phi.max(-1).values > 0.9).float().mean() > 0.8


def test_reparam_falls_back_to_the_score_function_for_discrete_factors():
    torch.manual_seed(0)
    model = GaussianMixtureModel(_mixture_data(n=10), k=2)
    q = model.guide().double()
    grads, terms = elbo_gradient(
        q, model.log_joint, samples=8, estimator="reparam", local=model.local
    )
    assert grads["blocks.1.logits"].shape == (10, 2) and terms.shape == (8,)
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_sticking_the_landing_is_exact_at_the_optimum_for_a_flow_guide():
    # q = p: the STL gradient is exactly zero, the plain reparameterization one is not
    target = Gaussian(torch.tensor([1.0, -2.0]), torch.diag(torch.tensor([0.25, 4.0]))).double()
    flow = flowvi.flows.build("affine", 2).double()
    f64 = torch.float64
    exact = {
        "loc": torch.tensor([1.0, -2.0], dtype=f64),
        "log_scale": torch.tensor([0.5, 2.0], dtype=f64).log(),
    }
    with torch.no_grad():
        for name, value in flow.layers[0].params.items():
            value.copy_(exact[name])
    torch.manual_seed(0)
    for estimator, zero in (("stl", True), ("reparam", False)):
        flow.zero_grad()
        loss, _ = elbo_loss(flow, target, samples=16, estimator=estimator)
        loss.backward()
        size = max(float(p.grad.abs().max()) for p in flow.parameters())
        assert (size < 1e-12) == zero
    with pytest.raises(ValueError, match="MeanField"):
        elbo_loss(flow, target, samples=4, estimator="score")


def test_mean_field_loss_value_is_the_negative_elbo_and_its_gradient_the_estimate():
    torch.manual_seed(0)
    q = MeanField([NormalFactors(2)]).double()
    target = Gaussian(torch.tensor([1.0, 0.0]), torch.eye(2)).double()
    torch.manual_seed(5)
    loss, parts = elbo_loss(q, target, samples=32, estimator="reparam")
    loss.backward()
    torch.manual_seed(5)
    grads, terms = elbo_gradient(q, target, samples=32, estimator="reparam")
    assert loss.item() == pytest.approx(-terms.mean().item(), abs=1e-12)
    torch.testing.assert_close(q.blocks[0].loc.grad, -grads["blocks.0.loc"])
    assert parts["ELBO terms"].shape == (32,)
