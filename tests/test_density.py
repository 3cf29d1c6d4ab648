"""Maximum-likelihood fitting: early stopping, MLE of a linear flow, and `flowvi density` runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from flowvi import load
from flowvi.app.cli import main
from flowvi.app.density import DensityConfig, run_density
from flowvi.density import fit_density
from flowvi.distributions import StandardNormal
from flowvi.flows import (
    LogitPreprocessing,
    NormalizingFlow,
    Standardization,
    TriangularAffine,
    build,
)
from flowvi.train import EarlyStopping, train


def test_early_stopping_stops_after_patience_and_restores_the_best_state():
    model = nn.Linear(1, 1)
    scripted = iter([3.0, 2.0, 2.5, 2.125, 2.25, 1.0])
    stopper = EarlyStopping(lambda: torch.tensor(next(scripted)), every=5, patience=3)

    def loss_fn(t):
        return (model.weight**2).sum() + model.bias.sum(), {}

    trace = train(model, loss_fn, iters=100, lr=0.1, progress=False, early_stopping=stopper)
    assert stopper.trace == [(5, 3.0), (10, 2.0), (15, 2.5), (20, 2.125), (25, 2.25)]
    assert stopper.stopped and stopper.best == 2.0 and stopper.best_iteration == 10
    assert not torch.isnan(trace[:25]).any() and torch.isnan(trace[25:]).all()
    assert torch.equal(model.weight, stopper.best_state["weight"])


def test_early_stopping_resume_matches_an_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(400, 2, dtype=torch.float64) * torch.tensor([2.0, 0.5]).double() + 1.0
    train_x, valid_x = x[:300], x[300:]

    def run(directory, iters, *, resume=False):
        torch.manual_seed(1)
        flow = build("maf", 2, length=2, hidden=(8,)).double()
        trace, stopper = fit_density(
            flow,
            train_x,
            valid_x,
            iters=iters,
            batch_size=32,
            lr=1e-2,
            valid_every=10,
            patience=3,
            directory=directory,
            resume=resume,
            checkpoint_every=10,
            progress=False,
            schedule="constant",  # a cosine depends on iters, which the "kill" here shortens
        )
        return flow, trace, stopper

    full, full_trace, full_stop = run(tmp_path / "a", 400)
    run(tmp_path / "b", 30)
    resumed, resumed_trace, resumed_stop = run(tmp_path / "b", 400, resume=True)
    assert resumed_stop.trace == full_stop.trace
    assert torch.equal(full_trace.nan_to_num(-1), resumed_trace.nan_to_num(-1))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_mle_of_a_linear_flow_recovers_the_sample_mean_and_covariance():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.5, 0.3, 0.4]], dtype=torch.float64)
    x = torch.randn(500, 3, dtype=torch.float64) @ mix.T + torch.tensor([1.0, -2.0, 0.5])
    flow = NormalizingFlow(StandardNormal(3), [TriangularAffine(3)]).double()
    fit_density(flow, x, iters=3000, batch_size=len(x), lr=2e-2, progress=False)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / len(x)  # the MLE divides by n
    with torch.no_grad():
        transform = flow.layers[0]()
        # the model is x = loc + L z, z ~ N(0, I): mean loc = t(0), covariance L Lᵀ, L = ∂x/∂z
        loc = transform(torch.zeros(1, 3, dtype=x.dtype))[0]
    jac = torch.autograd.functional.jacobian(transform, torch.zeros(1, 3, dtype=x.dtype))
    matrix = jac.reshape(3, 3)
    torch.testing.assert_close(loc, mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(matrix @ matrix.T, cov, atol=1e-6, rtol=0)


def test_the_data_end_affine_layer_adds_the_standardization_jacobian():
    torch.manual_seed(0)
    inner = build("nsf", 2, length=2, hidden=(8,)).double()
    loc, scale = torch.tensor([3.0, -1.0]).double(), torch.tensor([2.0, 0.25]).double()
    outer = NormalizingFlow(inner.base, [*inner.layers, Standardization(2, mean=loc, std=scale)])
    outer = outer.double()
    x = torch.randn(50, 2, dtype=torch.float64) * scale + loc
    expected = inner.log_prob((x - loc) / scale) - scale.log().sum()
    torch.testing.assert_close(outer.log_prob(x), expected, atol=1e-12, rtol=0)
    assert not list(outer.layers[-1].parameters())  # nothing to train in the data end


def test_logit_data_end_gives_minus_inf_outside_its_image():
    """A flow ending in LogitPreprocessing has density zero outside its image (levels 4,
    alpha 0.05: x in (-0.2/0.9, 3.8/0.9) per component): log_prob is -inf there, not NaN,
    and unchanged inside."""
    torch.manual_seed(0)
    inner = build("nsf", 2, length=2, hidden=(8,)).double()
    flow = NormalizingFlow(inner.base, [*inner.layers, LogitPreprocessing(2, levels=4)]).double()
    x = torch.tensor([[1.0, 2.0], [-0.5, 2.0], [1.0, 4.5], [-1e6, 1e6]], dtype=torch.float64)
    log_q = flow.log_prob(x)
    assert torch.isfinite(log_q[0]) and (log_q[1:] == -math.inf).all()
    torch.testing.assert_close(log_q[:1], flow.log_prob(x[:1]), rtol=0, atol=0)
    samples = flow.sample((200,))
    assert torch.isfinite(flow.log_prob(samples)).all()


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("moons")
    config = DensityConfig(
        flow="realnvp",
        length=4,
        hidden=(32, 32),
        n_train=2000,
        n_valid=500,
        n_test=1000,
        iters=600,
        lr=3e-3,
        valid_every=50,
        patience=5,
        checkpoint_every=200,
    )
    metrics = run_density(config, directory, progress=False)
    return config, directory, metrics


def test_density_run_writes_a_complete_run_and_learns_the_moons(moons_run):
    config, directory, metrics = moons_run
    for name in ("config.json", "model.safetensors", "trace.csv", "metrics.json", "density.png"):
        assert (directory / name).exists(), name
    saved = json.loads((directory / "metrics.json").read_text())
    assert saved["test_nll"] == pytest.approx(metrics["test_nll"])
    # a standard normal fit to the standardized moons scores about 2.6 nats in data units;
    # a 4-layer RealNVP learns the two arcs
    assert metrics["test_nll"] < 1.6
    assert metrics["test_nll_per_dim"] == pytest.approx(metrics["test_nll"] / 2)
    assert 0 < metrics["best_iteration"] <= metrics["iterations"] <= config.iters


def test_fitted_2d_density_integrates_to_one(moons_run):
    _, directory, _ = moons_run
    flow = load(directory).double()
    n, lo, hi = 500, -6.0, 6.0
    cell = ((hi - lo) / n) ** 2
    centres = lo + (torch.arange(n, dtype=torch.float64) + 0.5) * (hi - lo) / n
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
    with torch.no_grad():
        mass = torch.exp(flow.log_prob(points)).sum() * cell
    assert mass.item() == pytest.approx(1.0, abs=2e-3)


def test_density_run_resumes_to_more_iterations(moons_run):
    _, directory, metrics = moons_run
    if metrics["stopped_early"]:
        pytest.skip("the fixture run stopped early: nothing to extend")
    code = main(["density", "--resume", str(directory), "--iters", "700", "--quiet"])
    assert code == 0
    resumed = json.loads((directory / "metrics.json").read_text())
    assert resumed["iterations"] > metrics["iterations"]


def test_cli_density_on_a_csv_names_the_bad_row(tmp_path, capsys):
    path = tmp_path / "data.csv"
    rows = np.random.default_rng(0).normal(size=(50, 3))
    rows[17, 1] = np.nan
    np.savetxt(path, rows, delimiter=",", header="a,b,c", comments="")
    code = main(["density", "--data", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nan" in err.lower() and "19" in err  # file line 19: header + 18th data row
    assert not (tmp_path / "run" / "config.json").exists()  # refused before any work


def test_cli_density_on_a_csv_reports_nats(tmp_path, capsys):
    path = tmp_path / "data.csv"
    x = np.random.default_rng(0).normal(size=(300, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -1.0]
    np.savetxt(path, x, delimiter=",")
    out = tmp_path / "run"
    args = ["density", "--data", str(path), "--flow", "maf", "--length", "2", "--hidden", "16"]
    code = main([*args, "--iters", "300", "--lr", "1e-2", "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # Gaussian data: the test NLL is near the Gaussian entropy in data units
    entropy = 0.5 * 3 * (1 + math.log(2 * math.pi)) + math.log(1.0 * 10.0 * 0.1)
    assert metrics["test_nll"] == pytest.approx(entropy, abs=0.3)
    assert "test NLL" in capsys.readouterr().out


def test_cli_density_on_digits_reports_bits_per_dim(tmp_path):
    out = tmp_path / "digits"
    args = ["density", "--data", "digits", "--flow", "realnvp", "--length", "2", "--hidden", "32"]
    code = main([*args, "--iters", "60", "--valid-every", "20", "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_bits_per_dim"] == pytest.approx(
        metrics["test_nll"] / (64 * math.log(2)), rel=1e-9
    )
    # 17 levels: a uniform model scores log2(17) = 4.09 bits/dim; any fit beats a crude bound
    assert 0 < metrics["test_bits_per_dim"] < 6
    assert (out / "samples.png").exists()


def test_density_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="unknown data"):
        DensityConfig(data="nosuchset").validate()
    with pytest.raises(ValueError, match="valid-fraction"):
        DensityConfig(valid_fraction=0.7).validate()
    with pytest.raises(ValueError, match="Adam only"):
        DensityConfig(compile=True, optimizer="rmsprop").validate()
    with pytest.raises(ValueError, match="flow"):
        DensityConfig(flow="glow").validate()


@pytest.mark.parametrize(
    ("case", "flow_name"), [("no compiler", "realnvp"), ("one graph", "planar")]
)
def test_compile_falls_back_to_eager_with_a_warning(monkeypatch, case, flow_name):
    """Where torch.compile fails (e.g. no C++ compiler), or the step cannot be one graph
    (planar layers invert by a data-dependent iteration), training goes on eagerly and gives
    the same fit as an eager run."""

    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no compiler")

        return call

    x = torch.randn(64, 2, dtype=torch.float64)
    fits = []
    for compile in (False, True):
        torch.manual_seed(0)
        flow = build(flow_name, 2, length=2, hidden=(8,)).double()
        if compile:
            if case == "no compiler":
                monkeypatch.setattr(torch, "compile", broken)
            with pytest.warns(RuntimeWarning, match="torch.compile failed"):
                trace, _ = fit_density(
                    flow, x, iters=5, batch_size=16, progress=False, compile=True
                )
        else:
            trace, _ = fit_density(flow, x, iters=5, batch_size=16, progress=False)
        fits.append((trace, flow.state_dict()))
    torch.testing.assert_close(fits[0][0], fits[1][0], rtol=0, atol=0)
    for name, value in fits[0][1].items():
        torch.testing.assert_close(value, fits[1][1][name], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ([1, 1, 0, 0, 0], (slice(0, 2), slice(2, 5))),
        ([0, 0, 0, 1, 1], (slice(3, 5), slice(0, 3))),
        ([1, 0, 1, 0], None),
    ],
)
def test_coupling_parts_are_slices_only_for_contiguous_ranges(part, expected):
    from flowvi.transforms.coupling import contiguous_parts

    assert contiguous_parts(torch.tensor(part, dtype=torch.bool)) == expected
