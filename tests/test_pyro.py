"""The Pyro bridge: a Pyro model as a flowvi target, a flowvi flow as a Pyro guide."""

import importlib
import math
import sys

import pytest
import torch

pyro = pytest.importorskip("pyro")

import pyro.distributions as dist  # noqa: E402
from pyro import poutine  # noqa: E402
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoDiagonalNormal  # noqa: E402
from torch.distributions import biject_to  # noqa: E402

import flowvi  # noqa: E402
from flowvi._imports import load_object  # noqa: E402
from flowvi.flows import build  # noqa: E402
from flowvi.flows.flow import FlowDistribution  # noqa: E402
from flowvi.pyro import FlowGuide, PyroTarget, subsample_indices, target  # noqa: E402
from flowvi.targets.sites import split, unconstrain  # noqa: E402

LOG_2PI = math.log(2 * math.pi)
Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=torch.float64)
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64)


@pytest.fixture(autouse=True)
def _float64_fresh_pyro():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


def normal_lpdf(x, loc, scale):
    scale = torch.as_tensor(scale, dtype=torch.float64)
    return -0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI


def schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def schools_by_hand(z):
    """Centered eight schools in z = (mu, ln tau, theta_1..8), written out: (n, 10) -> (n,)."""
    mu, log_tau, theta = z[:, 0], z[:, 1], z[:, 2:]
    tau = log_tau.exp()
    half_cauchy = math.log(2 / (math.pi * 5.0)) - torch.log1p((tau / 5.0) ** 2)
    lp = normal_lpdf(mu, 0.0, 5.0) + half_cauchy + log_tau  # + ln tau: d tau / d ln tau
    lp = lp - 0.5 * (((theta - mu[:, None]) / tau[:, None]) ** 2).sum(-1)
    lp = lp - 8 * log_tau - 4 * LOG_2PI
    return lp - 0.5 * (((Y - theta) / SIGMA) ** 2).sum(-1) - SIGMA.log().sum() - 4 * LOG_2PI


PAIR = torch.tensor([0.5, -0.5], dtype=torch.float64)


def nested(data):
    """Two nested plates, a site with an event dim and a scale shared by the plates."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    c = pyro.sample("c", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("pair", dist.Normal(c, 1.0).to_event(1), obs=PAIR)
    with pyro.plate("groups", 3, dim=-2), pyro.plate("items", 2, dim=-1):
        w = pyro.sample("w", dist.Normal(0.0, scale))
        pyro.sample("obs", dist.Normal(w, 1.0), obs=data)


def nested_by_hand(z):
    """``nested`` in z = (ln scale, c_1, c_2, w_11, …, w_32): (n, 9) -> (n,)."""
    log_scale, c, w = z[:, 0], z[:, 1:3], z[:, 3:].reshape(-1, 3, 2)
    data = torch.arange(6.0).reshape(3, 2) / 4
    lp = normal_lpdf(log_scale, 0.0, 1.0)  # LogNormal's -ln s cancels the Jacobian's +ln s
    lp = lp + normal_lpdf(c, 0.0, 1.0).sum(-1) + normal_lpdf(PAIR, c, 1.0).sum(-1)
    lp = lp + normal_lpdf(w, 0.0, log_scale.exp()[:, None, None]).sum((-1, -2))
    return lp + normal_lpdf(data, w, 1.0).sum((-1, -2))


def test_log_prob_equals_hand_written_joint_in_one_vectorized_call():
    p = target(schools, Y, SIGMA)
    assert isinstance(p, PyroTarget) and p.name == "schools"
    assert (p.dim, p.max_plate_nesting) == (10, 1)
    assert [s.name for s in p.sites] == ["mu", "tau", "theta"]
    assert p.model is schools and p.args == (Y, SIGMA) and p.kwargs == {}
    z = torch.randn(7, 10, dtype=torch.float64)
    z[:, 1] = z[:, 1] + 1.0
    calls = []
    p.model = lambda *a: (calls.append(1), schools(*a))[1]  # count the model's calls
    lp = p.log_prob(z)
    assert len(calls) == 1
    assert lp.dtype == torch.float64 and lp.shape == (7,)
    torch.testing.assert_close(lp, schools_by_hand(z), rtol=0, atol=1e-10)
    alone = torch.stack([p.log_prob(zi) for zi in z])
    torch.testing.assert_close(lp, alone, rtol=0, atol=1e-10)
    torch.testing.assert_close(p.log_prob(z[:6].reshape(2, 3, 10)), lp[:6].reshape(2, 3))
    # differentiable in z: the gradient of the sum is that of the hand-written joint
    z.requires_grad_()
    (grad,) = torch.autograd.grad(p.log_prob(z).sum(), z)
    (expected,) = torch.autograd.grad(schools_by_hand(z).sum(), z)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-10)


def test_nested_plates_and_event_dims():
    data = torch.arange(6.0).reshape(3, 2) / 4
    p = target(nested, data)
    assert p.max_plate_nesting == 2
    assert [(s.name, s.shape) for s in p.sites] == [("scale", ()), ("c", (2,)), ("w", (3, 2))]
    z = torch.randn(7, 9)
    torch.testing.assert_close(p.log_prob(z), nested_by_hand(z), rtol=0, atol=1e-10)


def simplex_model():
    with pyro.plate("rows", 4):
        pyro.sample("p", dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0])))
        pyro.sample("rate", dist.Gamma(2.0, 3.0))


def test_constrained_sites_map_back_exactly():
    p = target(simplex_model)
    assert [(s.name, s.shape, s.unconstrained_shape) for s in p.sites] == [
        ("p", (4, 3), (4, 2)),
        ("rate", (4,), (4,)),
    ]
    z = torch.randn(5, p.dim)
    values = p.constrain(z)
    supports = {"p": dist.constraints.simplex, "rate": dist.constraints.positive}
    for site, piece in split(p.sites, z):
        torch.testing.assert_close(values[site.name], biject_to(supports[site.name])(piece))
    torch.testing.assert_close(values["p"].sum(-1), torch.ones(5, 4))
    assert bool((values["rate"] > 0).all())
    torch.testing.assert_close(unconstrain(p.sites, values), z, rtol=0, atol=1e-10)
    # the density of z: the model's density of the values plus ln|det| of u -> x, here
    # computed by autograd (the simplex's first K - 1 coordinates determine it)
    z0 = z[0]

    def to_free(z):
        v = p.constrain(z)
        return torch.cat([v["p"][:, :2].reshape(-1), v["rate"]])

    log_det = torch.linalg.slogdet(torch.autograd.functional.jacobian(to_free, z0))[1]
    v = p.constrain(z0)
    log_joint = dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0])).log_prob(v["p"]).sum()
    log_joint = log_joint + dist.Gamma(2.0, 3.0).log_prob(v["rate"]).sum()
    torch.testing.assert_close(p.log_prob(z0), log_joint + log_det, rtol=0, atol=1e-10)


def discrete_model():
    pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("k", dist.Categorical(torch.ones(3) / 3))


def local_latent_model(data):
    with pyro.plate("data", len(data), subsample_size=5) as idx:
        z = pyro.sample("local", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=data[idx])


def undeclared_batch_model():
    pyro.sample("w", dist.Normal(torch.zeros(3), 1.0))


def test_refuses_discrete_subsampled_and_undeclared_latents():
    with pytest.raises(ValueError, match=r"'k'.*discrete"):
        target(discrete_model)
    with pytest.raises(ValueError, match=r"'local'.*subsampled plate 'data'"):
        target(local_latent_model, torch.randn(20))
    with pytest.raises(ValueError, match=r"'w' has a batch dim of size 3 at dim -1"):
        target(undeclared_batch_model)


def subsampled(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data), subsample_size=5) as idx:
        pyro.sample("obs", dist.Normal(mu, 2.0), obs=data[idx])


@pytest.mark.parametrize("n", [20, 400])  # Pyro's randperm (B > N/8), and O(B) draws
def test_subsampled_likelihood_is_unbiased(n):
    data = torch.linspace(-3.0, 5.0, n)
    p = target(subsampled, data)
    z = torch.tensor([[0.3], [1.5]])
    full = normal_lpdf(z[:, 0], 0.0, 1.0) + normal_lpdf(data, z, 2.0).sum(-1)
    draws = torch.stack([p.log_prob(z) for _ in range(500)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert bool((se > 0.1).all())  # it does subsample
    assert bool(((mean - full).abs() < 4 * se).all()), (mean, full, se)
    # one subsample of 5 scaled by 20 / 5: the value is a multiple of the per-point terms
    one = p.log_prob(z[:1])
    assert not torch.allclose(one, full[:1])


def two_subsampled_plates(x, y, g, sub=300, sub2=70):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", len(y), subsample_size=sub) as i:
        pyro.sample("y", dist.Normal((x[i] * w).sum(-1), sigma), obs=y[i])
    with pyro.plate("other", len(g), subsample_size=sub2) as j:
        pyro.sample("g", dist.Normal(w[..., :1], 1.0), obs=g[j])


def test_exact_is_the_full_data_log_joint_of_a_subsampled_model():
    """1000 and 250 data in plates of 300 and 70 (neither divides): four sweeps, the last of
    each overlapping, give the log joint of the model without subsampling."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, 3, generator=generator), torch.randn(1000, generator=generator)
    g = torch.randn(250, generator=generator)
    x, y, g = x.double(), y.double(), g.double()
    sub = target(two_subsampled_plates, x, y, g)
    full = target(two_subsampled_plates, x, y, g, None, None)
    assert sub.subsampled == {"data": (1000, 300), "other": (250, 70)} and full.subsampled == {}
    z = torch.randn(7, sub.dim, generator=generator, dtype=torch.float64)
    exact = sub.exact()
    torch.testing.assert_close(exact.log_prob(z), full.log_prob(z), rtol=0, atol=1e-9)
    assert full.exact() is full and exact.exact() is exact
    assert not torch.allclose(sub.log_prob(z), full.log_prob(z))  # one call: an estimate
    # the summary weighs q's draws with the exact log joint: its ELBO is the full model's
    q = build("affine", sub.dim).double()
    ours = flowvi.posterior.summarize(q, sub, samples=300, seed=1)
    theirs = flowvi.posterior.summarize(q, full, samples=300, seed=1)
    assert ours.elbo == pytest.approx(theirs.elbo, abs=1e-8)


def test_exact_refuses_nested_subsampled_plates():
    def nested(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", 10, subsample_size=3, dim=-2):
            with pyro.plate("cols", 10, subsample_size=4, dim=-1):
                pyro.sample("obs", dist.Normal(mu, 1.0), obs=torch.zeros(3, 4))

    with pytest.raises(ValueError, match="nested subsampling"):
        target(nested, None).exact().log_prob(torch.zeros(2, 1))


def test_quick_subsample_indices_are_distinct_and_uniform():
    counts = torch.zeros(100)
    for _ in range(20_000):
        idx = subsample_indices(100, 5)
        assert idx.shape == (5,) and len(idx.unique()) == 5 and 0 <= idx.min() <= idx.max() < 100
        counts[idx] += 1
    # each index in 5/100 of the subsamples: 1000 ± 31 expected
    assert float((counts - 1000).abs().max()) < 5 * math.sqrt(1000 * 0.95)
    torch.testing.assert_close(subsample_indices(7, 9), torch.arange(7))


def test_fit_runs_on_a_pyro_target():
    p = target(schools, Y, SIGMA)
    flow = build("affine", p.dim).double()
    losses = flowvi.fit(flow, p, iters=5, batch_size=32, progress=False)
    assert losses.shape == (5,) and bool(torch.isfinite(losses).all())


def perturbed_guide(model, *args, **options):
    guide = FlowGuide(model, **options)
    guide(*args)  # builds the flow
    with torch.no_grad():
        for parameter in guide.flow.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return guide


@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
@pytest.mark.parametrize("particles", [1, 4], ids=["one", "vectorized"])
def test_pyro_elbo_equals_flowvi(elbo_class, particles):
    p = target(schools, Y, SIGMA)
    guide = perturbed_guide(schools, Y, SIGMA, flow="iaf", length=2, hidden=(8,))
    assert guide.flow.base.loc.dtype == torch.float64
    elbo = elbo_class(
        num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
    )
    pyro.set_rng_seed(3)
    loss = elbo.loss(schools, guide, Y, SIGMA)
    # the same draws: the guide runs first in Pyro's ELBO, in the particle plate if vectorized
    pyro.set_rng_seed(3)
    with pyro.plate("particles", particles, dim=-2) if particles > 1 else poutine.block():
        guide_trace = poutine.trace(guide).get_trace(Y, SIGMA)
    latent = guide_trace.nodes["_FlowGuide_latent"]["value"].reshape(particles, p.dim)
    with torch.no_grad():
        ours = -(p.log_prob(latent) - guide.flow.log_prob(latent)).mean()
    assert abs(loss - ours.item()) < 1e-6
    assert abs(ours.item()) > 1.0


def test_svi_steps_train_the_flow_without_an_inverse_pass(monkeypatch):
    inverses = []
    original = FlowDistribution.log_prob

    def counted(self, value):
        inverses.append(value.shape)
        return original(self, value)

    monkeypatch.setattr(FlowDistribution, "log_prob", counted)
    guide = FlowGuide(schools, flow="iaf", length=2, hidden=(8,))
    for elbo in (
        Trace_ELBO(),
        TraceMeanField_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
    ):
        svi = SVI(schools, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        svi.step(Y, SIGMA)
        before = [t.detach().clone() for t in guide.flow.parameters()]
        svi.step(Y, SIGMA)
        after = list(guide.flow.parameters())
        assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert inverses == []
    names = set(pyro.get_param_store().keys())
    assert {f"FlowGuide.flow$$${n}" for n, _ in guide.flow.named_parameters()} <= names
    # a point the flow did not just return is scored exactly, by the inverse
    posterior = guide.get_posterior()
    x = posterior.rsample((5,))
    torch.testing.assert_close(posterior.log_prob(x.clone()), posterior.log_prob(x))
    assert len(inverses) == 1


def conjugate(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def test_svi_recovers_the_conjugate_posterior():
    y = torch.randn(10, 2) + torch.tensor([1.0, -2.0])
    post_mean, post_sd = y.sum(0) / 11, 1 / math.sqrt(11)
    guide = FlowGuide(conjugate, flow="iaf", length=2, hidden=(8,), quantile_samples=20_000)
    elbo = TraceMeanField_ELBO(num_particles=16, vectorize_particles=True)
    svi = SVI(conjugate, guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.985}), elbo)
    for _ in range(300):
        svi.step(y)
    with torch.no_grad():
        u = guide.flow.sample((20_000,))
    torch.testing.assert_close(u.mean(0), post_mean, rtol=0, atol=0.05)
    torch.testing.assert_close(u.std(0), torch.full((2,), post_sd), rtol=0.1, atol=0)

    median = guide.median(y)
    assert set(median) == {"mu"} and median["mu"].shape == (2,)
    torch.testing.assert_close(median["mu"], post_mean, rtol=0, atol=0.05)
    qs = [0.1, 0.5, 0.9]
    quantiles = guide.quantiles(qs, y)
    assert quantiles["mu"].shape == (3, 2)
    exact = (
        post_mean + post_sd * torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(qs))[:, None]
    )
    torch.testing.assert_close(quantiles["mu"], exact, rtol=0, atol=0.06)

    samples = Predictive(conjugate, guide=guide, num_samples=30)(y)
    # Pyro's shapes (its own AutoDiagonalNormal's): a latent gets the plates' singleton dim
    assert samples["mu"].shape == (30, 1, 2)
    assert samples["y"].shape == (30, 10, 2)
    reference = AutoDiagonalNormal(conjugate)
    expected = Predictive(conjugate, guide=reference, num_samples=30)(y)
    assert {k: v.shape for k, v in samples.items()} == {k: v.shape for k, v in expected.items()}
    torch.testing.assert_close(samples["mu"].mean((0, 1)), post_mean, rtol=0, atol=0.25)


def test_predictive_in_parallel_gives_pyros_shapes():
    # (Pyro's parallel Predictive mishandles a latent with an event dim, AutoDiagonalNormal's
    # too, so this is eight schools, whose latents are scalars in plates.)
    guide = FlowGuide(schools, flow="iaf", length=2, hidden=(8,))
    samples = Predictive(schools, guide=guide, num_samples=20, parallel=True)(Y, SIGMA)
    shapes = {k: v.shape for k, v in samples.items()}
    assert shapes == {"mu": (20, 1), "tau": (20, 1), "theta": (20, 8), "y": (20, 8)}
    assert bool((samples["tau"] > 0).all())
    sequential = Predictive(schools, guide=guide, num_samples=20)(Y, SIGMA)
    assert {k: v.shape for k, v in sequential.items()} == shapes


@pytest.mark.parametrize("flow", ["planar", "realnvp", "maf"])
def test_guide_takes_any_registered_family(flow):
    guide = FlowGuide(schools, flow=flow, length=2, hidden=(8,), init_scale=0.5)
    svi = SVI(schools, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert math.isfinite(svi.step(Y, SIGMA))
    # the base starts at the unconstrained init point with the requested scale
    fresh = FlowGuide(schools, flow=flow, length=2, hidden=(8,), init_scale=0.5)
    fresh(Y, SIGMA)
    torch.testing.assert_close(fresh.flow.base.loc, fresh._init_loc())
    torch.testing.assert_close(fresh.flow.base.log_scale.exp(), torch.full((10,), 0.5))


def test_guide_refuses_bad_options():
    with pytest.raises(ValueError, match="unknown flow 'nope'"):
        FlowGuide(schools, flow="nope")
    with pytest.raises(ValueError, match="init_scale"):
        FlowGuide(schools, init_scale=0.0)


def test_import_without_pyro_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyro", None)
    monkeypatch.delitem(sys.modules, "flowvi.pyro")
    with pytest.raises(ImportError, match=r'pip install "flowvi\[pyro\]"'):
        importlib.import_module("flowvi.pyro")


MODEL_FILE = """
import pyro, pyro.distributions as dist, torch

def model(y, x):
    w = pyro.sample("w", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(5.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(w * x, sigma), obs=y)
"""


def test_cli_fits_a_pyro_model_file_with_data_and_the_run_gives_back_a_guide(tmp_path, monkeypatch):
    from flowvi.app.cli import main

    torch.manual_seed(1)
    x = torch.linspace(-2, 2, 200)
    y = 1.5 * x + 0.5 * torch.randn(200)
    (tmp_path / "models.py").write_text(MODEL_FILE)
    (tmp_path / "data.csv").write_text(
        "y,x\n" + "".join(f"{a:.6f},{b:.6f}\n" for a, b in zip(y.tolist(), x.tolist(), strict=True))
    )
    monkeypatch.chdir(tmp_path)
    torch.set_default_dtype(torch.float32)
    argv = ["fit", "--model", "models.py:model", "--data", "data.csv", "--iters", "1500"]
    assert main([*argv, "--samples", "4000", "--quiet", "--out", "run"]) == 0
    for name in ("summary.csv", "summary.json", "posterior.nc", "metrics.json", "trace.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = {r["parameter"]: r for r in csv_rows(tmp_path / "run" / "summary.csv")}
    # the exact posterior of w (sigma near 0.5): mean Σxy/Σx², sd σ/√Σx²
    exact_mean = float((x * y).sum() / (x * x).sum())
    exact_sd = 0.5 / float((x * x).sum().sqrt())
    assert float(rows["w"]["mean"]) == pytest.approx(exact_mean, abs=3 * exact_sd)
    assert float(rows["w"]["sd"]) == pytest.approx(exact_sd, rel=0.3)
    assert 0.4 < float(rows["sigma"]["50%"]) < 0.6  # constrained space: sigma itself
    idata = pytest.importorskip("arviz").from_netcdf(tmp_path / "run" / "posterior.nc")
    assert (idata.posterior["sigma"].values > 0).all()

    flow = flowvi.load(tmp_path / "run")
    model = load_object("models.py:model")
    guide = FlowGuide(model, flow=flow)
    draws = Predictive(model, guide=guide, num_samples=500)(y, x)
    assert draws["w"].numel() == 500 and draws["y"].shape == (500, 200)
    assert float(draws["w"].mean()) == pytest.approx(exact_mean, abs=3 * exact_sd + 0.01)
    with pytest.raises(ValueError, match="coordinates"):
        FlowGuide(model, flow=build("affine", 3))(y, x)


def csv_rows(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_the_initial_point_is_the_prior_median_in_the_unconstrained_space():
    def model():
        pyro.sample("m", dist.Normal(3.0, 1e-3))
        pyro.sample("s", dist.LogNormal(math.log(2.0), 1e-3))

    point = target(model).initial_point()
    torch.testing.assert_close(point, torch.tensor([3.0, math.log(2.0)]), atol=1e-2, rtol=0)


def test_cli_refuses_bad_model_inputs_before_any_work(tmp_path, monkeypatch, capsys):
    from flowvi.app.cli import main

    (tmp_path / "models.py").write_text(MODEL_FILE)
    (tmp_path / "nohead.csv").write_text("1,2\n3,4\n")
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--model", "models.py:nope"], "has no 'nope'"),
        (["--model", "missing.py:model"], "no file"),
        (["--model", "models.py:model", "--data", "nohead.csv"], "header"),
        (["--model", "models.py:model"], "failed when traced"),  # y and x missing
        (["--data", "nohead.csv"], "needs --model"),
        (["--model", "models.py:model", "--target", "U1"], "not both"),
    ]
    for args, message in cases:
        assert main(["fit", *args, "--quiet", "--out", "run"]) == 2, args
        assert message in capsys.readouterr().err, args
        assert not (tmp_path / "run").exists()
