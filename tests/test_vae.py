"""VAEs with amortized flow posteriors: bounds against a closed-form model, amortization,
objectives, resume and the ``flowvi vae`` command."""

from __future__ import annotations

import math

import pytest
import torch

from flowvi.objectives import elbo, iwae
from flowvi.vae import (
    POSTERIORS,
    VAE,
    BernoulliDecoder,
    Encoder,
    LinearGaussianDecoder,
    layer_statistics,
    log_likelihood,
    make_posterior,
)


def _linear_gaussian(seed: int = 0):
    """d = 2, D = 3; nearly parallel columns of W: a strongly correlated exact posterior."""
    g = torch.Generator().manual_seed(seed)
    W = torch.tensor([[1.0, 0.9], [0.8, 1.0], [1.0, 1.1]], dtype=torch.float64)
    b = 0.1 * torch.randn(3, generator=g, dtype=torch.float64)
    decoder = LinearGaussianDecoder(W, b, 0.3)
    x = decoder(torch.randn(4, 2, generator=g, dtype=torch.float64)).sample()
    return decoder, x


def _vae(decoder, family: str, length: int = 1) -> VAE:
    posterior = make_posterior(family, 2, 16, length=length, hidden=(16,))
    return VAE(Encoder(3, (16,)), posterior, decoder).double()


def test_linear_gaussian_closed_forms_match_bayes_rule():
    decoder, x = _linear_gaussian()
    z = torch.randn(5, 4, 2, dtype=torch.float64)
    prior = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), 1.0), 1
    )
    # ln p(x) = ln p(z) + ln p(x|z) - ln p(z|x) at any z
    rhs = prior.log_prob(z) + decoder(z).log_prob(x) - decoder.posterior(x).log_prob(z)
    torch.testing.assert_close(rhs, decoder.log_evidence(x).expand(5, 4), atol=1e-10, rtol=0)


def test_elbo_below_evidence_and_iwae_rises_with_k():
    torch.manual_seed(0)
    decoder, x = _linear_gaussian()
    model = _vae(decoder, "diagonal")
    log_px = decoder.log_evidence(x)
    with torch.no_grad():
        # MC and analytic ELBO agree, and lie below ln p(x) at every point
        analytic = model.elbo(x, samples=20_000)
        mc = model.elbo(x, samples=20_000, analytic=False)
        torch.testing.assert_close(mc, analytic, atol=0.05 * analytic.abs().max(), rtol=0)
        assert (analytic < log_px).all()
        bounds = [model.iwae(x.expand(200, 4, 3), k).mean(0) for k in (1, 10, 100, 1000)]
    gaps = [float((log_px - bound).mean()) for bound in bounds]
    assert all(g > -1e-3 for g in gaps)
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[3] < 0.2 * gaps[0]


def _train(model: VAE, x, iters: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(iters):
        loss = -model.elbo(x, samples=8, analytic=False).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(model.elbo(x, samples=2000, analytic=False).mean())


def test_flow_posterior_closes_the_gap_better_than_diagonal():
    decoder, x = _linear_gaussian()
    log_px = float(decoder.log_evidence(x).mean())
    # the best diagonal Gaussian misses the exact posterior N(m, Λ^{-1}) by
    # KL = ½ (Σ ln Λ_ii - ln det Λ) nats, whatever the encoder
    precision = torch.linalg.inv(decoder.posterior(x).covariance_matrix[0])
    best_diagonal_gap = 0.5 * float(precision.diag().log().sum() - torch.logdet(precision))
    assert best_diagonal_gap > 0.5
    gaps = {}
    for family in ("diagonal", "iaf"):
        torch.manual_seed(1)
        gaps[family] = log_px - _train(_vae(decoder, family), x, 120)
    assert gaps["diagonal"] > best_diagonal_gap - 0.05  # no diagonal Gaussian does better
    assert gaps["iaf"] < 0.5 * best_diagonal_gap  # the flow beats every diagonal Gaussian
    assert gaps["iaf"] > -0.02  # still a lower bound


@pytest.mark.parametrize("flow_context", [None, 4])
@pytest.mark.parametrize("family", [f for f in POSTERIORS if f != "diagonal"])
def test_two_inputs_get_two_flows(family, flow_context):
    """Also when the layers read a projection of the context (a low-rank amortization)."""
    torch.manual_seed(0)
    posterior = make_posterior(family, 3, 5, length=2, hidden=(8,), flow_context=flow_context)
    posterior = posterior.double()
    for p in posterior.parameters():  # heads away from their near-constant start
        p.data += 0.3 * torch.randn_like(p)
    h = torch.randn(2, 5, dtype=torch.float64)
    q = posterior(h)
    z0 = torch.randn(3, dtype=torch.float64).expand(2, 3)
    z = q.flow(z0)
    assert (z[0] - z[1]).abs().max() > 1e-3  # one base point, two different maps
    for i in range(2):  # row i's map is the flow of context i alone
        torch.testing.assert_close(posterior(h[i]).flow(z0[i]), z[i], atol=1e-10, rtol=0)
    # ln q by change of variables, against the autograd Jacobian of row 0's whole flow
    x, log_q = q.rsample_and_log_prob((1,))
    f0 = posterior(h[0])
    z_base = f0.flow.inv(x[0, 0])
    jac = torch.autograd.functional.jacobian(f0.flow, z_base)
    expected = f0.base_dist.log_prob(z_base) - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(log_q[0, 0], expected, atol=1e-8, rtol=0)


def test_objectives_are_the_formulas():
    log_lik = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], dtype=torch.float64)
    log_prior = torch.tensor([[-0.5, -0.5], [-1.0, -1.5]], dtype=torch.float64)
    log_q = torch.tensor([[0.2, -0.1], [0.0, 0.3]], dtype=torch.float64)
    expected = torch.tensor(
        [(-1 + 0.5 * -0.7 - 3 + 0.5 * -1.0) / 2, (-2 + 0.5 * -0.4 - 4 + 0.5 * -1.8) / 2]
    )
    torch.testing.assert_close(elbo(log_lik, log_prior, log_q, beta=0.5), expected.double())
    log_w = log_lik + log_prior - log_q
    manual = torch.log(torch.exp(log_w).mean(0))
    torch.testing.assert_close(iwae(log_w), manual, atol=1e-12, rtol=0)
    torch.testing.assert_close(iwae(log_w[:1]), elbo(log_lik[:1], log_prior[:1], log_q[:1]))


def _exact_posterior_vae() -> tuple[VAE, LinearGaussianDecoder]:
    """A linear-Gaussian model with orthogonal columns of W (so p(z|x) is a diagonal Gaussian)
    and an encoder set by hand to output that posterior exactly."""
    W = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 0.5]], dtype=torch.float64)
    W[:, 1] -= W[:, 0] * (W[:, 0] @ W[:, 1]) / (W[:, 0] @ W[:, 0])
    b = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    decoder = LinearGaussianDecoder(W, b, 0.5)
    model = _vae(decoder, "diagonal")
    model.encoder = Encoder(3, (6,)).double()
    model.posterior = make_posterior("diagonal", 2, 6).double()
    cov = decoder.posterior(torch.zeros(3, dtype=torch.float64)).covariance_matrix
    assert abs(float(cov[0, 1])) < 1e-12
    gain = cov @ W.mT / 0.5**2  # posterior mean = gain (x - b)
    eye = torch.eye(3, dtype=torch.float64)
    with torch.no_grad():
        model.encoder.net[0].weight.copy_(torch.cat([eye, -eye]))  # h = (relu(x), relu(-x))
        model.encoder.net[0].bias.zero_()
        base = model.posterior.base
        base.mean.weight.copy_(torch.cat([gain, -gain], 1))
        base.mean.bias.copy_(-gain @ b)
        base.scale.weight.zero_()
        sd = cov.diag().sqrt() - 1e-5
        base.scale.bias.copy_(sd + torch.log(-torch.expm1(-sd)))  # softplus^-1
    return model, decoder


def test_importance_sampled_likelihood_is_exact_for_the_exact_posterior():
    model, decoder = _exact_posterior_vae()
    x = decoder(torch.randn(6, 2, dtype=torch.float64)).sample()
    exact = decoder.log_evidence(x)
    q0 = model.posterior.base(model.encoder(x))
    torch.testing.assert_close(q0.mean, decoder.posterior(x).mean, atol=1e-12, rtol=0)
    # every importance weight is p(x): the estimate and the ELBO are ln p(x) for any k
    torch.testing.assert_close(
        log_likelihood(model, x, samples=7, chunk=3), exact, atol=1e-10, rtol=0
    )
    with torch.no_grad():
        torch.testing.assert_close(
            model.elbo(x, samples=3, analytic=False), exact, atol=1e-10, rtol=0
        )
        # the analytic-KL estimator is exact only in expectation
        torch.testing.assert_close(model.elbo(x, samples=20_000), exact, atol=0.05, rtol=0)


def test_importance_sampled_likelihood_is_chunk_invariant():
    decoder, x = _linear_gaussian()
    model = _vae(decoder, "planar", length=2)
    torch.manual_seed(3)
    a = log_likelihood(model, x, samples=300, chunk=300, batch_size=4)
    torch.manual_seed(3)
    b = log_likelihood(model, x, samples=300, chunk=70, batch_size=4)
    assert a.dtype == torch.float64 and a.shape == (4,)
    # the chunks consume the random stream in the same order: the same draws, same estimate
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_bernoulli_decoder_log_prob_is_cross_entropy():
    torch.manual_seed(0)
    decoder = BernoulliDecoder(2, 6, ())
    decoder.init_bias(torch.full((6,), 0.25))
    z = torch.zeros(1, 2)
    x = torch.tensor([[1.0, 0, 0, 1, 0, 0]])
    p = torch.sigmoid(decoder.net(z))
    torch.testing.assert_close(p, torch.full((1, 6), 0.25) + 0 * p, atol=1e-6, rtol=0)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(decoder(z).log_prob(x), expected, atol=1e-5, rtol=0)
    assert math.isfinite(float(decoder(z).log_prob(x).detach()))


TINY_VAE = ["--latent", "2", "--hidden", "16", "--length", "2", "--batch-size", "400"]


def _weights(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors")), load_file(
        str(directory / "checkpoint.safetensors")
    )


def test_layer_statistics_split_the_flow_log_density_and_see_translations():
    decoder, x = _linear_gaussian()
    model = _vae(decoder, "planar", length=3)
    with torch.no_grad():  # every layer far from the identity
        for layer in model.posterior.layers:
            layer.head.bias.normal_()
    torch.manual_seed(5)
    stats = layer_statistics(model, x, samples=50)
    torch.manual_seed(5)
    with torch.no_grad():
        q = model.q(x)
        z0 = q.base_dist.rsample((50,))
        # the layers' ln|det| add up to ln q0(z0) - ln q(zK), q's density by the inverse
        total = (q.base_dist.log_prob(z0) - q.log_prob(q.flow(z0))).mean()
    assert len(stats) == 3
    assert math.isclose(sum(s["ladj_mean"] for s in stats), float(total), abs_tol=1e-9)
    assert all(s["ladj_sd"] > 0 and s["shift"] > 0 for s in stats)

    # a saturated planar layer (tanh = 1 everywhere) translates by u_hat: ln|det| = 0
    from flowvi.transforms import PlanarTransform

    model = _vae(decoder, "planar", length=1)
    u, w, b = torch.tensor([0.5, -1.0]), torch.tensor([0.0, 1e3]), torch.tensor([1e5])
    with torch.no_grad():
        model.posterior.layers[0].head.weight.zero_()
        model.posterior.layers[0].head.bias.copy_(torch.cat([u, w, b]))
        sigma = model.q(x).base_dist.stddev
        u_hat = PlanarTransform(u.double(), w.double(), b.double()).u_hat
    (stat,) = layer_statistics(model, x, samples=20)
    assert stat["ladj_mean"] == 0 and stat["ladj_sd"] == 0
    expected = (u_hat / sigma).pow(2).mean(-1).sqrt().mean()
    assert math.isclose(stat["shift"], float(expected), rel_tol=1e-9)
    assert layer_statistics(_vae(decoder, "diagonal"), x) == []


def test_cli_train_eval_end_to_end_and_resume_equals_uninterrupted(tmp_path, capsys):
    import json

    from flowvi.app.cli import main

    flags = [*TINY_VAE, "--binarize", "dynamic", "--posterior", "planar", "--quiet"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["vae", "train", *flags, "--epochs", "2", "--out", str(full)]) == 0
    assert main(["vae", "train", *flags, "--epochs", "1", "--out", str(part)]) == 0
    assert main(["vae", "train", "--resume", str(part), "--epochs", "2", "--quiet"]) == 0
    (best_a, ckpt_a), (best_b, ckpt_b) = _weights(full), _weights(part)
    for name, value in best_a.items():
        assert torch.equal(best_b[name], value), name
    for name in ("model/decoder.net.2.weight", "optim/0/exp_avg", "stop/valid_trace"):
        assert torch.equal(ckpt_b[name], ckpt_a[name]), name
    for name in ("samples.png", "reconstructions.png", "trace.csv", "train.json"):
        assert (full / name).is_file(), name

    capsys.readouterr()
    assert main(["vae", "eval", str(full), "--samples", "64"]) == 0
    assert "ln p(x), k = 64" in capsys.readouterr().err  # a progress bar on long work
    metrics = json.loads((full / "metrics.json").read_text())
    assert main(["vae", "eval", str(full), "--samples", "64", "--quiet"]) == 0
    assert "ln p(x)" not in capsys.readouterr().err
    again = json.loads((full / "metrics.json").read_text())  # same seed: the same numbers
    assert again["test_nll"] == metrics["test_nll"]
    assert metrics["is_samples"] == 64 and metrics["n_test"] == 359
    # the importance-sampled bound is tighter than the ELBO (in expectation, per image)
    assert metrics["test_nll"] < metrics["test_neg_elbo"] + 3 * metrics["test_neg_elbo_se"]
    assert 0 < metrics["test_nll"] < 64 * math.log(2)  # better than coin flips per pixel
    assert len(metrics["layers"]) == 2  # what each of the K = 2 planar layers does
    config = json.loads((full / "config.json").read_text())
    assert config["posterior"] == "planar" and config["binarize"] == "dynamic"
    # --samples 0 is refused (it used to fall back to the run's eval_samples), metrics kept
    capsys.readouterr()
    assert main(["vae", "eval", str(full), "--samples", "0", "--quiet"]) == 2
    assert "--samples (importance samples per image) must be a positive integer, got 0" in (
        capsys.readouterr().err
    )
    assert json.loads((full / "metrics.json").read_text()) == again


def test_cli_refuses_bad_settings(tmp_path, capsys):
    from flowvi.app.cli import main

    assert main(["vae", "train", "--posterior", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "posterior" in capsys.readouterr().err
    assert main(["vae", "eval", str(tmp_path / "missing")]) == 2
    assert main(["vae", "train", "--warmup", "-1", "--out", str(tmp_path / "b")]) == 2


@pytest.mark.parametrize(
    ("option", "value"), [("samples", 0), ("samples", -5), ("chunk", 0), ("samples", True)]
)
def test_eval_refuses_a_sample_count_that_is_not_positive_before_reading_the_run(
    tmp_path, option, value
):
    from flowvi.app.vae import evaluate_vae

    with pytest.raises(ValueError, match=rf"--{option} .* must be a positive integer"):
        evaluate_vae(tmp_path / "not-read", **{option: value})


def test_flow_context_projects_only_the_layers_context():
    """The base reads h; every layer's head reads the r numbers of one shared projection."""
    from flowvi.vae import ProjectedPosterior

    posterior = make_posterior("planar", 3, 5, length=4, flow_context=2)
    assert isinstance(posterior, ProjectedPosterior)
    assert posterior.base.mean.in_features == 5 and posterior.project.out_features == 2
    assert all(layer.context_dim == 2 for layer in posterior.layers)
    assert type(make_posterior("diagonal", 3, 5, flow_context=2)) is not ProjectedPosterior
    with pytest.raises(ValueError, match="flow context"):
        make_posterior("planar", 3, 5, flow_context=0)


def test_compile_is_refused_where_it_cannot_run(tmp_path, monkeypatch):
    """--compile implements Adam in one process: other optimizers and torchrun are refused
    before any work starts."""
    import flowvi.app.vae as run
    from flowvi.app.vae import run_vae
    from flowvi.vae.config import VAEConfig

    with pytest.raises(ValueError, match="Adam"):
        VAEConfig(compile=True, optimizer="rmsprop").validate()
    monkeypatch.setattr(run, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="without torchrun"):
        run_vae(VAEConfig(compile=True, epochs=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written


def test_compiled_training_matches_eager(tmp_path):
    """``--compile`` runs the same training steps as one compiled graph: the same weights to
    float rounding (here a projected planar posterior with the split KL and KL warm-up)."""
    import warnings

    from flowvi.app.cli import main
    from flowvi.vae.config import make_vae, vae_config

    flags = [*TINY_VAE, "--posterior", "planar", "--flow-context", "3", "--kl", "split"]
    flags += ["--epochs", "2", "--warmup", "1", "--quiet"]
    assert main(["vae", "train", *flags, "--out", str(tmp_path / "eager")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
        assert main(["vae", "train", *flags, "--compile", "--out", str(tmp_path / "c")]) == 0
    (eager, _), (compiled, _) = _weights(tmp_path / "eager"), _weights(tmp_path / "c")
    assert "posterior.project.weight" in eager
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, atol=1e-4, rtol=1e-4)
    torch.manual_seed(0)  # the run's initialization (seed 0)
    start = make_vae(vae_config(tmp_path / "eager"), 64).state_dict()
    moved = max(float((eager[k] - v).abs().max()) for k, v in start.items() if k in eager)
    assert moved > 1e-2  # it trained: the tolerance is well below what training changed


def test_kl_warm_up_may_start_from_zero():
    """β from 0 (Bowman et al. 2016) or 0.01 to 1; the reverse-KL fit keeps β0 > 0."""
    from flowvi.objectives import beta_schedule
    from flowvi.vae.config import VAEConfig

    VAEConfig(beta0=0.0).validate()
    with pytest.raises(ValueError, match="beta0"):
        VAEConfig(beta0=-0.1).validate()
    assert beta_schedule(0, beta0=0.0, anneal_iters=10, allow_zero=True) == 0.0
    assert beta_schedule(5, beta0=0.0, anneal_iters=10, allow_zero=True) == 0.5
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        beta_schedule(0, beta0=0.0, anneal_iters=10)


def test_kl_estimate_is_a_setting(tmp_path):
    """``--kl mc`` trains the diagonal posterior with the flows' Monte Carlo KL (the same
    expectation as the analytic one, checked above, with more variance); ``--kl split`` is a
    setting of the saved model."""
    import json

    from flowvi.app.cli import main
    from flowvi.vae.config import VAEConfig, load_vae

    with pytest.raises(ValueError, match="KL estimate"):
        VAEConfig(kl="exact").validate()
    out = tmp_path / "mc"
    flags = ["--posterior", "diagonal", "--latent", "2", "--hidden", "16", "--epochs", "1"]
    assert main(["vae", "train", *flags, "--kl", "mc", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["kl"] == "mc"
    out = tmp_path / "split"
    flags[1] = "planar"
    assert main(["vae", "train", *flags, "--kl", "split", "--quiet", "--out", str(out)]) == 0
    model, config = load_vae(out)
    assert config.kl == "split" and model.split_kl


@pytest.mark.parametrize(("family", "beta"), [("planar", 1.0), ("planar", 0.3), ("iaf", 1.0)])
def test_split_kl_replaces_the_base_log_ratio_by_its_closed_form(family, beta):
    """With the same noise, the split estimate differs from the Monte Carlo one by exactly
    β (ln q0(z0) - ln p(z0) - KL(q0 || p)), whose expectation under q0 is 0: the same ELBO in
    expectation, the base's KL in closed form. A diagonal posterior is unaffected."""
    from torch.distributions import kl_divergence

    decoder, x = _linear_gaussian()
    torch.manual_seed(0)
    model = _vae(decoder, family, length=3)
    noise = torch.randn(5, len(x), 2, dtype=torch.float64)
    with torch.no_grad():
        mc = model.elbo(x, samples=5, beta=beta, noise=noise)
        model.split_kl = True
        split = model.elbo(x, samples=5, beta=beta, noise=noise)
        q0 = model.posterior.base(model.encoder(x))
        z0 = q0.mean + noise * q0.stddev
        p = model.prior()
        expected = beta * ((q0.log_prob(z0) - p.log_prob(z0)).mean(0) - kl_divergence(q0, p))
        torch.testing.assert_close(split - mc, expected, atol=1e-10, rtol=0)
        assert (expected.abs() > 1e-3).all()  # the two estimates do differ sample by sample
        assert torch.allclose(
            model.elbo(x, samples=5, beta=beta, noise=noise, analytic=False), mc, atol=0, rtol=0
        )
        diagonal = _vae(decoder, "diagonal")
        plain = diagonal.elbo(x, samples=5, beta=beta, noise=noise)
        diagonal.split_kl = True
        assert torch.equal(diagonal.elbo(x, samples=5, beta=beta, noise=noise), plain)


def test_epoch_order_visits_every_image_once_per_epoch_in_a_seeded_order():
    from flowvi.vae.data import EpochOrder

    order = EpochOrder(10, 4, seed=3)
    assert order.per_epoch == 3 and len(order(2)) == 2  # the last batch is short
    first = torch.cat([order(t) for t in range(3)])
    assert sorted(first.tolist()) == list(range(10))
    second = torch.cat([order(t) for t in range(3, 6)])
    assert sorted(second.tolist()) == list(range(10)) and not torch.equal(first, second)
    resumed = EpochOrder(10, 4, seed=3)  # a resumed run starts mid-way: the same batches
    assert torch.equal(torch.cat([resumed(t) for t in range(3, 6)]), second)
