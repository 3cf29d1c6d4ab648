"""Exact 2-D latent posterior pictures: grids against the linear-Gaussian model's closed forms."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from flowvi.app.vae import evaluate_vae, run_vae
from flowvi.vae import VAE, Encoder, LinearGaussianDecoder, make_posterior
from flowvi.vae.config import VAEConfig
from flowvi.vae.latent2d import posterior_grids


def _model(family: str, d: int = 2) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    W = torch.tensor([[1.0, 0.9], [0.8, 1.0], [1.0, 1.1]], dtype=torch.float64)[:, :d]
    decoder = LinearGaussianDecoder(W, torch.zeros(3, dtype=torch.float64), 0.5)
    posterior = make_posterior(family, d, 8, length=2, hidden=(8,))
    model = VAE(Encoder(3, (8,)), posterior, decoder).double()
    x = decoder(torch.randn(2, d, dtype=torch.float64)).sample()
    return model, x


def test_grid_matches_the_closed_form_evidence_posterior_and_kl():
    model, x = _model("diagonal")
    grids = posterior_grids(model, x, resolution=150)
    exact = model.decoder.posterior(x)
    q0 = model.posterior.base(model.encoder(x)).base_dist
    q = MultivariateNormal(q0.loc, torch.diag_embed(q0.scale**2))
    for i, g in enumerate(grids):
        assert g.log_px == pytest.approx(float(model.decoder.log_evidence(x[i])), abs=2e-3)
        assert g.q_mass == pytest.approx(1.0, abs=1e-3)
        # the grid-normalized posterior is the exact one, pointwise, where it has mass
        n = g.log_post.shape[0]
        xs = torch.linspace(*g.box[0], n + 1, dtype=torch.float64)
        ys = torch.linspace(*g.box[1], n + 1, dtype=torch.float64)
        cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
        points = torch.stack(torch.meshgrid(cy, cx, indexing="ij")[::-1], -1)
        true = MultivariateNormal(exact.loc[i], exact.covariance_matrix[i]).log_prob(points)
        mass = true > true.max() - 8
        torch.testing.assert_close(g.log_post[mass], true[mass], atol=2e-3, rtol=0)
        torch.testing.assert_close(g.log_q[mass], q.log_prob(points.unsqueeze(-2))[..., i][mass])
        expected = float(kl_divergence(q, exact)[i].detach())
        assert g.kl == pytest.approx(expected, abs=5e-3)
        assert expected > 0.05  # a diagonal q of a correlated posterior: a visible gap


def test_flow_posterior_integrates_to_one_on_its_grid():
    model, x = _model("planar")
    for g in posterior_grids(model, x, resolution=100):
        assert g.q_mass == pytest.approx(1.0, abs=5e-3)
        assert g.kl > 0


def test_refuses_other_latent_sizes_and_shapes():
    model, x = _model("diagonal", d=1)
    with pytest.raises(ValueError, match="2-D latent"):
        posterior_grids(model, x)
    model, x = _model("diagonal")
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        posterior_grids(model, x[0])


def test_eval_of_a_2d_run_draws_the_figure_and_compares_runs(tmp_path):
    settings = {"latent": 2, "hidden": (16,), "flow_hidden": (8,), "epochs": 1, "length": 2}
    run_vae(VAEConfig(posterior="iaf", **settings), tmp_path / "iaf", progress=False)
    shutil.copytree(tmp_path / "iaf", tmp_path / "twin")  # a second run to draw beside it
    m = evaluate_vae(tmp_path / "iaf", samples=20, compare=(tmp_path / "twin",))
    assert (tmp_path / "iaf" / "posterior2d.png").stat().st_size > 10_000
    first, twin = m["latent2d"]
    assert first["run"] == "iaf K=2" and twin["run"].startswith("twin")
    assert len(first["grid_kl_q_to_posterior"]) == 4
    assert all(k >= -1e-6 for k in first["grid_kl_q_to_posterior"])
    assert twin["grid_log_px"] == pytest.approx(first["grid_log_px"])  # the same model
    other = tmp_path / "other"  # the same run, as if trained on another split
    shutil.copytree(tmp_path / "iaf", other)
    (other / "config.json").write_text(
        json.dumps(json.loads((other / "config.json").read_text()) | {"seed": 1})
    )
    with pytest.raises(ValueError, match="data or split"):
        evaluate_vae(tmp_path / "iaf", samples=20, compare=(other,))
