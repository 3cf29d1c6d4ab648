"""The recurrent (GRU) autoregressive conditioner and the ``rnn-ar`` layer.

The layer contract (tests/test_layer_contract.py) covers ``rnn-ar``; here: the exact zero
pattern of the conditioner's and the layer's Jacobians in every order, the one-step recursion
agreeing with the one-pass network, the costs (one GRU pass for the density, ``d`` single
steps for sampling), context and batch broadcasting, the transformer options, persistence,
and a maximum-likelihood fit that learns.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.autograd.functional import jacobian

from flowvi.data.toy import moons
from flowvi.density import fit_density, mean_nll
from flowvi.flows import LAYERS, RecurrentAutoregressive, build, describe, rebuild
from flowvi.io import load, save
from flowvi.nn import RecurrentConditioner
from flowvi.transforms.transformers import TRANSFORMERS

F64 = torch.float64
ORDERS = {"natural": [0, 1, 2, 3, 4], "reverse": [4, 3, 2, 1, 0], "shuffled": [2, 0, 4, 1, 3]}


def _randomize(module, *, scale=1.0, seed=0):
    """Every parameter at random (so the head's zero-initialized last layer is not zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[1] if p.dim() == 2 else 1
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale / fan_in**0.5)
    return module


def _earlier(order):
    """``earlier[i, j]``: coordinate ``j`` comes before ``i`` in ``order``."""
    rank = torch.empty(len(order), dtype=torch.long)
    rank[torch.as_tensor(order)] = torch.arange(len(order))
    return rank[None, :] < rank[:, None]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("hidden", [(6,), (6, 5)])
def test_conditioner_jacobian_is_exactly_strictly_triangular(order, hidden):
    d, k = 5, 3
    net = _randomize(RecurrentConditioner(d, k, hidden, order=ORDERS[order]).double(), seed=1)
    earlier = _earlier(ORDERS[order])[:, None, :].expand(d, k, d)
    for x in torch.randn(3, d, generator=torch.Generator().manual_seed(2), dtype=F64):
        jac = jacobian(net, x)  # (d, k, d): ∂θ_i / ∂x_j
        assert (jac[~earlier] == 0.0).all()  # θ_i ignores x_i and every later coordinate
        if len(hidden) == 1:  # a linear head (no ReLU to switch off a path):
            assert (jac[earlier].abs() > 1e-8).all()  # θ_i depends on every earlier x_j


@pytest.mark.parametrize("order", ["natural", "reverse", "random"])
@pytest.mark.parametrize("transformer", ["affine", "spline", "monotone"])
def test_layer_jacobian_is_triangular_in_both_directions(order, transformer):
    d = 5
    torch.manual_seed(3)
    layer = RecurrentAutoregressive(d, hidden=(6, 6), order=order, transformer=transformer)
    layer = _randomize(layer.double(), seed=4)
    allowed = _earlier(layer.rnn.order) | torch.eye(d, dtype=torch.bool)
    t = layer()  # the sampling direction (d steps); t.inv is the one-pass density direction
    for x in torch.randn(3, d, generator=torch.Generator().manual_seed(5), dtype=F64):
        for f in (t.inv, t):
            jac = jacobian(f, x)  # ∂y_i / ∂x_j
            assert (jac[~allowed] == 0.0).all()
            assert (jac.diagonal() > 0).all()  # each y_i increasing in x_i
            torch.testing.assert_close(
                f.call_and_ladj(x)[1], jac.diagonal().log().sum(), rtol=0, atol=1e-10
            )


def test_single_steps_reproduce_the_one_pass_network():
    d, k, c = 4, 3, 2
    net = RecurrentConditioner(d, k, (7, 5), order=[3, 1, 0, 2], context_dim=c).double()
    net = _randomize(net, seed=6)
    x = torch.randn(6, d, dtype=F64)
    context = torch.randn(6, c, dtype=F64)
    full = net(x, context)
    previous, state = torch.zeros(6, dtype=F64), None
    for i in net.steps:
        params, state = net.step(previous, state, context)
        torch.testing.assert_close(params, full[:, i], rtol=0, atol=1e-12)
        previous = x[:, i]


def test_density_takes_one_gru_pass_and_sampling_d_single_steps():
    d = 6
    layer = _randomize(RecurrentAutoregressive(d, hidden=(8,)).double(), seed=7)
    lengths = []
    layer.rnn.gru.register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    t = layer()
    x = torch.randn(10, d, dtype=F64)
    z, _ = t.inv.call_and_ladj(x)  # density direction
    assert lengths == [d]
    lengths.clear()
    x_back, _ = t.call_and_ladj(z)  # sampling direction
    assert lengths == [1] * d
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-12)


def test_context_and_batch_shapes_broadcast():
    d, c = 3, 2
    layer = _randomize(RecurrentAutoregressive(d, hidden=(5, 4), context_dim=c).double(), seed=8)
    context = torch.randn(4, c, dtype=F64)
    x = torch.randn(d, dtype=F64)  # one point, four contexts
    t = layer(context)
    y, ladj = t.call_and_ladj(x)
    assert y.shape == (4, d) and ladj.shape == (4,)
    assert (y[0] != y[1]).all()  # every coordinate sees the context, the first one included
    torch.testing.assert_close(t.inv(y), x.expand(4, d), rtol=0, atol=1e-10)
    # (2, 4) samples against (4,) contexts, and one context for a batch
    z = torch.randn(2, 4, d, dtype=F64)
    torch.testing.assert_close(t.inv(t(z)), z, rtol=0, atol=1e-10)
    one = layer(context[0])
    torch.testing.assert_close(one(z[0])[0], t(z[0])[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="context"):
        layer()


def test_registered_options_persistence_and_errors(tmp_path):
    assert LAYERS["rnn-ar"] is RecurrentAutoregressive
    layer = RecurrentAutoregressive(3)
    assert layer.transformer is TRANSFORMERS["affine"]
    assert layer.rnn.gru.hidden_size == 64 and "transformer" not in layer.spec
    # the head's last layer starts at zero: the layer starts at the identity
    x = torch.randn(5, 3)
    y, ladj = layer().call_and_ladj(x)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros(5))
    with pytest.raises(ValueError, match="transformer"):
        RecurrentAutoregressive(3, transformer="cubic")
    with pytest.raises(ValueError, match="GRU state"):
        RecurrentAutoregressive(3, hidden=())
    with pytest.raises(ValueError, match="permutation"):
        RecurrentConditioner(3, 2, (4,), order=[0, 0, 1])
    torch.manual_seed(9)
    flow = build("rnn-ar", 4, length=2, hidden=(8, 8), order="random").double()
    flow.layers[1] = RecurrentAutoregressive(4, hidden=(6,), transformer="spline").double()
    spec = json.loads(json.dumps(describe(flow)))
    again = rebuild(spec)
    assert torch.equal(again.layers[0].rnn.order, flow.layers[0].rnn.order)
    assert again.layers[1].transformer is TRANSFORMERS["spline"]
    _randomize(flow, scale=0.5, seed=10)
    save(flow, tmp_path)
    x = torch.randn(7, 4, dtype=F64)
    torch.testing.assert_close(load(tmp_path).log_prob(x), flow.log_prob(x), rtol=0, atol=1e-12)


def test_maximum_likelihood_fit_on_moons_lowers_the_nll():
    torch.manual_seed(0)
    x = moons(512, seed=0).float()
    x = (x - x.mean(0)) / x.std(0)
    flow = build("rnn-ar", 2, length=3, hidden=(16, 16))
    before = float(mean_nll(flow, x))
    trace, _ = fit_density(flow, x, iters=100, batch_size=256, lr=1e-2, progress=False)
    after = float(mean_nll(flow, x))
    assert torch.isfinite(trace).all()
    assert after < before - 0.3  # N(0, I) on standardized moons: ~2.84 nats
    assert torch.isfinite(flow.sample((256,))).all()
