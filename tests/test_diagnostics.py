"""PSIS k-hat and importance ESS of a fitted q: the functions, and their place in results."""

from __future__ import annotations

import math

import pytest
import torch

from flowvi import targets
from flowvi.flows import NormalizingFlow, build
from flowvi.metrics import evaluate, khat_summary, khat_verdict, psis_khat
from flowvi.vae import VAE, Encoder, LinearGaussianDecoder, make_posterior
from flowvi.vae.evaluate import importance_diagnostics

F64 = torch.float64


def _gaussian(scale: float, d: int = 2) -> NormalizingFlow:
    """N(0, scale^2 I) as a flow: an affine layer on N(0, I)."""
    flow = build("affine", d).double()
    with torch.no_grad():
        flow.layers[0].params["log_scale"].fill_(math.log(scale))
    return flow


def _standard_normal_target(d: int = 2) -> targets.Target:
    # unnormalized on purpose: ln Z = d/2 ln(2 pi)
    return targets.FunctionTarget(lambda z: -0.5 * (z * z).sum(-1), d, name="normal")


def test_khat_is_low_for_q_equal_to_the_target_and_high_for_a_narrow_q():
    torch.manual_seed(0)
    target = _standard_normal_target()
    khats = {}
    for scale in (1.0, 1.5, 0.4):
        q = _gaussian(scale)
        z, log_q = q.rsample_and_log_prob((4000,))
        khats[scale] = psis_khat(target.log_prob(z) - log_q)
    assert khats[1.0] < 0.5  # q = p up to the constant: equal weights
    assert khats[1.5] < 0.5  # wider than p: bounded weights
    # narrower than p: Pareto tail with shape 1 - 0.4^2 = 0.84 (the weights' variance is infinite)
    assert khats[0.4] > 0.7
    # batched: one k-hat per row, the same as one at a time
    z = torch.randn(3, 2000, dtype=F64)
    log_w = -0.5 * z**2 * (1 - 0.6**-2)
    rows = psis_khat(log_w)
    assert rows.shape == (3,)
    torch.testing.assert_close(rows[1], torch.tensor(psis_khat(log_w[1]), dtype=F64))


def test_verdicts_follow_the_thresholds():
    assert khat_verdict(0.3).startswith("good")
    assert khat_verdict(0.6).startswith("usable")
    assert khat_verdict(0.9).startswith("poor")
    assert khat_verdict(float("nan")).startswith("poor")
    s = khat_summary(torch.tensor([0.1, 0.2, 0.3, 0.6, 0.8]))
    assert s["khat_median"] == pytest.approx(0.3)
    assert s["khat_above_0.5"] == pytest.approx(0.4) and s["khat_above_0.7"] == pytest.approx(0.2)
    assert s["khat_verdict"].startswith("good") and "40% above 0.5" in s["khat_verdict"]


def test_fit_metrics_carry_khat_and_its_verdict():
    torch.manual_seed(0)
    target = targets.get("U1")
    # N(0, 0.3^2 I) sits in the hole of U1's ring of radius 2: it misses the mass
    m = evaluate(_gaussian(0.3), target, samples=20_000, grid_size=200, forward_grid_size=50)
    assert m["khat"] > 0.7 and m["khat_verdict"].startswith("poor")
    good = evaluate(_gaussian(1.0), _standard_normal_target(), samples=20_000)
    assert good["khat"] < 0.5 and good["khat_verdict"].startswith("good")
    assert good["ess_fraction"] == pytest.approx(1.0)


def test_vae_diagnostics_tell_a_narrow_from_a_wide_posterior():
    torch.manual_seed(0)
    W = torch.tensor([[1.0, 0.9], [0.8, 1.0], [1.0, 1.1]], dtype=F64)
    decoder = LinearGaussianDecoder(W, torch.zeros(3, dtype=F64), 3.0)  # p(z|x) near N(0, I)
    model = VAE(Encoder(3, (8,)), make_posterior("diagonal", 2, 8), decoder).double()
    x = decoder(torch.randn(20, 2, dtype=F64)).sample()
    base = model.posterior.base
    out = {}
    for name, raw_scale in (("narrow", -3.0), ("wide", 1.0)):  # sigma = softplus(raw)
        with torch.no_grad():
            base.scale.weight.zero_()
            base.scale.bias.fill_(raw_scale)
            base.mean.weight.zero_()
            base.mean.bias.zero_()
        out[name] = importance_diagnostics(model, x, samples=1000, batch_size=7)
    narrow, wide = out["narrow"], out["wide"]
    assert narrow["khat_points"] == 20 and narrow["khat_samples"] == 1000
    assert narrow["khat_median"] > 0.7 and narrow["khat_verdict"].startswith("poor")
    assert wide["khat_median"] < 0.5 and wide["khat_verdict"].startswith("good")
    assert 0 < narrow["ess_fraction_mean"] < wide["ess_fraction_mean"] <= 1
    with pytest.raises(ValueError, match="at least 5"):
        importance_diagnostics(model, x, samples=3)
