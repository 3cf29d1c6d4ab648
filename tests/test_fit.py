"""Reverse-KL fitting, its objective, the training loop's NaN guard and resume."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch.distributions import MultivariateNormal, kl_divergence

import flowvi
from flowvi.fitting import annealing_iters, fit
from flowvi.metrics import evaluate, log_normalizer
from flowvi.objectives import beta_schedule, free_energy
from flowvi.targets import FunctionTarget, Gaussian
from flowvi.train import CHECKPOINT, DropPolicy, NonFiniteLossError


def test_beta_schedule_is_eq_20():
    assert beta_schedule(0) == pytest.approx(0.01)
    assert beta_schedule(4950) == pytest.approx(0.505)
    assert beta_schedule(9900) == 1.0
    assert beta_schedule(50_000) == 1.0
    assert beta_schedule(7, anneal_iters=0) == 1.0
    with pytest.raises(ValueError, match="beta0"):
        beta_schedule(0, beta0=0.0)
    with pytest.raises(ValueError, match="anneal_iters"):
        beta_schedule(0, anneal_iters=-1)


def test_free_energy_is_mean_of_log_ratio():
    log_q = torch.tensor([-1.0, -2.0, -3.0])
    log_p = torch.tensor([-0.5, -0.5, -2.0])
    assert free_energy(log_q, log_p).item() == pytest.approx((-0.5 - 1.5 - 1.0) / 3)
    assert free_energy(log_q, log_p, beta=0.5).item() == pytest.approx((-0.75 - 1.75 - 2.0) / 3)


def _gaussian_fit(target, flow_name, iters=1500):
    torch.manual_seed(0)
    flow = flowvi.flows.build(flow_name, target.dim).double()
    fit(flow, target, iters=iters, lr=1e-2, batch_size=4096, progress=False)
    layer = flow()
    transform = layer.transforms[0]
    return flow, transform


def test_triangular_affine_flow_recovers_a_correlated_gaussian():
    target = Gaussian.default(3).double()
    flow, t = _gaussian_fit(target, "triangular")
    cov = t.scale_tril @ t.scale_tril.T
    torch.testing.assert_close(t.loc, target.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(cov, target.cov, atol=0.08, rtol=0)
    metrics = evaluate(flow, target, samples=20_000)
    assert abs(metrics["kl"]) < 0.02


def test_elementwise_affine_flow_recovers_a_diagonal_gaussian():
    target = Gaussian(torch.tensor([1.5, -0.5]), torch.diag(torch.tensor([0.25, 4.0]))).double()
    _, t = _gaussian_fit(target, "affine")
    torch.testing.assert_close(t.loc, target.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(
        torch.exp(2 * t.log_scale), torch.diag(target.cov), rtol=0.06, atol=0
    )


def test_kl_metric_matches_the_closed_form():
    target = Gaussian(torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0.5], [0.5, 2.0]]))
    flow = flowvi.flows.build("affine", 2).double()  # identity: q = N(0, I)
    torch.manual_seed(1)
    metrics = evaluate(flow, target.double(), samples=200_000)
    exact = kl_divergence(
        MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)),
        MultivariateNormal(target.mean, target.cov),
    ).item()
    assert abs(metrics["kl"] - exact) < 4 * metrics["kl_se"] + 1e-3
    exact_forward = kl_divergence(
        MultivariateNormal(target.mean, target.cov),
        MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)),
    ).item()
    assert metrics["forward_kl"] == pytest.approx(exact_forward, abs=1e-3)
    assert 0 < metrics["ess_fraction"] < 1


def test_quadrature_log_normalizer_of_a_scaled_density():
    target = Gaussian.default(2).double()
    scaled = FunctionTarget(lambda z: target.log_prob(z) + 3.0, 2, box=target.box)
    assert log_normalizer(scaled) == pytest.approx(3.0, abs=1e-6)


def test_fit_stops_on_nan_target_naming_the_iteration_and_keeps_last_good(tmp_path):
    calls = {"n": 0}

    def flaky(z):
        calls["n"] += 1
        out = -0.5 * (z**2).sum(-1)
        return out if calls["n"] <= 5 else out + math.nan  # the whole batch from call 6

    target = FunctionTarget(flaky, 2)
    calls["n"] = 0
    torch.manual_seed(0)
    flow = flowvi.flows.build("planar", 2, length=2)
    with pytest.raises(NonFiniteLossError, match="iteration 5") as info:
        fit(flow, target, iters=50, directory=tmp_path, progress=False)
    assert "target log density" in str(info.value)
    assert "flow log density" not in str(info.value)
    saved = load_file(tmp_path / CHECKPOINT)
    for name, value in flow.state_dict().items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(saved[f"model/{name}"], value, rtol=0, atol=0)


def _half_space_log_p(z):
    """N(0, I) restricted to z_0 > -2.5 (0.6% of its mass is cut): ln of a masked value makes
    -inf outside, where the derivative is 0/0, the case where 0 · ∂ln p/∂z is NaN."""
    edge = z[:, 0] + 2.5
    return -0.5 * (z**2).sum(-1) + torch.log(edge * (edge > 0)) - torch.log(edge.abs())


def test_fit_drops_samples_outside_the_support_and_counts_them():
    torch.manual_seed(0)
    flow = flowvi.flows.build("affine", 2)
    drop = DropPolicy()
    with pytest.warns(RuntimeWarning, match="non-finite log density"):
        trace = fit(flow, _half_space_log_p, iters=400, lr=2e-2, drop=drop, progress=False)
    assert torch.isfinite(trace).all()
    assert drop.dropped.shape == (400,) and drop.dropped.sum() > 0
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    # fitted as N(0, I) (the cut changes the moments by < 0.02): the dropped samples, whose
    # gradient is NaN, did not poison the others'
    x = flow.sample((20_000,))
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=0.1, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(2), atol=0.1, rtol=0)


def test_fit_stops_when_most_samples_stay_outside_the_support():
    def mostly_undefined(z):  # -inf for z_0 < 0.3: about 62% of N(0, 1)
        return torch.where(z[:, 0] > 0.3, -0.5 * (z**2).sum(-1), -math.inf)

    torch.manual_seed(0)
    flow = flowvi.flows.build("affine", 2)
    with pytest.raises(NonFiniteLossError, match="more than 50%"):
        fit(flow, mostly_undefined, iters=300, lr=1e-5, progress=False)


def test_fit_takes_a_plain_function_and_infers_its_dimension():
    torch.manual_seed(0)
    flow = flowvi.flows.build("affine", 3)
    fit(flow, lambda z: -0.5 * ((z - 2) ** 2).sum(-1), iters=300, lr=0.05, progress=False)
    torch.testing.assert_close(
        flow.sample((8000,)).mean(0), torch.full((3,), 2.0), atol=0.1, rtol=0
    )
    with pytest.raises(ValueError, match="shape"):
        fit(flow, lambda z: z, iters=5, progress=False)
    with pytest.raises(TypeError, match="Target"):
        fit(flow, 3.0, iters=5, progress=False)


def test_annealing_is_a_share_of_the_run_and_always_finishes():
    with pytest.raises(ValueError, match="anneal"):
        fit(flowvi.flows.build("affine", 2), _half_space_log_p, iters=10, anneal=1.0)
    assert annealing_iters(0.5, 500) == 250 and annealing_iters(0.0, 500) == 0


def test_fit_restores_torch_threads_and_uses_one_by_default():
    seen = []
    before = torch.get_num_threads()

    def log_p(z):
        seen.append(torch.get_num_threads())
        return -0.5 * (z**2).sum(-1)

    fit(flowvi.flows.build("affine", 2), log_p, iters=3, progress=False)
    assert set(seen[1:]) == {1} and torch.get_num_threads() == before
    fit(flowvi.flows.build("affine", 2), log_p, iters=3, progress=False, threads=2)
    assert seen[-1] == 2 and torch.get_num_threads() == before


def test_fit_refuses_a_target_of_the_wrong_dimension():
    flow = flowvi.flows.build("planar", 3, length=2)
    with pytest.raises(ValueError, match="2-dimensional"):
        fit(flow, flowvi.targets.get("U1"), iters=5, progress=False)


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path):
    def run(directory, iters, *, resume=False):
        torch.manual_seed(3)
        flow = flowvi.flows.build("planar", 2, length=3)
        trace = fit(
            flow,
            flowvi.targets.get("U1"),
            iters=iters,
            directory=directory,
            resume=resume,
            checkpoint_every=10,
            progress=False,
        )
        return flow, trace

    full, full_trace = run(tmp_path / "a", 40)
    run(tmp_path / "b", 20)  # "killed" after iteration 20
    resumed, resumed_trace = run(tmp_path / "b", 40, resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(full_trace, resumed_trace)


def test_verdict_flags_a_dropped_mode_and_grades_the_fit():
    from flowvi.app.fit import verdict

    assert verdict({"kl": 0.69, "forward_kl": 20.0, "ess_fraction": 0.97}).startswith(
        "poor: q misses"
    )
    assert verdict({"kl": 0.01, "forward_kl": 0.01, "ess_fraction": 0.97}).startswith("good")
    assert verdict({"kl": 0.2, "forward_kl": 0.3, "ess_fraction": 0.4}).startswith("fair")
    assert verdict({"kl": 7.7, "forward_kl": 3.0, "ess_fraction": 0.3}).startswith("poor")


@pytest.mark.parametrize(("schedule", "total"), [("constant", 4.0), ("cosine", 2.5)])
def test_learning_rate_schedules_set_each_steps_size(schedule, total):
    """With a constant gradient Adam's first steps move a parameter by exactly the learning
    rate, so the distance moved is the sum of the schedule: 4 lr constant, and for the cosine
    over 4 steps lr Σ_t (1 + cos(π t / 4)) / 2 = 2.5 lr."""
    from flowvi.train import train

    model = torch.nn.Linear(1, 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)

    def loss_fn(t):
        loss = model.weight.sum()
        return loss, {"loss": loss}

    train(model, loss_fn, iters=4, lr=1e-2, schedule=schedule, progress=False)
    assert -model.weight.item() == pytest.approx(total * 1e-2, rel=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        train(model, loss_fn, iters=1, schedule="linear", progress=False)


def test_a_nan_in_epoch_training_names_the_epoch_and_batch(tmp_path):
    from flowvi.train import train

    model = torch.nn.Linear(1, 1)

    def loss_fn(t):
        loss = model.weight.sum() * (math.nan if t == 7 else 1.0)
        return loss, {"loss": loss}

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 1 \(iteration 7\)"):
        train(model, loss_fn, iters=9, iters_per_epoch=3, progress=False, directory=tmp_path)
    assert (tmp_path / CHECKPOINT).exists()  # the last good state is kept


def test_a_cosine_schedule_decays_the_rate_to_zero_and_a_bad_one_is_refused(tmp_path):
    import json

    from safetensors import safe_open

    def log_p(z):
        return -0.5 * ((z - 1.0) / 0.01).pow(2).sum(-1)  # a posterior far narrower than q0

    torch.manual_seed(0)
    flow = flowvi.flows.build("affine", 2, base="diagonal")
    flowvi.fit(flow, log_p, iters=1500, lr=0.05, schedule="cosine", progress=False,
               directory=tmp_path)  # fmt: skip
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        last = json.loads(f.metadata()["param_groups"])[0]["lr"]
    assert last == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 1499 / 1500)), rel=1e-9)
    z = flow.sample((4000,))
    assert (z.mean(0) - 1.0).abs().max() < 0.003 and bool((z.std(0) < 0.03).all())
    with pytest.raises(ValueError, match="schedule"):
        flowvi.fit(flow, log_p, iters=10, schedule="linear", progress=False)
