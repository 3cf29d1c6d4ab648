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
