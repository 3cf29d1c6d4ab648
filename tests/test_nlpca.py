"""The nonlinear-PCA baseline: its loss is the reconstruction cross-entropy, it trains through
the one training loop, and at equal latent size it reconstructs digits better than a VAE."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from flowvi.train import train
from flowvi.vae import VAE, BernoulliDecoder, Encoder, make_posterior
from flowvi.vae.data import load_binary
from flowvi.vae.pca import NonlinearPCA, reconstruction_metrics, vae_reconstruction


def test_loss_is_the_summed_binary_cross_entropy_of_the_code():
    torch.manual_seed(0)
    model = NonlinearPCA(6, 2, (8, 8)).double()
    x = torch.bernoulli(torch.full((5, 6), 0.4, dtype=torch.float64))
    logits = model.decoder.net(model.code(model.encoder(x)))
    expected = -binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    torch.testing.assert_close(model.log_lik(x), expected, atol=1e-12, rtol=0)
    assert model.encode(x).shape == (5, 2)
    with pytest.raises(ValueError, match="code size"):
        NonlinearPCA(6, 0)


def test_fitted_code_gaussian_has_the_codes_mean_and_covariance():
    torch.manual_seed(0)
    model = NonlinearPCA(6, 3, (8,)).double()
    x = torch.rand(500, 6, dtype=torch.float64)
    model.fit_codes(x, batch_size=128)
    z = model.encode(x).detach()
    g = model.code_distribution()
    torch.testing.assert_close(g.mean, z.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(g.covariance_matrix, torch.cov(z.T), atol=1e-5, rtol=0)
    assert model.sample(7).shape == (7, 6)
    with pytest.raises(ValueError, match="codes"):
        model.fit_codes(x[:3])


def _fit(model, x: torch.Tensor, score, iters: int = 150) -> torch.Tensor:
    """Adam through flowvi.train.train on minibatches of 100 images; the loss trace."""
    g = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(x), generator=g) for _ in range(iters // 10 + 1)])

    def loss_fn(t: int):
        xb = x[order[t * 100 : (t + 1) * 100]]
        value = score(xb)
        return -value.mean(), {"score": value}

    return train(model, loss_fn, iters=iters, lr=3e-3, progress=False)


def test_nlpca_trains_and_reconstructs_digits_better_than_a_vae_of_equal_latent_size():
    splits = load_binary("digits", seed=0)
    x, test = splits.train.float(), splits.test.float()
    d, hidden = 8, (32,)
    torch.manual_seed(0)
    nlpca = NonlinearPCA(64, d, hidden)
    nlpca.decoder.init_bias(x.mean(0))
    trace = _fit(nlpca, x, nlpca.log_lik)
    assert trace[-20:].mean() < 0.6 * trace[:20].mean()  # the loss falls

    torch.manual_seed(0)
    encoder = Encoder(64, hidden)
    posterior = make_posterior("diagonal", d, encoder.context_dim)
    vae = VAE(encoder, posterior, BernoulliDecoder(d, 64, hidden))
    vae.decoder.init_bias(x.mean(0))
    _fit(vae, x, vae.elbo)

    with torch.no_grad():
        out = nlpca.decoder(nlpca.encode(test))
        ours = reconstruction_metrics(out.log_prob(test), test, out.mean)
        log_lik_vae, probs_vae = vae_reconstruction(vae, test)
        theirs = reconstruction_metrics(log_lik_vae, test, probs_vae)
        paired = log_lik_vae - out.log_prob(test)  # per test image, VAE minus nonlinear PCA
    # same trunk, decoder, data and iterations: without a KL term to pay, the deterministic
    # code keeps more of the image, even at the VAE's most favourable code (its posterior
    # mean). The claim is made at d = 8, where the gap is wide (the VAE leaves latents
    # unused). It is not true at every size: in benchmarks/nlpca.py (300-300 networks, early
    # stopping) the VAE's *test* reconstruction is the better one at d <= 4, where the
    # nonlinear PCA overfits the 1258 training images while reconstructing them better.
    gap = theirs["test_reconstruction"] - ours["test_reconstruction"]
    assert gap > 1
    assert gap > 5 * float(paired.std() / len(paired) ** 0.5)
    assert ours["test_pixel_error"] < theirs["test_pixel_error"]


def test_cli_nlpca_run_writes_metrics_and_eval_reads_them(tmp_path):
    from safetensors.torch import load_file

    from flowvi.app.cli import main
    from flowvi.vae.config import load_vae
    from flowvi.vae.pca import load_nlpca

    out = tmp_path / "nlpca"
    flags = ["--model", "nlpca", "--latent", "3", "--hidden", "16", "--batch-size", "400"]
    assert main(["vae", "train", *flags, "--epochs", "2", "--quiet", "--out", str(out)]) == 0
    part = tmp_path / "part"
    assert main(["vae", "train", *flags, "--epochs", "1", "--quiet", "--out", str(part)]) == 0
    assert main(["vae", "train", "--resume", str(part), "--epochs", "2", "--quiet"]) == 0
    full_weights, part_weights = (load_file(str(p / "model.safetensors")) for p in (out, part))
    for name, value in full_weights.items():  # resuming equals an uninterrupted run
        assert torch.equal(part_weights[name], value), name
    for name in ("samples.png", "reconstructions.png", "trace.csv", "train.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "nlpca" and metrics["n_test"] == 359
    assert 0 < metrics["test_reconstruction"] < 64 * 0.7  # below a coin flip per pixel (ln 2)
    assert main(["vae", "eval", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["test_reconstruction"] == metrics["test_reconstruction"]  # deterministic
    model, config = load_nlpca(out)
    assert config.model == "nlpca" and model.d == 3
    assert not torch.equal(model.code_scale_tril, torch.eye(3))  # the fitted code Gaussian
    with pytest.raises(ValueError, match="nonlinear PCA"):
        load_vae(out)
    with pytest.raises(ValueError, match="no finished"):
        load_nlpca(tmp_path / "missing")
    assert main(["vae", "train", "--model", "pca", "--out", str(tmp_path / "bad")]) == 2
