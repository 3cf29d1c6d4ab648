"""NormalizingFlow as a torch distribution: normalization, one-pass densities, interop, errors."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest
import torch
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    TransformedDistribution,
)

import flowvi
from flowvi.distributions import DiagonalGaussian, StandardNormal
from flowvi.flows import Affine, Planar, Radial
from flowvi.metrics import cell_area, grid


def _flow(seed=0):
    torch.manual_seed(seed)
    layers = [Planar(2), Radial(2), Planar(2), Affine(2), Radial(2), Planar(2)]
    flow = flowvi.NormalizingFlow(StandardNormal(2), layers).double()
    with torch.no_grad():
        for layer in flow.layers:
            for p in layer.parameters():
                p.normal_(0.0, 0.5)
    return flow


@pytest.mark.parametrize("seed", [0, 1])
def test_density_integrates_to_one(seed):
    flow = _flow(seed)
    with torch.no_grad():
        x = flow.sample((20_000,))
        lo, hi = x.min(0).values - 3, x.max(0).values + 3
        box = [(float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))]
        points, _, _ = grid(box, 800)
        mass = torch.exp(flow.log_prob(points)).sum() * cell_area(box, 800)
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


def test_rsample_and_log_prob_agrees_with_log_prob():
    flow = _flow()
    x, log_q = flow.rsample_and_log_prob((500,))
    torch.testing.assert_close(flow.log_prob(x), log_q, rtol=0, atol=1e-8)
    assert x.requires_grad and log_q.requires_grad


def test_log_prob_of_a_linear_flow_is_the_gaussian_density():
    flow = flowvi.flows.build("triangular", 3).double()
    with torch.no_grad():
        flow.layers[0].params["loc"].copy_(torch.tensor([1.0, -2.0, 0.5]))
        flow.layers[0].params["matrix"].copy_(
            torch.tensor([[0.3, 0.0, 0.0], [0.7, -0.2, 0.0], [-1.0, 0.4, 0.1]])
        )
    t = flow().transforms[0]
    gaussian = MultivariateNormal(t.loc, scale_tril=t.scale_tril)
    x = gaussian.sample((50,))
    torch.testing.assert_close(flow.log_prob(x), gaussian.log_prob(x), rtol=0, atol=1e-10)


def test_behaves_as_a_torch_distribution():
    flow = _flow()
    assert isinstance(flow, Distribution) and isinstance(flow, torch.nn.Module)
    assert isinstance(flow(), TransformedDistribution)
    assert flow.event_shape == (2,) and flow.batch_shape == ()
    assert flow.sample((5,)).shape == (5, 2)
    assert flow.rsample((4, 3)).shape == (4, 3, 2)
    assert flow.sample().shape == (2,)
    assert not flow.sample((5,)).requires_grad
    assert flow.log_prob(torch.zeros(4, 3, 2, dtype=torch.float64)).shape == (4, 3)
    independent = Independent(flow(), 0)
    assert independent.log_prob(torch.zeros(2, 2, dtype=torch.float64)).shape == (2,)


def test_log_prob_refuses_nan_and_wrong_shape():
    flow = _flow()
    with pytest.raises(ValueError):
        flow.log_prob(torch.tensor([[0.0, math.nan]], dtype=torch.float64))
    with pytest.raises(ValueError):
        flow.log_prob(torch.zeros(4, 3, dtype=torch.float64))


def test_diagonal_gaussian_base_trains_and_follows_dtype():
    flow = flowvi.NormalizingFlow(DiagonalGaussian(2), [Planar(2), Planar(2)])
    x, log_q = flow.rsample_and_log_prob((64,))
    (log_q.mean() + x.square().mean()).backward()
    assert flow.base.loc.grad.abs().sum() > 0 and flow.base.log_scale.grad.abs().sum() > 0
    flow = flow.double()
    assert flow.sample((3,)).dtype == torch.float64


def test_torch_distribution_as_base():
    base = MultivariateNormal(torch.zeros(2), 2.0 * torch.eye(2))
    flow = flowvi.NormalizingFlow(base, [Affine(2)])
    x = torch.randn(10, 2)
    torch.testing.assert_close(flow.log_prob(x), base.log_prob(x))
    with pytest.raises(ValueError, match="event shape"):
        flowvi.NormalizingFlow(torch.distributions.Normal(0.0, 1.0), [Affine(1)])


def test_build_refuses_bad_names_and_lengths():
    with pytest.raises(ValueError, match="planar"):
        flowvi.flows.build("nope", 2)
    with pytest.raises(ValueError, match="length"):
        flowvi.flows.build("planar", 2, length=0)
    with pytest.raises(ValueError, match="standard"):
        flowvi.flows.build("planar", 2, base="uniform")


def test_save_and_load_a_hand_built_flow(tmp_path):
    flow = _flow()
    flowvi.save(flow, tmp_path)
    spec = json.loads((tmp_path / "config.json").read_text())["model"]
    assert spec["base"] == "standard" and spec["d"] == 2
    assert [e["layer"] for e in spec["layers"]][:2] == ["planar", "radial"]
    loaded = flowvi.load(tmp_path)
    assert next(loaded.parameters()).dtype == torch.float64
    x = torch.randn(20, 2, dtype=torch.float64)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), rtol=0, atol=0)


def test_save_refuses_what_it_cannot_rebuild(tmp_path):
    flow = flowvi.NormalizingFlow(MultivariateNormal(torch.zeros(2), torch.eye(2)), [Planar(2)])
    with pytest.raises(ValueError, match="base"):
        flowvi.save(flow, tmp_path)
    assert not (tmp_path / "config.json").exists()


def _conditional_flow(seed=0):
    """Amortized planar layers on a 3-d context: ``flow(context)`` has batch shape ``*batch``."""
    torch.manual_seed(seed)
    layers = [Planar(2, context_dim=3), Planar(2, context_dim=3)]
    return flowvi.NormalizingFlow(StandardNormal(2), layers).double()


def _tensors(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("method", ["sample", "rsample", "rsample_and_log_prob"])
@pytest.mark.parametrize("of", ["module", "distribution"])
def test_an_int_sample_shape_means_one_dimension(method, of):
    flow = _flow()
    target = flow if of == "module" else flow()
    torch.manual_seed(3)
    from_int = getattr(target, method)(5)
    torch.manual_seed(3)
    from_tuple = getattr(target, method)((5,))
    pairs = zip(_tensors(from_int), _tensors(from_tuple), strict=True)
    for a, b in pairs:
        assert a.shape[0] == 5
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="non-negative"):
        getattr(target, method)(-1)


_ESTIMATE = {
    "mean": (lambda q: q.mean, r"no closed-form mean: .*sample\(\(n,\)\)\.mean\(0\)"),
    "variance": (lambda q: q.variance, r"no closed-form variance: .*\.var\(0\)"),
    "stddev": (lambda q: q.stddev, r"no closed-form standard deviation: .*\.std\(0\)"),
    "mode": (lambda q: q.mode, r"no closed-form mode: .*log_prob"),
    "entropy": (lambda q: q.entropy(), r"no closed-form entropy: .*rsample_and_log_prob"),
    "cdf": (lambda q: q.cdf(torch.zeros(2, dtype=torch.float64)), r"no closed-form CDF: .*sample"),
    "icdf": (lambda q: q.icdf(torch.tensor(0.5)), r"no closed-form inverse CDF .*quantile"),
    "enumerate_support": (lambda q: q.enumerate_support(), "continuous .* no finite support"),
}


@pytest.mark.parametrize("name", list(_ESTIMATE))
@pytest.mark.parametrize("of", ["module", "distribution"])
def test_quantities_without_a_closed_form_say_how_to_estimate_them(name, of):
    flow = _flow()
    call, message = _ESTIMATE[name]
    with pytest.raises(NotImplementedError, match=message):
        call(flow if of == "module" else flow())


def test_the_entropy_estimate_the_message_suggests_is_right():
    """-E[ln q(x)] by rsample_and_log_prob, against the closed-form entropy of a linear flow."""
    flow = flowvi.flows.build("triangular", 2).double()
    with torch.no_grad():
        flow.layers[0].params["matrix"].copy_(torch.tensor([[2.0, 0.0], [0.5, 0.3]]))
    torch.manual_seed(0)
    estimate = -flow.rsample_and_log_prob((20_000,))[1].mean(0)
    t = flow().transforms[0]
    exact = MultivariateNormal(t.loc, scale_tril=t.scale_tril).entropy()
    assert abs(float(estimate - exact)) < 0.03


def test_expand_is_a_batch_of_independent_copies():
    flow = _flow()
    copies = flow.expand((3,))
    assert copies.batch_shape == (3,) and copies.event_shape == (2,)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(copies.log_prob(x), flow.log_prob(x), rtol=0, atol=0)
    joint = Independent(copies, 1)
    assert joint.event_shape == (3, 2)
    torch.testing.assert_close(joint.log_prob(x), flow.log_prob(x).sum(-1), rtol=0, atol=0)
    torch.manual_seed(0)
    draws = copies.sample((4000,))
    assert draws.shape == (4000, 3, 2)
    # independent copies: the copies' first coordinates are uncorrelated, each has the flow's law
    corr = torch.corrcoef(draws[:, :, 0].T)
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() < 0.1
    torch.testing.assert_close(draws.mean(0), draws.mean((0, 1)).expand(3, 2), rtol=0, atol=0.1)
    with pytest.raises(ValueError, match=r"batch shape \(3,\) to \(2,\)"):
        copies.expand((2,))


def test_independent_over_a_context_batch_and_expand_of_a_conditional_flow():
    flow = _conditional_flow()
    context = torch.randn(4, 3, dtype=torch.float64)
    q = flow(context)
    assert q.batch_shape == (4,)
    x = torch.randn(6, 4, 2, dtype=torch.float64)
    joint = Independent(q, 1)
    assert joint.batch_shape == () and joint.event_shape == (4, 2)
    torch.testing.assert_close(joint.log_prob(x), q.log_prob(x).sum(-1), rtol=0, atol=0)
    assert joint.rsample((5,)).shape == (5, 4, 2)
    wider = q.expand((2, 4))
    y = torch.randn(2, 4, 2, dtype=torch.float64)
    torch.testing.assert_close(wider.log_prob(y), q.log_prob(y), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"batch shape \(4,\) to \(3,\)"):
        q.expand((3,))
    # an unconditional flow has no batch dimension to reinterpret: torch says so
    independent = Independent(_flow(), 0)
    torch.testing.assert_close(independent.log_prob(x[0]), _flow().log_prob(x[0]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="reinterpreted_batch_ndims"):
        Independent(_flow(), 1)


def test_a_value_or_context_of_another_dtype_is_refused_naming_both():
    flow = flowvi.flows.build("planar", 2, length=2)  # float32
    with pytest.raises(TypeError, match=r"torch\.float64.*torch\.float32"):
        flow.log_prob(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"torch\.int64.*torch\.float32"):
        flow().log_prob(torch.zeros(3, 2, dtype=torch.long))
    conditional = _conditional_flow().float()
    context = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"context has dtype torch\.float64.*torch\.float32"):
        conditional.log_prob(torch.zeros(4, 2), context=context)
    with pytest.raises(TypeError, match=r"context has dtype torch\.float64.*torch\.float32"):
        conditional.sample(2, context=context)
    assert conditional.log_prob(torch.zeros(4, 2), context=context.float()).shape == (4,)


@pytest.fixture
def saved_run(tmp_path):
    flowvi.save(_flow(), tmp_path)
    return tmp_path


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _truncate(d / "config.json"), r"config\.json is not valid JSON"),
        (lambda d: (d / "config.json").write_bytes(b"\xff\xfe"), r"config\.json is not valid"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), r"config\.json holds a JSON list"),
        (lambda d: (d / "config.json").write_text("{}"), r"config\.json"),  # no model at all
        (
            lambda d: (d / "config.json").write_text('{"model": "vae", "latent": 2}'),
            r"config\.json",  # a VAE run's config lacking what a VAE needs: still a RunError
        ),
        (
            lambda d: (d / "config.json").write_text('{"model": {"d": 2, "base": "standard"}}'),
            r"config\.json: its model entry cannot be rebuilt \(KeyError: 'layers'\)",
        ),
        (lambda d: _truncate(d / "model.safetensors"), r"model\.safetensors is not a readable"),
        (lambda d: (d / "model.safetensors").unlink(), r"model\.safetensors does not exist"),
        (
            lambda d: flowvi.io.write_tensors(
                d / "model.safetensors", flowvi.flows.build("planar", 3).state_dict()
            ),
            r"model\.safetensors does not hold the weights of the model in config\.json",
        ),
    ],
    ids=[
        "truncated-config",
        "binary-config",
        "config-not-an-object",
        "no-model",
        "vae-run",
        "broken-model-entry",
        "truncated-weights",
        "no-weights",
        "other-weights",
    ],
)
def test_load_of_a_damaged_or_foreign_run_names_the_file(saved_run, damage, message):
    damage(saved_run)
    with pytest.raises(flowvi.io.RunError, match=message) as caught:
        flowvi.load(saved_run)
    assert isinstance(caught.value, ValueError)
    assert str(saved_run) in str(caught.value)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_run_files_get_the_usual_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        flowvi.save(_flow(), tmp_path)
        flowvi.io.write_json(tmp_path / "other.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors", "other.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "other.json",
    ]  # no temporary file left behind
