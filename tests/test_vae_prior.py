"""VAEs with a flow prior: the bounds stay valid against ln p(x) by quadrature, the prior is
trained with the model, and it survives saving and loading."""

from __future__ import annotations

import math

import pytest
import torch

from flowvi.flows import MAF
from flowvi.vae import VAE, Encoder, LinearGaussianDecoder, log_likelihood, make_posterior
from flowvi.vae.prior import PRIORS, make_prior


def _model(seed: int = 0) -> tuple[VAE, torch.Tensor]:
    """d = 2, D = 3, a linear-Gaussian decoder and a two-layer MAF prior whose weights are
    perturbed away from the identity (so the prior is not Gaussian)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.tensor([[1.0, 0.9], [0.8, 1.0], [1.0, 1.1]], dtype=torch.float64)
    decoder = LinearGaussianDecoder(W, 0.1 * torch.randn(3, generator=g, dtype=torch.float64), 0.3)
    torch.manual_seed(seed)
    prior = make_prior("maf", 2, length=2, hidden=(16,))
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    posterior = make_posterior("planar", 2, 16, length=2)
    model = VAE(Encoder(3, (16,)), posterior, decoder, prior=prior).double()
    x = decoder(torch.randn(4, 2, generator=g, dtype=torch.float64)).sample()
    return model, x


@torch.no_grad()
def _log_evidence_by_quadrature(model: VAE, x: torch.Tensor, n: int = 601) -> torch.Tensor:
    """ln ∫ p(z) p(x | z) dz on an n × n grid over [-7, 7]^2 (a Riemann sum), shape (batch,)."""
    t = torch.linspace(-7, 7, n, dtype=torch.float64)
    z = torch.cartesian_prod(t, t)  # (n², 2)
    log_prior = model.prior().log_prob(z)  # (n²,)
    log_joint = log_prior[:, None] + model.decoder(z[:, None, :]).log_prob(x)  # (n², batch)
    h = float(t[1] - t[0])
    return log_joint.logsumexp(0) + 2 * math.log(h)


def test_flow_prior_is_a_normalized_non_gaussian_density():
    model, _ = _model()
    t = torch.linspace(-9, 9, 601, dtype=torch.float64)
    z = torch.cartesian_prod(t, t)
    with torch.no_grad():
        log_p = model.prior().log_prob(z)
    mass = float(log_p.logsumexp(0).exp()) * float(t[1] - t[0]) ** 2
    assert abs(mass - 1) < 2e-3
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    bulk = standard > -6
    assert float((log_p - standard)[bulk].abs().max()) > 1  # the perturbed MAF is not N(0, I)


def test_flow_prior_elbo_and_iwae_lie_below_ln_px_and_converge_to_it():
    model, x = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.prior_flow.parameters()]
    for _ in range(150):  # fit the encoder (and the prior) a little: a usable proposal
        loss = -model.elbo(x, samples=8).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = list(model.prior_flow.parameters())
    moved = [float((p.detach() - b).abs().max()) for p, b in zip(after, before, strict=True)]
    assert max(moved) > 1e-3  # the prior is trained with the model

    log_px = _log_evidence_by_quadrature(model, x)
    torch.manual_seed(1)
    with torch.no_grad():
        # the flow prior disables the analytic KL: both calls are Monte Carlo estimates
        # E_q[ln p(x|z) + ln p(z) - ln q(z|x)], with the flow prior's density in ln p(z)
        mc = model.elbo(x, samples=20_000)
        z, log_q = model.q(x).rsample_and_log_prob((20_000,))
        log_w = model.decoder(z).log_prob(x) + model.prior_flow().log_prob(z) - log_q
        torch.testing.assert_close(mc, log_w.mean(0), atol=0.05, rtol=0)
        assert (mc < log_px - 0.01).all()  # a strict gap: q is not the exact posterior
        bounds = [model.iwae(x.expand(100, 4, 3), k).mean(0) for k in (1, 10, 100, 1000)]
        is_estimate = log_likelihood(model, x, samples=20_000, chunk=5000)
    gaps = [float((log_px - bound).mean()) for bound in bounds]
    assert all(g > -5e-3 for g in gaps)
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[3] < 0.2 * gaps[0]
    torch.testing.assert_close(is_estimate, log_px, atol=0.02, rtol=0)


def test_analytic_kl_only_for_the_standard_normal_prior():
    model, x = _model()
    posterior = make_posterior("diagonal", 2, 16)
    diagonal = VAE(model.encoder, posterior.double(), model.decoder, prior=model.prior_flow)
    assert not diagonal.flowless
    plain = VAE(model.encoder, posterior, model.decoder)
    assert plain.flowless
    torch.manual_seed(0)
    with torch.no_grad():
        with_flow = diagonal.elbo(x, samples=20_000)  # Monte Carlo KL to the flow prior
        with_normal = plain.elbo(x, samples=20_000)  # analytic KL to N(0, I)
    # the two priors differ, so must the bounds (an analytic N(0, I) KL would make them equal)
    assert float((with_flow - with_normal).abs().max()) > 0.1


def test_make_prior_choices_and_errors():
    assert make_prior("normal", 3) is None
    prior = make_prior("realnvp", 4, length=3, hidden=(8,))
    assert len(prior.layers) == 3 and tuple(prior.event_shape) == (4,)
    assert isinstance(make_prior("maf", 2, length=2).layers[1], MAF)
    assert "standardize" not in PRIORS and "maf" in PRIORS
    with pytest.raises(ValueError, match="prior"):
        make_prior("nope", 2)
    with pytest.raises(ValueError, match="length"):
        make_prior("maf", 2, length=0)
    with pytest.raises(ValueError, match="event shape"):
        VAE(Encoder(3, (8,)), make_posterior("diagonal", 2, 8), None, prior=make_prior("maf", 3))


def test_cli_flow_prior_round_trips_through_the_run_directory(tmp_path):
    from safetensors.torch import load_file

    from flowvi.app.cli import main
    from flowvi.vae.config import load_vae

    out = tmp_path / "run"
    flags = ["--latent", "2", "--hidden", "16", "--posterior", "diagonal", "--batch-size", "400"]
    flags += ["--prior", "maf", "--prior-length", "2", "--flow-hidden", "8", "--epochs", "2"]
    assert main(["vae", "train", *flags, "--quiet", "--out", str(out)]) == 0
    model, config = load_vae(out)
    assert config.prior == "maf" and config.prior_length == 2
    assert len(model.prior_flow.layers) == 2
    saved = load_file(str(out / "model.safetensors"))
    assert any(name.startswith("prior_flow.") for name in saved)
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    # the trained prior moved away from N(0, I) and the loaded one gives the same density
    z = torch.randn(50, 2)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    with torch.no_grad():
        log_p = model.prior().log_prob(z)
        again = load_vae(out)[0].prior().log_prob(z)
    assert torch.equal(log_p, again)
    assert float((log_p - standard).abs().max()) > 1e-4
    assert (out / "samples.png").is_file()
    assert main(["vae", "train", "--prior", "nope", "--out", str(tmp_path / "bad")]) == 2
