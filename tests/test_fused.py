"""The compiled training step (flowvi.fused): the same training as eager Adam, the NaN guard,
resume, and the fallbacks."""

import pytest
import torch
from safetensors.torch import load_file

from flowvi import targets
from flowvi.fitting import fit
from flowvi.flows import build
from flowvi.fused import BatchLoss
from flowvi.nn import ReLU
from flowvi.objectives import free_energy, negative_log_likelihood
from flowvi.train import NonFiniteLossError, train


def _problem(bad_at: int | None = None):
    """A small float64 MAF and a minibatch NLL whose batch at iteration ``bad_at`` holds inf."""
    torch.manual_seed(0)
    x = torch.randn(96, 2, dtype=torch.float64) @ torch.tensor([[1.0, 0.5], [0.0, 0.7]]).double()
    flow = build("maf", 2, length=2, hidden=(8,)).double()

    def batch(t: int) -> torch.Tensor:
        b = x[torch.randint(len(x), (32,))]
        if t == bad_at:
            b = b.clone()
            b[3, 1] = float("inf")
        return b

    def nll(b: torch.Tensor):
        log_q = flow(validate_args=False).log_prob(b)
        return negative_log_likelihood(log_q), {"flow log density of the batch": log_q}

    return flow, BatchLoss(batch, nll)


def _run(directory, *, compile: bool, iters: int = 12, bad_at: int | None = None, **kwargs):
    flow, loss = _problem(bad_at)
    torch.manual_seed(1)
    kwargs = {"schedule": "cosine"} | kwargs
    trace = train(
        flow, loss, iters=iters, directory=directory, progress=False, compile=compile, **kwargs
    )
    return flow, trace


def test_compiled_step_trains_as_eager_adam(tmp_path):
    """Same batches, same losses, parameters and Adam state (to float64 rounding): the compiled
    step computes what loss.backward() and torch.optim.Adam compute."""
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    _, trace_eager = _run(tmp_path / "eager", compile=False)
    _, trace_fused = _run(tmp_path / "compiled", compile=True)
    torch.testing.assert_close(trace_fused, trace_eager, rtol=1e-12, atol=1e-12)
    a = load_file(tmp_path / "eager" / "checkpoint.safetensors")
    b = load_file(tmp_path / "compiled" / "checkpoint.safetensors")
    assert a.keys() == b.keys()
    assert any(key.endswith("exp_avg_sq") for key in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-10, atol=1e-12, msg=key)


def test_compiled_step_stops_on_inf_keeping_the_last_good_parameters(tmp_path):
    """An inf in iteration 5's batch: the error names it, and the parameters (in the model and
    in the checkpoint) are those after iterations 0-4, as in an eager run of 5 iterations."""
    flow, _ = _run(None, compile=False, iters=5, schedule="constant")
    with pytest.raises(NonFiniteLossError, match="iteration 5"):
        _run(tmp_path, compile=True, iters=12, bad_at=5, schedule="constant")
    saved = load_file(tmp_path / "checkpoint.safetensors")
    for name, value in flow.state_dict().items():
        torch.testing.assert_close(saved[f"model/{name}"], value, rtol=1e-10, atol=1e-12)


def test_compiled_run_resumes_exactly(tmp_path):
    """Six compiled iterations, then a new process's worth of objects resuming to twelve: the
    same parameters as twelve iterations in one go."""
    (tmp_path / "whole").mkdir()
    (tmp_path / "parts").mkdir()
    whole, trace_whole = _run(tmp_path / "whole", compile=True, schedule="constant")
    _run(tmp_path / "parts", compile=True, iters=6, schedule="constant")
    resumed, trace_resumed = _run(
        tmp_path / "parts", compile=True, schedule="constant", resume=True
    )
    torch.testing.assert_close(trace_resumed, trace_whole, rtol=0, atol=0)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_compile_needs_adam_and_a_batch_loss():
    flow, loss = _problem()
    with pytest.raises(ValueError, match="BatchLoss"):
        train(flow, lambda t: loss(t), iters=2, progress=False, compile=True)
    with pytest.raises(ValueError, match="Adam"):
        train(flow, loss, iters=2, optimizer="rmsprop", progress=False, compile=True)


def test_relu_compiled_form_is_exact():
    """Compiled, ReLU is (x + |x|) / 2: the same values, +0 for negatives, the same gradient
    away from 0; eager, it is torch.relu."""
    x = torch.tensor([-3.5, -1e-300, 0.0, 1e-300, 2.25, 1e300], dtype=torch.float64)
    relu = torch.compile(ReLU(), fullgraph=True)
    y = relu(x)
    assert torch.equal(y, torch.relu(x))
    assert not torch.signbit(y).any()
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(relu(x).sum(), x)
    torch.testing.assert_close(grad, (x > 0).double(), rtol=0, atol=0)
    # at exactly 0 the two forms differ (subgradients 1/2 and 0): the compiled one is used
    zero = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.grad(relu(zero).sum(), zero)[0].tolist() == [0.5, 0.5]
    assert torch.autograd.grad(ReLU()(zero).sum(), zero)[0].tolist() == [0.0, 0.0]


def test_compiled_reverse_kl_fit_is_reproducible_resumes_and_learns(tmp_path):
    """fit(compile=True) draws its samples inside the compiled graph: the same seed gives the
    same run, a resumed run continues it exactly, and the free energy goes down."""
    target = targets.get("U1")

    def run(directory, iters, **kwargs):
        torch.manual_seed(0)
        flow = build("planar", 2, length=2)
        kwargs = {"batch_size": 64, "anneal": 0.1, "lr": 1e-2, "progress": False} | kwargs
        trace = fit(flow, target, iters=iters, directory=directory, compile=True, **kwargs)
        return flow, trace

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    flow_a, trace_a = run(tmp_path / "a", 100)
    _, trace_b = run(tmp_path / "b", 100)
    torch.testing.assert_close(trace_b, trace_a, rtol=0, atol=0)
    run(tmp_path / "c", 50, anneal=0.2)  # β's schedule is a share of iters: the same T = 10
    flow_c, trace_c = run(tmp_path / "c", 100, resume=True)
    torch.testing.assert_close(trace_c, trace_a, rtol=0, atol=0)
    for name, value in flow_a.state_dict().items():
        torch.testing.assert_close(flow_c.state_dict()[name], value, rtol=0, atol=0)
    torch.manual_seed(0)
    untrained = build("planar", 2, length=2)
    with torch.no_grad():
        energies = []
        for flow in (untrained, flow_a):
            x, log_q = flow.rsample_and_log_prob((20_000,))
            energies.append(float(free_energy(log_q, target.log_prob(x))))
    assert energies[1] < energies[0] - 0.5, energies


def test_compiling_keeps_torch_distributions_validation_on():
    """Dynamo turns torch.distributions' argument validation off for the whole process at its
    first torch.compile; flowvi's compiled step turns it back on, so user input is still
    checked afterwards."""
    assert torch.distributions.Distribution._validate_args
    flow, _ = _run(None, compile=True, iters=3)
    assert torch.distributions.Distribution._validate_args
    with pytest.raises(ValueError):
        flow.log_prob(torch.tensor([[0.0, float("nan")]], dtype=torch.float64))
