"""The inference gap (Cremer et al. 2018): local q*, the decomposition, and ``flowvi vae gap``."""

from __future__ import annotations

import json

import pytest
import torch

from flowvi.vae import VAE, Encoder, LinearGaussianDecoder, make_posterior
from flowvi.vae.gap import GapSettings, LocalPosterior, elbo_crn, fit_local, inference_gap

F64 = torch.float64


def _linear_gaussian(n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.tensor([[1.0, 0.9], [0.8, 1.0], [1.0, 1.1]], dtype=F64)
    decoder = LinearGaussianDecoder(W, 0.1 * torch.randn(3, generator=g, dtype=F64), 0.3)
    x = decoder(torch.randn(n, 2, generator=g, dtype=F64)).sample()
    return decoder, x


def _vae(decoder, family: str, flow_context: int | None = None) -> VAE:
    torch.manual_seed(0)  # an untrained encoder: a poor amortized q, a large amortization gap
    posterior = make_posterior(family, 2, 8, length=2, hidden=(8,), flow_context=flow_context)
    return VAE(Encoder(3, (8,)), posterior, decoder).double()


@pytest.mark.parametrize(
    ("family", "flow_context"),
    [("diagonal", None), ("planar", None), ("sylvester-o", None), ("iaf", None), ("planar", 3)],
)
def test_local_posterior_starts_at_the_amortized_posterior(family, flow_context):
    decoder, x = _linear_gaussian()
    model = _vae(decoder, family, flow_context)
    local = LocalPosterior(model, x)
    eps = torch.randn(50, len(x), 2, dtype=F64)
    with torch.no_grad():
        start = elbo_crn(model, local(), x, eps)
        amortized = elbo_crn(model, model.q(x), x, eps)
    torch.testing.assert_close(start, amortized, atol=1e-10, rtol=0)
    # its parameters are per datapoint and the model's are not among them
    assert all(p.shape[0] == len(x) for p in local.parameters())
    own = {id(p) for p in model.parameters()}
    assert not any(id(p) in own for p in local.parameters())


def test_local_diagonal_reaches_the_mean_field_optimum():
    decoder, x = _linear_gaussian()
    model = _vae(decoder, "diagonal")
    fit = fit_local(
        model, x, max_iters=1500, lr=0.05, samples=20, check_every=50, tol=1e-3, patience=3
    )
    eps = torch.randn(4000, len(x), 2, dtype=F64)
    with torch.no_grad():
        bound = elbo_crn(model, fit.posterior(), x, eps)
    # the best diagonal Gaussian for a Gaussian posterior with precision L has variances
    # 1 / L_ii, and KL(q*||p) = (sum_i ln L_ii - ln det L) / 2, the same for every x
    precision = torch.eye(2, dtype=F64) + decoder.W.mT @ decoder.W / decoder.sigma**2
    kl = 0.5 * (precision.diag().log().sum() - torch.logdet(precision))
    torch.testing.assert_close(
        decoder.log_evidence(x) - bound, kl.expand(len(x)), atol=0.05, rtol=0
    )
    assert fit.converged.any() and (fit.iterations <= 1500).all()
    assert (fit.best >= fit.start).all()
    # the model is left trainable
    assert all(p.requires_grad for p in model.parameters())


def test_gap_decomposition_adds_up_and_q_star_beats_q_on_every_point():
    decoder, x = _linear_gaussian()
    truth = decoder.log_evidence(x)
    settings = GapSettings(chains=64, steps=60, leapfrog=5, step_size=0.1, local_iters=600,
                           local_lr=0.05, elbo_samples=500)  # fmt: skip
    gaps = {}
    for family in ("diagonal", "planar"):
        torch.manual_seed(1)
        out = inference_gap(_vae(decoder, family), x, settings)
        p = {k: torch.tensor(v, dtype=F64) for k, v in out["per_point"].items()}
        torch.testing.assert_close(p["inference"], p["approximation"] + p["amortization"])
        assert (p["L_qstar"] >= p["L_q"]).all()
        assert (p["L_qstar"] < truth + 0.05).all()  # an ELBO, below ln p(x)
        assert ((p["log_px"] - truth).abs() < 4 * p["log_px_se"] + 0.05).all()
        s = out["summary"]
        total = s["approximation"]["mean"] + s["amortization"]["mean"]
        assert s["inference"]["mean"] == pytest.approx(total)
        assert out["seconds_per_point"] > 0 and len(out["per_point"]["L_q"]) == len(x)
        gaps[family] = s
    # a flow posterior shrinks the approximation gap of a correlated posterior
    assert gaps["planar"]["approximation"]["mean"] < gaps["diagonal"]["approximation"]["mean"]
    with pytest.raises(ValueError, match="chains"):
        inference_gap(_vae(decoder, "diagonal"), x, GapSettings(chains=0))


def test_cli_vae_gap_two_runs_side_by_side(tmp_path, capsys):
    from flowvi.app.cli import main

    tiny = ["--latent", "2", "--hidden", "16", "--length", "2", "--batch-size", "400"]
    out = tmp_path / "planar"
    flags = ["--posterior", "planar", "--epochs", "1", "--quiet", "--out", str(out)]
    assert main(["vae", "train", *tiny, *flags]) == 0
    runs = [str(out), str(out)]  # the same run twice: two columns
    capsys.readouterr()
    small = ["--n", "3", "--chains", "4", "--steps", "5", "--leapfrog", "2", "--local-iters", "20",
             "--elbo-samples", "10"]  # fmt: skip
    assert main(["vae", "gap", *runs, *small]) == 0
    table = capsys.readouterr().out
    assert "amortization gap" in table and table.splitlines()[0].count("planar K=2") == 2
    result = json.loads((out / "gap.json").read_text())
    assert result["n"] == 3 and result["settings"]["steps"] == 5
    s = result["summary"]
    total = s["approximation"]["mean"] + s["amortization"]["mean"]
    assert s["inference"]["mean"] == pytest.approx(total)
    assert main(["vae", "gap", runs[0], "--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err
