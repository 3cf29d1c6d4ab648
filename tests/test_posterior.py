"""flowvi.posterior: per-parameter summaries in the constrained space, against closed forms."""

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Normal
from torch.distributions.transforms import ExpTransform

from flowvi.flows import build
from flowvi.metrics import khat_verdict
from flowvi.posterior import COLUMNS, summarize
from flowvi.targets import FunctionTarget, Site, Target, get
from flowvi.targets.sites import unconstrain

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # arviz announces its refactor on import
    import arviz

LOC, SCALE, LOG_Z = (0.5, -0.3), (1.2, 0.4), 1.7
SITES = (Site("mu"), Site("sigma", (), ExpTransform()))
Z_P = Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.5, 0.95])).double()


class GaussianModel(Target):
    r""":math:`\ln \tilde p(z) = \ln Z + \ln N(z; m, \mathrm{diag}(s^2))`, optionally
    :math:`-\infty` on the half-space :math:`z_0 \le 0`."""

    def __init__(self, loc, scale, sites, *, log_z=0.0, half_space=False):
        super().__init__(len(loc), name="gaussian-model", log_normalizer=log_z, sites=sites)
        self.register_buffer("loc", torch.tensor(loc, dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64))
        self.half_space = half_space

    def _log_prob(self, z):
        log_p = Normal(self.loc.to(z), self.scale.to(z)).log_prob(z).sum(-1) + self.log_normalizer
        if self.half_space:
            log_p = torch.where(z[..., 0] > 0, log_p, -math.inf)
        return log_p


def gaussian_flow(loc, scale):
    """``build("affine", d)`` in float64 set to :math:`N(loc, \\mathrm{diag}(scale^2))`."""
    flow = build("affine", len(loc), base="standard").double()
    with torch.no_grad():
        flow.layers[0].params.loc.copy_(torch.tensor(loc, dtype=torch.float64))
        flow.layers[0].params.log_scale.copy_(torch.tensor(scale, dtype=torch.float64).log())
    return flow


def truth():
    """Closed forms of mu ~ N(m0, s0²) and sigma = exp(N(m1, s1²)) (lognormal): mean, sd,
    5/50/95 % quantiles, by row name."""
    (m0, m1), (s0, s1) = LOC, SCALE
    mean_ln = math.exp(m1 + s1**2 / 2)
    return {
        "mu": [m0, s0, *(m0 + s0 * Z_P).tolist()],
        "sigma": [
            mean_ln,
            mean_ln * math.sqrt(math.expm1(s1**2)),
            *torch.exp(m1 + s1 * Z_P).tolist(),
        ],
    }


class Recording:
    """A ``q`` with only ``rsample_and_log_prob`` that keeps what it drew."""

    def __init__(self, flow):
        self.flow, self.drawn = flow, []

    def rsample_and_log_prob(self, sample_shape):
        z, log_q = self.flow.rsample_and_log_prob(sample_shape)
        self.drawn.append(z)
        return z, log_q


def test_exact_q_matches_closed_forms():
    target = GaussianModel(LOC, SCALE, SITES, log_z=LOG_Z)
    s = summarize(gaussian_flow(LOC, SCALE), target, samples=4000, chunk=1500, seed=0)
    assert [r["name"] for r in s.rows] == ["mu", "sigma"]
    n = 4000
    for row in s.rows:
        mean, sd, q05, q50, q95 = truth()[row["name"]]
        for prefix in ("", "psis_"):  # equal weights: the reweighted columns agree
            assert row[prefix + "mean"] == pytest.approx(mean, abs=4 * sd / math.sqrt(n))
            assert row[prefix + "sd"] == pytest.approx(sd, rel=0.06)
            assert row[prefix + "50%"] == pytest.approx(q50, abs=0.1 * sd)
            assert row[prefix + "5%"] == pytest.approx(q05, abs=0.15 * sd)
            assert row[prefix + "95%"] == pytest.approx(q95, abs=0.15 * sd)
    assert s.khat < 0.5
    assert s.ess_fraction == pytest.approx(1.0, abs=1e-6)
    assert s.elbo == pytest.approx(LOG_Z, abs=1e-9)  # ln w = ln Z for every draw
    assert s.elbo_se < 1e-9
    assert s.dropped == 0 and s.note is None
    assert s.draws["sigma"].shape == (n,) and bool((s.draws["sigma"] > 0).all())


class FixedDraws:
    """A ``q`` that always returns the same draws ``z: (n, d)`` and ``ln q: (n,)``."""

    def __init__(self, z, log_q):
        self.z, self.log_q = z, log_q

    def rsample_and_log_prob(self, sample_shape):
        (n,) = sample_shape
        return self.z[:n], self.log_q[:n]


def test_statistics_of_known_draws():
    target = GaussianModel(LOC, SCALE, SITES)
    z = torch.stack([torch.arange(9.0), torch.zeros(9)], -1).double()  # mu = 0, 1, …, 8
    q = FixedDraws(z, target.log_prob(z) + 0.5)  # ln w = -0.5 for every draw
    s = summarize(q, target, samples=9)
    mu, sigma = s.rows
    assert (mu["mean"], mu["sd"]) == pytest.approx((4.0, math.sqrt(60 / 8)))  # ddof 1
    assert (mu["5%"], mu["50%"], mu["95%"]) == pytest.approx((0.4, 4.0, 7.6))  # linear
    assert (mu["psis_mean"], mu["psis_sd"]) == pytest.approx((4.0, math.sqrt(60 / 9)))
    # equal weights: the inverse of the empirical CDF k/9 (no ties at 5, 50 or 95 %)
    assert (mu["psis_5%"], mu["psis_50%"], mu["psis_95%"]) == pytest.approx((0.0, 4.0, 8.0))
    assert sigma["mean"] == sigma["psis_95%"] == pytest.approx(1.0)  # exp(0)
    assert s.elbo == pytest.approx(-0.5) and s.elbo_se == pytest.approx(0.0, abs=1e-12)
    assert s.khat == 0.0 and s.ess == pytest.approx(9.0)


def test_narrow_q_psis_corrects_towards_truth():
    target = GaussianModel(LOC, SCALE, SITES)
    loc = [m + 0.25 * s for m, s in zip(LOC, SCALE, strict=True)]
    q = gaussian_flow(loc, [0.75 * s for s in SCALE])  # k = 1 - 0.75² ≈ 0.44 in theory
    s = summarize(q, target, samples=4000, seed=1)
    assert 0.2 < s.khat < 0.7
    assert s.note is None and "psis_mean" in s.table()
    for row in s.rows:
        mean, sd, q05, _, q95 = truth()[row["name"]]
        assert abs(row["psis_mean"] - mean) < abs(row["mean"] - mean)
        assert abs(row["psis_sd"] - sd) < abs(row["sd"] - sd)
        assert abs(row["psis_5%"] - q05) < abs(row["5%"] - q05)
        assert abs(row["psis_95%"] - q95) < abs(row["95%"] - q95)
    assert s.ess_fraction < 0.95


def test_too_narrow_q_leaves_psis_columns_empty(tmp_path):
    target = GaussianModel(LOC, SCALE, SITES)
    loc = [m + 3 * s for m, s in zip(LOC, SCALE, strict=True)]
    q = gaussian_flow(loc, [0.3 * s for s in SCALE])  # narrow and 3 sd off: k-hat near 1
    s = summarize(q, target, samples=2000, seed=2)
    assert s.khat > 0.7
    assert all(math.isnan(row[c]) for row in s.rows for c in COLUMNS if c.startswith("psis"))
    assert not math.isnan(s.rows[0]["mean"])
    assert "0.7" in s.note and "Yao" in s.note
    table = s.table()
    assert s.note in table and "psis_mean" not in table
    assert khat_verdict(s.khat) in table
    s.to_csv(tmp_path / "summary.csv")
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["psis_mean"] == "" and float(rows[0]["mean"]) == s.rows[0]["mean"]
    assert s.to_dict()["rows"][0]["psis_mean"] is None


def test_draws_outside_the_support_are_dropped_and_counted():
    target = GaussianModel((0.0, 0.0), (1.0, 1.0), SITES, half_space=True)
    q = Recording(build("affine", 2))
    s = summarize(q, target, samples=3000, chunk=1000, seed=3)
    z = torch.cat(q.drawn)
    assert len(q.drawn) == 3 and z.shape == (3000, 2)
    assert s.dropped == int((z[:, 0] <= 0).sum())
    assert s.dropped + len(s.log_weights) == 3000 == s.samples
    assert bool((s.draws["mu"] > 0).all())
    torch.testing.assert_close(s.draws["mu"], z[z[:, 0] > 0, 0].double())
    # q = p on the half-space: every kept log weight is 0, the ESS is the number kept
    assert s.ess == pytest.approx(len(s.log_weights), rel=1e-5)
    assert s.ess_fraction == pytest.approx(1 - s.dropped / 3000, rel=1e-5)
    mu = next(r for r in s.rows if r["name"] == "mu")
    assert mu["mean"] == pytest.approx(math.sqrt(2 / math.pi), abs=0.05)  # half-normal


@pytest.mark.parametrize("value", [-math.inf, math.nan], ids=["minus-inf", "nan"])
def test_all_draws_non_finite_raises(value):
    target = FunctionTarget(lambda z: torch.full(z.shape[:-1], value), 2)
    with pytest.raises(ValueError, match="non-finite"):
        summarize(build("affine", 2), target, samples=100)


def test_bad_arguments_raise():
    target = GaussianModel(LOC, SCALE, SITES)
    with pytest.raises(ValueError, match="samples"):
        summarize(build("affine", 2), target, samples=0)
    with pytest.raises(ValueError, match="2-dimensional"):
        summarize(build("affine", 3), target, samples=10)
    with pytest.raises(ValueError, match=r"\(10, 2\)"):  # a q without event_shape
        summarize(Recording(build("affine", 3)), target, samples=10)


def test_seed_repeats_draws_and_restores_the_generator():
    target = GaussianModel(LOC, SCALE, SITES)
    flow = build("affine", 2)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = summarize(flow, target, samples=50, seed=7)
    assert torch.equal(torch.rand(3), expected)
    b = summarize(flow, target, samples=50, seed=7)
    assert torch.equal(a.log_weights, b.log_weights)
    c = summarize(flow, target, samples=50, chunk=7, seed=8)
    assert len(c.log_weights) == 50 and not torch.equal(a.log_weights, c.log_weights)


def test_write_round_trips(tmp_path):
    sites = (Site("beta", (3,)), Site("s", (), ExpTransform()))
    target = GaussianModel((0.0, 1.0, -1.0, 0.2), (1.0, 0.5, 2.0, 0.3), sites)
    s = summarize(build("affine", 4), target, samples=300, seed=4)
    names = ["beta[0]", "beta[1]", "beta[2]", "s"]
    assert [r["name"] for r in s.rows] == names
    assert [r["site"] for r in s.rows] == ["beta"] * 3 + ["s"]
    out = s.write(tmp_path / "run")

    data = arviz.from_netcdf(out / "posterior.nc")
    beta, scale = data.posterior["beta"], data.posterior["s"]
    assert beta.dims == ("chain", "draw", "beta_dim_0") and beta.shape == (1, 300, 3)
    assert scale.dims == ("chain", "draw") and scale.shape == (1, 300)
    np.testing.assert_array_equal(beta.values[0], s.draws["beta"].numpy())
    np.testing.assert_array_equal(scale.values[0], s.draws["s"].numpy())
    np.testing.assert_array_equal(data.sample_stats["log_weight"].values[0], s.log_weights)
    np.testing.assert_array_equal(data.sample_stats["log_q"].values[0], s.log_q)

    with open(out / "summary.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [
        "parameter",
        "mean",
        "sd",
        "5%",
        "50%",
        "95%",
        "psis_mean",
        "psis_sd",
        "psis_5%",
        "psis_50%",
        "psis_95%",
    ]
    assert [r["parameter"] for r in rows] == names
    x = s.draws["beta"].numpy()
    for i, row in enumerate(rows[:3]):
        assert float(row["mean"]) == pytest.approx(x[:, i].mean(), rel=1e-12)
        assert float(row["sd"]) == pytest.approx(x[:, i].std(ddof=1), rel=1e-12)
        assert float(row["50%"]) == pytest.approx(np.median(x[:, i]), rel=1e-12)
        assert float(row["95%"]) == pytest.approx(np.quantile(x[:, i], 0.95), rel=1e-12)

    saved = json.loads((out / "summary.json").read_text())
    assert saved["samples"] == 300 and saved["dropped"] == 0
    assert saved["khat"] == pytest.approx(s.khat)
    assert saved["elbo"] == pytest.approx(s.elbo)
    assert [r["name"] for r in saved["rows"]] == names
    assert {"name", "site", *COLUMNS[1:]} == set(saved["rows"][0])


def test_eight_schools_diagnostics_from_any_flow():
    target, flow = get("eight-schools"), build("affine", 10)
    s = summarize(flow, target, samples=2000, seed=5)
    names = [r["name"] for r in s.rows]
    assert names == ["mu", "tau", *(f"theta_t[{i}]" for i in range(8))]
    assert bool((s.draws["tau"] > 0).all())
    tau = s.rows[1]
    assert tau["50%"] == pytest.approx(1.0, abs=0.1)  # exp of q's N(0, 1) median
    assert tau["5%"] == pytest.approx(math.exp(-1.6449), rel=0.15)
    # the log weights are ln p(z) - ln q(z) at the draws (recovered from the constrained ones)
    z = unconstrain(target.sites, s.draws).float()
    with torch.no_grad():
        log_w = (target.log_prob(z) - flow.log_prob(z)).double()
    torch.testing.assert_close(s.log_weights, log_w, atol=1e-3, rtol=1e-5)
    w = np.exp(s.log_weights.numpy() - s.log_weights.numpy().max())
    assert s.ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-6)
    assert s.elbo == pytest.approx(float(log_w.mean()), abs=1e-3)
    assert s.elbo_se == pytest.approx(float(log_w.std()) / math.sqrt(2000), rel=1e-3)
    assert "theta_t[7]" in s.table() and khat_verdict(s.khat) in s.table()
