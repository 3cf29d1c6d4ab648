"""Grey-level likelihoods of the VAE decoder: normalized densities, and runs that use them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowvi.vae import PixelLikelihood
from flowvi.vae.config import VAEConfig
from flowvi.vae.data import load_binary


def _out(n=5, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64) * 3


def test_bernoulli_is_the_binary_cross_entropy():
    out = _out()
    x = (torch.rand(5, 3, dtype=torch.float64) > 0.5).double()
    p = torch.sigmoid(out)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(PixelLikelihood("bernoulli", 3)(out).log_prob(x), expected)


@pytest.mark.parametrize("kind", ["continuous-bernoulli", "gaussian"])
def test_grey_level_likelihoods_are_normalized_on_the_pixel_range(kind):
    """Each pixel's density integrates to 1: over [0, 1] for the continuous Bernoulli (its
    support), over the real line for the Gaussian."""
    lik = PixelLikelihood(kind, 4).double()
    out = _out(1, 4).squeeze(0)
    lo, hi = (0.0, 1.0) if kind == "continuous-bernoulli" else (-3.0, 4.0)
    grid = torch.linspace(lo, hi, 20_001, dtype=torch.float64)
    pixels = lik(out.expand(len(grid), 4)).base_dist
    density = pixels.log_prob(grid[:, None].expand(-1, 4)).exp()
    torch.testing.assert_close(
        torch.trapezoid(density, grid, dim=0), torch.ones(4, dtype=torch.float64), atol=2e-4, rtol=0
    )


def test_gaussian_scale_is_learned_per_pixel_and_starts_at_a_tenth():
    lik = PixelLikelihood("gaussian", 6)
    pixels = lik(torch.zeros(2, 6)).base_dist
    torch.testing.assert_close(pixels.scale, torch.full((2, 6), 0.1))
    assert [name for name, _ in lik.named_parameters()] == ["scale"]
    assert list(PixelLikelihood("bernoulli", 6).parameters()) == []  # old runs load unchanged
    with pytest.raises(ValueError, match="likelihood"):
        PixelLikelihood("poisson", 6)


def test_config_takes_the_likelihoods_own_binarization_and_refuses_mismatches():
    assert VAEConfig().binarize == "static"
    assert VAEConfig(likelihood="gaussian").binarize == "none"
    assert VAEConfig(likelihood="continuous-bernoulli", binarize="none").binarize == "none"
    with pytest.raises(ValueError, match="grey levels"):
        VAEConfig(likelihood="gaussian", binarize="dynamic").validate()
    with pytest.raises(ValueError, match="binary pixels"):
        VAEConfig(binarize="none").validate()
    with pytest.raises(ValueError, match="nlpca"):
        VAEConfig(model="nlpca", likelihood="gaussian").validate()
    grey = load_binary("digits", binarize="none")
    assert ((grey.test > 0) & (grey.test < 1)).any() and not grey.dynamic


@pytest.mark.parametrize("kind", ["continuous-bernoulli", "gaussian"])
def test_cli_trains_and_evaluates_a_grey_level_vae(tmp_path, kind):
    from flowvi.app.cli import main

    out = tmp_path / kind
    flags = ["--latent", "2", "--hidden", "32", "--posterior", "planar", "--length", "2"]
    argv = ["vae", "train", "--likelihood", kind, *flags, "--epochs", "2", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    assert main(["vae", "eval", str(out), "--samples", "64", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["likelihood"] == kind and config["binarize"] == "none"
    assert math.isfinite(metrics["test_nll"]) and kind in metrics["units"]
    # importance sampling tightens the bound: -ln p(x) below the -ELBO (up to noise)
    assert metrics["test_nll"] < metrics["test_neg_elbo"] + 3 * metrics["test_neg_elbo_se"]
    assert (out / "samples.png").is_file()
