"""Flow layers as ``nn.Module`` s (parameters) returning transforms (math), and their registry."""

from __future__ import annotations

from torch import nn

from flowvi._checks import check_choice, check_dim
from flowvi.distributions import BASES
from flowvi.flows.flow import FlowDistribution, NormalizingFlow
from flowvi.flows.layer import Layer
from flowvi.flows.layers import (
    LU,
    Affine,
    Permutation,
    Planar,
    Radial,
    Reverse,
    TriangularAffine,
)

LAYERS: dict[str, type[nn.Module]] = {
    "planar": Planar,
    "radial": Radial,
    "affine": Affine,
    "triangular": TriangularAffine,
    "lu": LU,
    "permutation": Permutation,
    "reverse": Reverse,
}


def build(flow: str, d: int, *, length: int = 1, base: str = "standard") -> NormalizingFlow:
    """Build a flow of ``length`` layers of one family, by name.

    Args:
        flow: a name in :data:`LAYERS` (``planar``, ``radial``, ``affine``, ``triangular``,
            ``lu``, ``permutation``, ``reverse``).
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


def describe(flow: NormalizingFlow) -> dict:
    """A JSON-able description of a flow made of registered parts, for :func:`rebuild`.

    ``{"base": "standard", "d": 2, "layers": [{"layer": "planar", "count": 32,
    "context_dim": None}]}``: consecutive equal layers are run-length encoded.

    Raises:
        ValueError: if the base or a layer is not one of flowvi's registered classes.
    """
    base = {cls: name for name, cls in BASES.items()}.get(type(flow.base))
    if base is None:
        raise ValueError(
            f"cannot describe a flow whose base is {type(flow.base).__name__}: "
            f"use one of flowvi.distributions ({', '.join(BASES)})"
        )
    names = {cls: name for name, cls in LAYERS.items()}
    layers: list[dict] = []
    for layer in flow.layers:
        if type(layer) not in names:
            raise ValueError(f"cannot describe a flow with a {type(layer).__name__} layer")
        entry = {"layer": names[type(layer)], "context_dim": getattr(layer, "context_dim", None)}
        if layers and {k: v for k, v in layers[-1].items() if k != "count"} == entry:
            layers[-1]["count"] += 1
        else:
            layers.append({**entry, "count": 1})
    return {"base": base, "d": flow.event_shape[-1], "layers": layers}


def rebuild(spec: dict) -> NormalizingFlow:
    """A freshly initialized flow of the structure :func:`describe` returned."""
    d = spec["d"]
    layers = [
        LAYERS[entry["layer"]](d, context_dim=entry["context_dim"])
        for entry in spec["layers"]
        for _ in range(entry["count"])
    ]
    return NormalizingFlow(BASES[spec["base"]](d), layers)


__all__ = [
    "LAYERS",
    "LU",
    "Affine",
    "FlowDistribution",
    "Layer",
    "NormalizingFlow",
    "Permutation",
    "Planar",
    "Radial",
    "Reverse",
    "TriangularAffine",
    "build",
    "describe",
    "rebuild",
]
