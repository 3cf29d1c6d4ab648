"""AIS, reverse AIS / BDMC and the IWAE bound against closed-form normalizing constants."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from flowvi import targets
from flowvi.ais import ais, ais_log_normalizer, anneal, schedule
from flowvi.evidence import iwae_bound, log_mean_exp, target_iwae
from flowvi.flows import NormalizingFlow
from flowvi.metrics import log_normalizer
from flowvi.vae import VAE, Encoder, LinearGaussianDecoder, make_posterior
from flowvi.vae.evaluate import importance_log_likelihood
from flowvi.vae.gap import ais_log_likelihood, bdmc

F64 = torch.float64


def _linear_gaussian(n: int = 4, seed: int = 0):
    """d = 2, D = 3, nearly parallel columns of W: a correlated posterior with known ln p(x)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.tensor([[1.0, 0.9], [0.8, 1.0], [1.0, 1.1]], dtype=F64)
    decoder = LinearGaussianDecoder(W, 0.1 * torch.randn(3, generator=g, dtype=F64), 0.3)
    x = decoder(torch.randn(n, 2, generator=g, dtype=F64)).sample()
    return decoder, x


def _vae(decoder, family: str = "diagonal") -> VAE:
    posterior = make_posterior(family, 2, 8, length=2, hidden=(8,))
    return VAE(Encoder(3, (8,)), posterior, decoder).double()


def _log_prior(z):
    return -0.5 * (z * z).sum(-1) - math.log(2 * math.pi)


def test_schedules_run_from_zero_to_one_and_refuse_bad_settings():
    for kind in ("linear", "sigmoid"):
        betas = schedule(50, kind)
        assert betas.shape == (51,) and betas[0] == 0 and betas[-1] == 1
        assert (betas.diff() > 0).all()
    sig = schedule(100, "sigmoid")
    assert sig[1] < 0.01 and 1 - sig[-2] < 0.01  # denser at both ends than linear
    with pytest.raises(ValueError, match="schedule"):
        schedule(10, "cosine")
    with pytest.raises(ValueError, match="steps"):
        schedule(0)
    z = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="target_accept"):
        anneal(z, _log_prior, _log_prior, schedule(3), target_accept=1.5)
    with pytest.raises(ValueError, match="step size"):
        anneal(z, _log_prior, _log_prior, schedule(3), step_size=-0.1)


def test_ais_is_within_its_error_of_the_truth_and_improves_with_temperatures():
    torch.manual_seed(0)
    decoder, x = _linear_gaussian()
    truth = decoder.log_evidence(x)

    def log_lik(z):
        return decoder(z).log_prob(x)

    errors, ses = [], []
    for steps in (3, 150):
        z0 = torch.randn(128, 4, 2, dtype=F64)
        result = ais(z0, _log_prior, log_lik, steps=steps, leapfrog=5, step_size=0.1)
        assert result.log_Z.shape == (4,) and result.log_w.shape == (128, 4)
        errors.append((result.log_Z - truth).abs())
        ses.append(result.se)
    # within 3 standard errors of ln p(x) at every point
    assert (errors[1] < 3 * ses[1] + 0.01).all(), (errors[1], ses[1])
    # more intermediate distributions: smaller error and far less spread of the weights
    assert errors[1].mean() < errors[0].mean()
    assert (ses[1] < 0.5 * ses[0]).all()


def test_ais_runs_in_float32_and_through_the_vae_helper():
    torch.manual_seed(1)
    decoder, x = _linear_gaussian()
    model = _vae(decoder).float()
    result = ais_log_likelihood(model, x.float(), chains=32, steps=60, leapfrog=3, batch_size=3)
    assert result.log_Z.dtype == F64 and result.log_Z.shape == (4,)
    assert result.z.shape == (32, 4, 2) and result.z.dtype == torch.float32
    error = (result.log_Z - decoder.log_evidence(x).double()).abs()
    assert (error < 4 * result.se + 0.05).all(), (error, result.se)
    assert ((result.acceptance > 0.3) & (result.acceptance <= 1)).all()


def test_bdmc_bounds_sandwich_the_exact_evidence():
    torch.manual_seed(2)
    decoder, _ = _linear_gaussian()
    model = _vae(decoder)
    out = bdmc(model, 4, chains=128, steps=150, leapfrog=5, step_size=0.1)
    truth = decoder.log_evidence(out["x"])
    # each bound within 3 of its standard errors (+ 0.02) on the right side of ln p(x)
    assert (out["lower"] <= truth + 3 * out["lower_se"] + 0.02).all()
    assert (out["upper"] >= truth - 3 * out["upper_se"] - 0.02).all()
    # and on average over the points, where the noise is smaller
    lower_se = out["lower_se"].pow(2).mean().sqrt() / 2
    upper_se = out["upper_se"].pow(2).mean().sqrt() / 2
    assert out["lower"].mean() <= truth.mean() + 3 * lower_se
    assert out["upper"].mean() >= truth.mean() - 3 * upper_se
    assert out["gap"].mean() < 0.3  # the certificate: the bounds nearly meet


def test_ais_log_normalizer_of_u1_matches_quadrature():
    torch.manual_seed(0)
    target = targets.get("U1")
    result = ais_log_normalizer(target, 2, scale=2.0, chains=512, steps=300, leapfrog=5,
                                step_size=0.2)  # fmt: skip
    assert abs(float(result.log_Z) - log_normalizer(target)) < 0.05
    assert float(result.se) < 0.03


def test_iwae_rises_with_k_stays_below_the_evidence_and_its_se_is_calibrated():
    torch.manual_seed(0)
    decoder, x = _linear_gaussian()
    model = _vae(decoder)
    truth = decoder.log_evidence(x)
    xs = x.expand(100, 4, 3).reshape(400, 3)  # 100 replicate estimates per point
    means, last = [], None
    for k in (1, 10, 100, 1000):
        last = importance_log_likelihood(model, xs, samples=k, chunk=256, batch_size=400)
        means.append(last.log_Z.reshape(100, 4).mean(0))
    for lo, hi in itertools.pairwise(means):
        assert (hi > lo).all()
    # a lower bound in expectation: the replicates' mean is below, up to its own noise
    noise = last.log_Z.reshape(100, 4).std(0) / 10
    assert (means[-1] < truth + 3 * noise).all()
    assert (means[0] < truth - 0.5).all()  # k = 1, the ELBO, is far below
    assert (last.ess > 1).all() and (last.ess <= 1000).all()


def test_iwae_standard_error_matches_the_spread_of_replicates():
    torch.manual_seed(1)
    decoder, x = _linear_gaussian()
    post = decoder.posterior(x)  # a proposal twice as wide: weights of finite variance
    q = torch.distributions.MultivariateNormal(post.mean, 2 * post.covariance_matrix)

    def draw(m):
        z = q.sample((m, 200))  # (m, 200 replicates, 4 points, 2)
        return decoder(z).log_prob(x) + _log_prior(z) - q.log_prob(z)

    est = iwae_bound(draw, 1000, chunk=250)
    ratio = est.se.mean(0) / est.log_Z.std(0)
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio
    truth = decoder.log_evidence(x)
    assert ((est.log_Z.mean(0) - truth).abs() < 3 * est.se.mean(0) / math.sqrt(200) + 1e-3).all()


def test_iwae_bound_is_chunk_invariant_and_log_mean_exp_is_the_formula():
    log_w = torch.randn(37, 3, dtype=F64)
    draws = iter(log_w.split(5))
    chunked = iwae_bound(lambda m: next(draws), 37, chunk=5)
    whole = log_mean_exp(log_w)
    torch.testing.assert_close(chunked.log_Z, whole.log_Z)
    torch.testing.assert_close(chunked.se, whole.se)
    w = log_w.exp()
    torch.testing.assert_close(whole.log_Z, w.mean(0).log())
    torch.testing.assert_close(whole.se, w.std(0) / (math.sqrt(37) * w.mean(0)))
    torch.testing.assert_close(whole.ess, w.sum(0) ** 2 / (w**2).sum(0))
    with pytest.raises(ValueError, match="draw"):
        iwae_bound(lambda m: torch.zeros(m + 1), 10, chunk=4)


def test_target_iwae_estimates_ln_z_of_u1_from_below():
    torch.manual_seed(0)
    target = targets.get("U1")
    base = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(2, dtype=F64), 2.0 * torch.ones(2, dtype=F64)), 1
    )
    q = NormalizingFlow(base, [])
    exact = log_normalizer(target)
    small = target_iwae(q, target.log_prob, 1)
    big = target_iwae(q, target.log_prob, 200_000, chunk=50_000)
    assert abs(float(big.log_Z) - exact) < 3 * float(big.se) + 0.01
    assert float(small.log_Z) < exact  # one draw: an ELBO-like single weight, far below
