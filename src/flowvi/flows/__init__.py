"""Flow layers as ``nn.Module`` s (parameters) returning transforms (math), and their registry."""

from __future__ import annotations

from flowvi._checks import check_choice, check_dim
from flowvi.distributions import BASES
from flowvi.flows.flow import FlowDistribution, NormalizingFlow
from flowvi.flows.layer import Layer
from flowvi.flows.layers import Affine, Planar, Radial, TriangularAffine

LAYERS: dict[str, type[Layer]] = {
    "planar": Planar,
    "radial": Radial,
    "affine": Affine,
    "triangular": TriangularAffine,
}


def build(flow: str, d: int, *, length: int = 1, base: str = "standard") -> NormalizingFlow:
    """Build a flow of ``length`` layers of one family, by name.

    Args:
        flow: a name in :data:`LAYERS` (``planar``, ``radial``, ``affine``, ``triangular``).
        d: dimension.
        length: number of layers ``K``.
        base: ``standard`` (N(0, I)) or ``diagonal`` (trainable diagonal Gaussian).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), or ``d < 1``,
            ``length < 1``.
    """
    check_choice(flow, LAYERS, "flow")
    check_choice(base, BASES, "base")
    check_dim(d)
    check_dim(length, "flow length K")
    return NormalizingFlow(BASES[base](d), [LAYERS[flow](d) for _ in range(length)])


__all__ = [
    "LAYERS",
    "Affine",
    "FlowDistribution",
    "Layer",
    "NormalizingFlow",
    "Planar",
    "Radial",
    "TriangularAffine",
    "build",
]
