"""CAVI for the Bayesian mixture of unit-variance Gaussians: the ELBO against an independent
construction, monotone traces, the K = 1 conjugate case, scikit-learn's CAVI, the CLI."""

import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from flowvi.app.cli import main
from flowvi.inference import NormalMean
from flowvi.inference.cavi import (
    cavi,
    initial_responsibilities,
    log_predictive,
    mixture_elbo,
    simulate,
    update_globals,
    update_locals,
)
from flowvi.inference.sklearn_mixture import sklearn_mixture, sklearn_posterior

F64 = torch.float64


def sample(n=300, k=3, d=2, prior_std=4.0, seed=0):
    return simulate(n, k, d, prior_std=prior_std, seed=seed)


def random_state(n, k, d, seed):
    """Arbitrary (not optimal) variational parameters."""
    g = torch.Generator().manual_seed(seed)
    log_resp = torch.log_softmax(3 * torch.randn(n, k, generator=g, dtype=F64), -1)
    means = 2 * torch.randn(k, d, generator=g, dtype=F64)
    variances = torch.rand(k, generator=g, dtype=F64) + 0.05
    return log_resp, means, variances


def elbo_by_parts(x, log_resp, means, variances, prior_std):
    """The ELBO written term by term from torch.distributions, using E_q ln N(x; μ, I) =
    ln N(x; m, I) − d s²/2 and E_q ln N(μ; 0, σ²I) = ln N(m; 0, σ²I) − d s²/(2σ²)."""
    n, d = x.shape
    k = means.shape[0]
    unit = Independent(Normal(means, torch.ones_like(means)), 1)  # batch (K,)
    loglik = unit.log_prob(x[:, None, :]) - 0.5 * d * variances  # (N, K)
    prior = Independent(Normal(torch.zeros_like(means), prior_std * torch.ones_like(means)), 1)
    log_prior_means = (prior.log_prob(means) - 0.5 * d * variances / prior_std**2).sum()
    q_means = Independent(Normal(means, variances.sqrt()[:, None].expand_as(means)), 1)
    resp = log_resp.exp()
    return (
        log_prior_means
        + (resp * loglik).sum()
        - n * math.log(k)
        + Categorical(logits=log_resp).entropy().sum()
        + q_means.entropy().sum()
    )


def test_elbo_matches_an_independent_construction():
    x = sample(n=50, k=4, d=3).x
    log_resp, means, variances = random_state(50, 4, 3, seed=1)
    value = mixture_elbo(x, means, variances, prior_std=4.0, log_resp=log_resp)
    assert abs(float(value - elbo_by_parts(x, log_resp, means, variances, 4.0))) < 1e-10


def test_elbo_with_optimal_locals_is_the_maximum_over_them():
    x = sample(n=60, k=3, d=2).x
    log_resp, means, variances = random_state(60, 3, 2, seed=2)
    best = mixture_elbo(x, means, variances, prior_std=4.0)
    explicit = update_locals(x, means, variances)
    assert (
        abs(float(best - mixture_elbo(x, means, variances, prior_std=4.0, log_resp=explicit)))
        < 1e-9
    )
    assert float(best) > float(mixture_elbo(x, means, variances, prior_std=4.0, log_resp=log_resp))


@pytest.mark.parametrize(("k", "d", "init", "seed"), [(3, 2, "kmeans++", 0), (5, 4, "random", 1)])
def test_the_elbo_never_decreases(k, d, init, seed):
    x = sample(n=400, k=k, d=d, prior_std=2.0, seed=seed).x  # overlapping: many iterations
    fit = cavi(x, k, prior_std=2.0, init=init, tol=0, max_iter=60, seed=seed)
    assert fit.iterations == 60
    steps = fit.trace.diff()
    assert (steps >= -1e-10 * fit.trace[1:].abs()).all(), steps.min()
    assert fit.trace[-1] > fit.trace[0]
    # each half-step of a sweep raises it too (local, then global), from an arbitrary state
    log_resp, means, variances = random_state(len(x), k, d, seed)
    values = [mixture_elbo(x, means, variances, prior_std=2.0, log_resp=log_resp)]
    for _ in range(5):
        log_resp = update_locals(x, means, variances)
        values.append(mixture_elbo(x, means, variances, prior_std=2.0, log_resp=log_resp))
        means, variances = update_globals(x, log_resp.exp(), prior_std=2.0)
        values.append(mixture_elbo(x, means, variances, prior_std=2.0, log_resp=log_resp))
    assert all(b >= a - 1e-10 * abs(a) for a, b in itertools.pairwise(values))


def test_the_recorded_trace_is_the_elbo_of_the_returned_state():
    x = sample(n=200).x
    fit = cavi(x, 3, prior_std=4.0, tol=0, max_iter=7)
    direct = mixture_elbo(x, fit.means, fit.variances, prior_std=4.0, log_resp=fit.log_resp)
    assert abs(float(direct) - fit.elbo) < 1e-9 * abs(fit.elbo)
    assert fit.elbo == float(fit.trace[-1])


def test_one_component_is_the_exact_conjugate_posterior():
    """K = 1: q(c) is trivial, the model is the normal mean with σ_x = 1 per coordinate, and
    CAVI's first sweep gives the exact posterior, whose ELBO is the log evidence."""
    x = 1.5 + torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    fit = cavi(x, 1, prior_std=2.0, init="data", tol=0, max_iter=2)
    exact = NormalMean(sigma=1.0, prior_mean=0.0, prior_std=2.0)
    post = exact.posterior(x)
    assert torch.allclose(fit.means[0], post.mean, atol=1e-12, rtol=0)
    assert torch.allclose(fit.variances[0].expand(3), post.variance, atol=1e-14, rtol=0)
    assert abs(fit.elbo - float(exact.log_evidence(x))) < 1e-10
    assert fit.trace.diff().abs().max() < 1e-10  # already at the optimum after one sweep
    predictive = exact.posterior_predictive(x).log_prob(x[:5])
    assert torch.allclose(fit.log_predictive(x[:5]), predictive, atol=1e-12, rtol=0)


def test_log_predictive_is_the_mixture_of_predictive_gaussians():
    _, means, variances = random_state(1, 4, 2, seed=3)
    x = 3 * torch.randn(20, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    scale = (1 + variances).sqrt()[:, None].expand_as(means)
    mixture = MixtureSameFamily(
        Categorical(probs=torch.full((4,), 0.25, dtype=F64)), Independent(Normal(means, scale), 1)
    )
    assert torch.allclose(log_predictive(x, means, variances), mixture.log_prob(x), atol=1e-12)


def test_means_match_scikit_learn_from_the_same_responsibilities():
    data = sample(n=500, k=4, d=3, prior_std=3.0, seed=5)
    x = data.x
    resp0 = initial_responsibilities(x, 4, generator=torch.Generator().manual_seed(0))
    ours = cavi(x, 4, prior_std=3.0, init=resp0, tol=0, max_iter=40)
    theirs = sklearn_mixture(4, 3, prior_std=3.0, resp0=resp0, tol=0, max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol = 0: "did not converge", by design
        theirs.fit(x.numpy())
    means, variances = (torch.from_numpy(a) for a in sklearn_posterior(theirs))
    assert theirs.n_iter_ == ours.iterations == 40
    assert (ours.means - means).abs().max() < 1e-6
    assert (ours.variances - variances).abs().max() < 1e-9
    # the same ELBO by one formula (a function of q(μ) alone)
    mine = mixture_elbo(x, ours.means, ours.variances, prior_std=3.0)
    other = mixture_elbo(x, means, variances, prior_std=3.0)
    assert abs(float(mine - other)) < 1e-6 * abs(float(mine))
    # and the same responsibilities
    resp = torch.from_numpy(theirs.predict_proba(x.numpy()))
    assert (ours.responsibilities(x) - resp).abs().max() < 1e-6


def test_convergence_restarts_and_the_best_elbo():
    x = sample(n=300, k=4, d=2, prior_std=3.0, seed=6).x
    fit = cavi(x, 4, prior_std=3.0, restarts=4, tol=1e-9, seed=1)
    assert fit.converged
    assert len(fit.restart_elbos) == 4 and fit.elbo == max(fit.restart_elbos)
    assert fit.restart_elbos[fit.best_restart] == fit.elbo
    last = fit.trace[-2:]
    assert abs(float(last[1] - last[0])) <= 1e-9 * abs(float(last[1]))
    # a converged fit is a fixed point of the updates
    log_resp = update_locals(x, fit.means, fit.variances)
    means, _ = update_globals(x, log_resp.exp(), prior_std=3.0)
    assert (means - fit.means).abs().max() < 1e-5
    assert fit.n == 300 and abs(fit.elbo_per_datum - fit.elbo / 300) < 1e-12
    assert fit.q_means().batch_shape == (4,) and fit.q_means().event_shape == (2,)


def test_recovers_well_separated_components():
    data = sample(n=600, k=3, d=2, prior_std=10.0, seed=7)
    fit = cavi(data.x, 3, prior_std=10.0, restarts=3)
    dist = torch.cdist(fit.means, data.means)
    assert dist.min(1).values.max() < 0.3  # every fitted mean next to a true one
    assert sorted(dist.argmin(1).tolist()) == [0, 1, 2]


def test_float32_input_is_fitted_in_float64():
    x = sample(n=100).x
    fit = cavi(x.float(), 3, prior_std=4.0, max_iter=5)
    assert fit.means.dtype == F64 and fit.log_resp.dtype == F64


def test_invalid_inputs_are_refused():
    x = sample(n=20).x
    bad = x.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        cavi(bad, 2)
    with pytest.raises(ValueError, match="shape"):
        cavi(x[:, 0], 2)
    with pytest.raises(ValueError, match="at least K"):
        cavi(x, 21)
    with pytest.raises(ValueError, match="prior_std"):
        cavi(x, 2, prior_std=-1.0)
    with pytest.raises(ValueError, match="init"):
        cavi(x, 2, init="kmeans")
    with pytest.raises(ValueError, match="shape"):
        cavi(x, 2, init=torch.ones(20, 3, dtype=F64))
    with pytest.raises(ValueError, match="restarts"):
        cavi(x, 2, init=torch.ones(20, 2, dtype=F64), restarts=2)
    with pytest.raises(ValueError, match="tol"):
        cavi(x, 2, tol=-1.0)


# ----------------------------------------------------------------------------- the CLI


def test_cli_simulated_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["cavi", "--out", str(out), "--n", "200", "--n-test", "100", "--restarts", "2"]
    assert main([*argv, "--k", "3"]) == 0
    assert "held-out log predictive" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["k"] == 3 and config["train_points"] == 200 and config["test_points"] == 100
    assert metrics["restarts"] == 2 and metrics["n_test"] == 100
    assert abs(metrics["elbo_per_datum"] - metrics["elbo"] / 200) < 1e-12
    assert metrics["heldout_log_predictive"] < 0
    trace = np.loadtxt(out / "trace.csv", delimiter=",", skiprows=1, ndmin=2)
    assert len(trace) == metrics["iterations"] and trace[-1, 1] == metrics["elbo"]
    assert (out / "components.png").stat().st_size > 0
    # the same directory is not overwritten
    assert main([*argv, "--k", "3"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_cli_reads_a_file_and_refuses_bad_input(tmp_path, capsys):
    x = sample(n=60, k=2, d=3, seed=8).x.numpy()
    path = tmp_path / "x.npy"
    np.save(path, x)
    out = tmp_path / "run"
    assert main(["cavi", "--data", str(path), "--k", "2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 48 and metrics["n_test"] == 12
    assert not (out / "components.png").exists()  # 3-D: no figure
    capsys.readouterr()
    x[5, 2] = np.inf
    np.save(path, x)
    assert main(["cavi", "--data", str(path), "--out", str(tmp_path / "bad")]) == 2
    assert "NaN or inf" in capsys.readouterr().err
    assert main(["cavi", "--data", str(tmp_path / "missing.npy")]) == 2
    assert "no such data file" in capsys.readouterr().err
    assert main(["cavi", "--k", "0", "--out", str(tmp_path / "k0")]) == 2
    assert "--k" in capsys.readouterr().err


def test_cli_svi_reaches_the_cavi_optimum(tmp_path, capsys):
    common = ["--n", "2000", "--n-test", "200", "--k", "3", "--restarts", "3", "--seed", "2"]
    assert main(["cavi", *common, "--out", str(tmp_path / "cavi")]) == 0
    argv = ["cavi", "--method", "svi", *common, "--batch-size", "200", "--steps", "300"]
    assert main([*argv, "--out", str(tmp_path / "svi")]) == 0
    assert "300 steps, 30 epochs" in capsys.readouterr().out
    exact = json.loads((tmp_path / "cavi" / "metrics.json").read_text())
    fit = json.loads((tmp_path / "svi" / "metrics.json").read_text())
    assert fit["method"] == "svi" and fit["examples"] == 60_000
    assert abs(fit["elbo_per_datum"] - exact["elbo_per_datum"]) < 1e-3
    assert abs(fit["heldout_log_predictive"] - exact["heldout_log_predictive"]) < 1e-3
    trace = np.loadtxt(tmp_path / "svi" / "trace.csv", delimiter=",", skiprows=1, ndmin=2)
    assert trace[0, 0] == 0 and trace[-1, 0] == 300 and trace[-1, 3] == fit["elbo"]
    assert main([*argv, "--batch-size", "5000", "--out", str(tmp_path / "big")]) == 2
    assert "exceeds the 2000 training points" in capsys.readouterr().err
    assert main([*argv, "--kappa", "0.4", "--out", str(tmp_path / "k")]) == 2
    assert "--kappa" in capsys.readouterr().err
