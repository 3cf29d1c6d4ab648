"""The stacked parameter pass of NormalizingFlow equals building each layer on its own."""

from __future__ import annotations

import pytest
import torch

import flowvi
from flowvi.distributions import StandardNormal
from flowvi.flows import LU, Affine, FlowDistribution, Permutation, Planar, Radial


def test_stacked_build_equals_per_layer_build():
    torch.manual_seed(0)
    layers = [Planar(3), Planar(3), Radial(3), Radial(3), Radial(3), Affine(3), Planar(3)]
    layers += [LU(3), LU(3), Permutation(3), LU(3)]
    flow = flowvi.NormalizingFlow(StandardNormal(3), layers).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 1.5)
    stacked = flow()
    separate = FlowDistribution(flow.base(), [layer() for layer in flow.layers])
    z = torch.randn(50, 3, dtype=torch.float64)
    y1, l1 = stacked.flow.call_and_ladj(z)
    y2, l2 = separate.flow.call_and_ladj(z)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(l1, l2, rtol=0, atol=1e-12)
    torch.testing.assert_close(stacked.log_prob(y1), separate.log_prob(y1), rtol=0, atol=1e-12)
    # gradients reach every layer's own parameters through the stack
    loss = stacked.flow.call_and_ladj(z)[1].sum() + stacked.flow(z).square().sum()
    grads = torch.autograd.grad(loss, list(flow.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)


def test_amortized_stack_equals_per_layer_build():
    """Amortized runs share one head product; each layer's transform is unchanged."""
    torch.manual_seed(0)
    layers = [Planar(3, context_dim=4) for _ in range(3)] + [Radial(3, context_dim=4)]
    layers += [Radial(3, context_dim=4), Planar(3, context_dim=5)]
    flow = flowvi.NormalizingFlow(StandardNormal(3), layers).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.7)
    context = torch.randn(6, 4, dtype=torch.float64)
    wide = torch.randn(6, 5, dtype=torch.float64)
    transforms = flowvi.flows.flow.build_transforms(layers[:5], context)
    separate = [layer(context) for layer in layers[:5]]
    z = torch.randn(2, 6, 3, dtype=torch.float64)
    for a, b in zip(transforms, separate, strict=True):
        ya, la = a.call_and_ladj(z)
        yb, lb = b.call_and_ladj(z)
        torch.testing.assert_close(ya, yb, rtol=0, atol=1e-12)
        torch.testing.assert_close(la, lb, rtol=0, atol=1e-12)
    y, ladj = flowvi.flows.flow.ComposeTransform(transforms).call_and_ladj(z)
    (ladj.sum() + y.square().sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.layers[:5].parameters())
    with pytest.raises(ValueError, match="context of shape"):
        flowvi.flows.flow.build_transforms(layers[:3], wide)


def test_amortized_flow_samples_and_scores():
    torch.manual_seed(0)
    flow = flowvi.NormalizingFlow(
        StandardNormal(2), [Planar(2, context_dim=4), Planar(2, context_dim=4)]
    ).double()
    context = torch.randn(5, 4, dtype=torch.float64)
    x, log_q = flow.rsample_and_log_prob((7,), context=context)
    assert x.shape == (7, 5, 2) and log_q.shape == (7, 5)
    torch.testing.assert_close(flow.log_prob(x, context=context), log_q, rtol=0, atol=1e-10)


# ------------------------------------------------------------- build's options, by family


def test_build_passes_every_option_the_family_takes():
    from flowvi.flows import build, describe, rebuild

    flow = build(
        "maf", 3, length=2, hidden=(8,), context_dim=4, transformer="monotone", monotone_hidden=(4,)
    )
    assert [layer.context_dim for layer in flow.layers] == [4, 4]
    assert [layer.spec["order"] for layer in flow.layers] == ["natural", "reverse"]
    assert all(layer.spec["monotone_hidden"] == [4] for layer in flow.layers)
    assert flow.log_prob(torch.zeros(5, 3), context=torch.zeros(5, 4)).shape == (5,)
    assert describe(rebuild(describe(flow))) == describe(flow)
    assert build("residual", 2, coeff=0.5, logdet="exact").layers[0].spec["coeff"] == 0.5
    assert build("qr", 3, reflections=1).layers[0].spec == {"reflections": 1}
    assert build("sylvester-o", 4, m=2).layers[0].spec == {"m": 2}
    assert build("planar", 2, length=3, context_dim=5).layers[2].context_dim == 5
    swaps = [layer.spec["swap"] for layer in build("nice", 4, length=3, hidden=(8,)).layers]
    assert swaps == [False, True, False]
    flips = [layer.spec["flip"] for layer in build("sylvester-t", 3, length=3).layers]
    assert flips == [False, True, False]
    # hidden describes the networks: families without one ignore it
    assert build("planar", 2, hidden=(8,)).layers[0].spec == {}


@pytest.mark.parametrize(
    ("flow", "options", "message"),
    [
        ("planar", {"mask": "alternate"}, "mask applies to coupling layers only, not to 'planar'"),
        ("realnvp", {"order": "random"}, "order applies to autoregressive layers only"),
        ("planar", {"transformer": "affine"}, "transformer applies to coupling and autoregressive"),
        ("realnvp", {"monotone_hidden": (4,)}, "monotone_hidden applies to the monotone"),
        ("permutation", {"context_dim": 2}, "Permutation layer is not amortized"),
        ("residual", {"context_dim": 2}, "Residual layer is not amortized"),
        ("planar", {"coeff": 0.5}, "Planar layers take no option 'coeff'"),
        ("realnvp", {"swap": True}, "RealNVP layers take no option 'swap'"),
    ],
)
def test_build_refuses_an_option_the_family_does_not_take(flow, options, message):
    from flowvi.flows import build

    with pytest.raises(ValueError, match=message):
        build(flow, 4, **options)


# ------------------------------------------------------- torch transforms as flow layers


class _TorchAffine(flowvi.flows.Layer):
    """x = loc + scale z with torch's own AffineTransform (event_dim 0)."""

    def __init__(self, d, *, context_dim=None):
        super().__init__(d, context_dim=context_dim)
        self.loc = torch.nn.Parameter(torch.linspace(-1.0, 1.0, d))
        self.log_scale = torch.nn.Parameter(torch.linspace(-0.5, 0.5, d))

    def forward(self, context=None):
        return torch.distributions.AffineTransform(self.loc, self.log_scale.exp())


class _TorchVectorAffine(_TorchAffine):
    """The same map as a vector transform (event_dim 1)."""

    def forward(self, context=None):
        return torch.distributions.transforms.IndependentTransform(super().forward(), 1)


@pytest.mark.parametrize("cls", [_TorchAffine, _TorchVectorAffine])
def test_a_torch_transform_works_as_a_layer(cls):
    torch.manual_seed(0)
    layer = cls(3).double()
    flow = flowvi.NormalizingFlow(StandardNormal(3), [layer, Planar(3)]).double()
    x, log_q = flow.rsample_and_log_prob(20)
    torch.testing.assert_close(flow.log_prob(x), log_q, rtol=0, atol=1e-10)
    alone = flowvi.NormalizingFlow(StandardNormal(3), [layer]).double()
    expected = torch.distributions.Normal(layer.loc, layer.log_scale.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(alone.log_prob(x), expected, rtol=0, atol=1e-12)
    t = flowvi.transforms.as_transform(layer())
    z = torch.randn(4, 3, dtype=torch.float64)
    y, ladj = t.call_and_ladj(z)
    x_back, inv_ladj = t.inv.call_and_ladj(y)
    torch.testing.assert_close(x_back, z, rtol=0, atol=1e-12)
    torch.testing.assert_close(inv_ladj, -ladj, rtol=0, atol=1e-12)
    torch.testing.assert_close(ladj, layer.log_scale.sum().expand(4), rtol=0, atol=1e-12)
    (log_q.sum() + x.square().sum()).backward()
    assert layer.loc.grad.abs().sum() > 0 and layer.log_scale.grad.abs().sum() > 0


def test_a_torch_transform_that_is_no_vector_bijection_is_refused():
    from torch.distributions import transforms

    as_transform = flowvi.transforms.as_transform
    with pytest.raises(ValueError, match="event_dim 2"):
        as_transform(transforms.IndependentTransform(transforms.ExpTransform(), 2))
    with pytest.raises(ValueError, match="bijection"):
        as_transform(transforms.AbsTransform())
