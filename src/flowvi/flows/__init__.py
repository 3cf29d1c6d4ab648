"""Flow layers as ``nn.Module`` s (parameters) returning transforms (math), and their registry."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from flowvi._checks import check_choice, check_dim
from flowvi.distributions import BASES
from flowvi.flows.actnorm import ActNorm
from flowvi.flows.fixed import LogitPreprocessing, Standardization
from flowvi.flows.flow import FlowDistribution, NormalizingFlow
from flowvi.flows.layer import Layer
from flowvi.flows.layers import (
    LU,
    QR,
    Affine,
    LeakyReLU,
    Permutation,
    Planar,
    Radial,
    Reverse,
    Sigmoid,
    TriangularAffine,
)
from flowvi.flows.networked import (
    IAF,
    MAF,
    NICE,
    NSF,
    Coupling,
    MonotoneAutoregressive,
    MonotoneCoupling,
    NSFAutoregressive,
    RealNVP,
    RecurrentAutoregressive,
)
from flowvi.flows.residual import Residual
from flowvi.flows.sylvester import Sylvester, SylvesterH, SylvesterO, SylvesterT

LAYERS: dict[str, type[nn.Module]] = {
    "planar": Planar,
    "radial": Radial,
    "affine": Affine,
    "triangular": TriangularAffine,
    "lu": LU,
    "qr": QR,
    "permutation": Permutation,
    "reverse": Reverse,
    "nice": NICE,
    "realnvp": RealNVP,
    "maf": MAF,
    "iaf": IAF,
    "nsf": NSF,
    "nsf-ar": NSFAutoregressive,
    "monotone-coupling": MonotoneCoupling,
    "monotone-ar": MonotoneAutoregressive,
    "rnn-ar": RecurrentAutoregressive,
    "residual": Residual,
    "actnorm": ActNorm,
    "sigmoid": Sigmoid,
    "leaky-relu": LeakyReLU,
    "sylvester-o": SylvesterO,
    "sylvester-h": SylvesterH,
    "sylvester-t": SylvesterT,
    "standardize": Standardization,
    "logit": LogitPreprocessing,
}


def build(
    flow: str,
    d: int,
    *,
    length: int = 1,
    base: str = "standard",
    hidden: Sequence[int] = (64, 64),
    mask: str = "half",
    order: str | None = None,
    transformer: str | None = None,
) -> NormalizingFlow:
    """Build a flow of ``length`` layers of one family, by name.

    Coupling layers alternate their two parts (A and B of ``mask``) and autoregressive layers,
    by default, their order (natural, reverse, …) along the stack, so that every coordinate is
    transformed and conditions the others.

    Args:
        flow: a name in :data:`LAYERS` (``planar``, ``radial``, ``affine``, ``triangular``,
            ``lu``, ``qr``, ``permutation``, ``reverse``, ``nice``, ``realnvp``, ``maf``, ``iaf``,
            ``nsf``, ``nsf-ar``, ``monotone-coupling``, ``monotone-ar``, ``rnn-ar``, …).
        d: dimension.
        length: number of layers ``K``.
        base: ``standard`` (N(0, I)) or ``diagonal`` (trainable diagonal Gaussian).
        hidden: hidden layer sizes of the networks of coupling, autoregressive and residual
            layers.
        mask: coupling layers' split, ``half``, ``alternate`` or ``checkerboard`` (a square
            image of ``d`` pixels; build :class:`Coupling` s by hand for other image shapes).
        order: autoregressive layers' order: ``None`` alternates natural and reverse;
            ``natural`` or ``reverse`` for every layer; ``random`` gives each layer its own
            seeded random order (seeds from torch's generator, recorded for :func:`describe`).
        transformer: the elementwise map of coupling and autoregressive layers, a name in
            :data:`flowvi.transforms.transformers.TRANSFORMERS` (e.g. ``softplus-affine`` for
            ``realnvp`` or ``maf``); ``None`` keeps each family's own.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), or ``d < 1``,
            ``length < 1``, a bad hidden size, a ``mask`` other than ``half`` for a
            non-coupling family, an ``order`` for a non-autoregressive one, or a
            ``transformer`` for a family without one or an unknown transformer.
    """
    check_choice(flow, LAYERS, "flow")
    check_choice(base, BASES, "base")
    check_dim(d)
    check_dim(length, "flow length K")
    cls = LAYERS[flow]
    if mask != "half" and not issubclass(cls, Coupling):
        raise ValueError(f"mask applies to coupling layers only, not to {flow!r}")
    if order is not None and not issubclass(cls, MAF | IAF):
        raise ValueError(f"order applies to autoregressive layers only, not to {flow!r}")
    if transformer is not None and not issubclass(cls, Coupling | MAF | IAF):
        raise ValueError(
            f"transformer applies to coupling and autoregressive layers only, not to {flow!r}"
        )
    options = {} if transformer is None else {"transformer": transformer}
    if issubclass(cls, Coupling):
        layers = [
            cls(d, hidden=hidden, mask=mask, swap=k % 2 == 1, **options) for k in range(length)
        ]
    elif issubclass(cls, MAF | IAF):
        orders = [order or ("natural", "reverse")[k % 2] for k in range(length)]
        layers = [cls(d, hidden=hidden, order=o, **options) for o in orders]
    elif cls is Residual:
        layers = [cls(d, hidden=hidden) for _ in range(length)]
    elif hasattr(cls, "alternate"):  # e.g. T-SNF flips its permutation on every other layer
        layers = [cls(d, **{cls.alternate: k % 2 == 1}) for k in range(length)]
    else:
        layers = [cls(d) for _ in range(length)]
    return NormalizingFlow(BASES[base](d), layers)


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
        entry = {
            "layer": names[type(layer)],
            "context_dim": getattr(layer, "context_dim", None),
            **getattr(layer, "spec", {}),
        }
        if layers and {k: v for k, v in layers[-1].items() if k != "count"} == entry:
            layers[-1]["count"] += 1
        else:
            layers.append({**entry, "count": 1})
    return {"base": base, "d": flow.event_shape[-1], "layers": layers}


def rebuild(spec: dict) -> NormalizingFlow:
    """A freshly initialized flow of the structure :func:`describe` returned."""
    d = spec["d"]
    layers = [
        LAYERS[entry["layer"]](d, **{k: v for k, v in entry.items() if k not in ("layer", "count")})
        for entry in spec["layers"]
        for _ in range(entry["count"])
    ]
    return NormalizingFlow(BASES[spec["base"]](d), layers)


__all__ = [
    "IAF",
    "LAYERS",
    "LU",
    "MAF",
    "NICE",
    "NSF",
    "QR",
    "ActNorm",
    "Affine",
    "Coupling",
    "FlowDistribution",
    "Layer",
    "LeakyReLU",
    "LogitPreprocessing",
    "MonotoneAutoregressive",
    "MonotoneCoupling",
    "NSFAutoregressive",
    "NormalizingFlow",
    "Permutation",
    "Planar",
    "Radial",
    "RealNVP",
    "RecurrentAutoregressive",
    "Residual",
    "Reverse",
    "Sigmoid",
    "Standardization",
    "Sylvester",
    "SylvesterH",
    "SylvesterO",
    "SylvesterT",
    "TriangularAffine",
    "build",
    "describe",
    "rebuild",
]
