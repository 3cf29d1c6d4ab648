"""Flow layers as ``nn.Module`` s (parameters) returning transforms (math), and their registry."""

from __future__ import annotations

from collections.abc import Sequence

from flowvi._checks import check_choice, check_dim
from flowvi.distributions import BASES
from flowvi.flows.actnorm import ActNorm
from flowvi.flows.autoregressive import (
    IAF,
    MAF,
    ORDERS,
    MonotoneAutoregressive,
    NSFAutoregressive,
    RecurrentAutoregressive,
)
from flowvi.flows.base import Layer, ParametricLayer, TransformerLayer
from flowvi.flows.coupling import MASKS, NICE, NSF, Coupling, MonotoneCoupling, RealNVP
from flowvi.flows.elementwise import Affine, LeakyReLU, Sigmoid
from flowvi.flows.flow import FlowDistribution, NormalizingFlow
from flowvi.flows.linear import LU, QR, TriangularAffine
from flowvi.flows.permutation import Permutation, Reverse
from flowvi.flows.planar import Planar
from flowvi.flows.preprocessing import LogitPreprocessing, Standardization
from flowvi.flows.radial import Radial
from flowvi.flows.residual import Residual
from flowvi.flows.sylvester import Sylvester, SylvesterH, SylvesterO, SylvesterT

LAYERS: dict[str, type[Layer]] = {
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


# where an option applies, for the message refusing it elsewhere
_APPLIES = {
    "mask": "coupling layers",
    "order": "autoregressive layers",
    "transformer": "coupling and autoregressive layers",
    "monotone_hidden": "coupling and autoregressive layers with the monotone transformer",
    "context_dim": "amortized and conditional layers (planar, radial, affine, linear, "
    "Sylvester, coupling, autoregressive)",
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
    monotone_hidden: Sequence[int] | None = None,
    context_dim: int | None = None,
    **options: object,
) -> NormalizingFlow:
    """Build a flow of ``length`` layers of one family, by name.

    The family's :meth:`Layer.stack` makes the layers: coupling layers alternate their two
    parts (A and B of ``mask``) and autoregressive layers, by default, their order (natural,
    reverse, …) along the stack, so that every coordinate is transformed and conditions the
    others.

    Args:
        flow: a name in :data:`LAYERS` (``planar``, ``radial``, ``affine``, ``triangular``,
            ``lu``, ``qr``, ``permutation``, ``reverse``, ``nice``, ``realnvp``, ``maf``, ``iaf``,
            ``nsf``, ``nsf-ar``, ``monotone-coupling``, ``monotone-ar``, ``rnn-ar``, …).
        d: dimension.
        length: number of layers ``K``.
        base: ``standard`` (N(0, I)) or ``diagonal`` (trainable diagonal Gaussian).
        hidden: hidden layer sizes of the networks of coupling, autoregressive and residual
            layers; families without a network ignore it (so one setting serves every family).
        mask: coupling layers' split, ``half``, ``alternate`` or ``checkerboard`` (a square
            image of ``d`` pixels; build :class:`Coupling` s by hand for other image shapes).
        order: autoregressive layers' order: ``None`` alternates natural and reverse;
            ``natural`` or ``reverse`` for every layer; ``random`` gives each layer its own
            seeded random order (seeds from torch's generator, recorded for :func:`describe`).
        transformer: the elementwise map of coupling and autoregressive layers, a name in
            :data:`flowvi.transforms.transformers.TRANSFORMERS` (e.g. ``softplus-affine`` for
            ``realnvp`` or ``maf``); ``None`` keeps each family's own.
        monotone_hidden: hidden sizes of the monotone transformer's scalar network.
        context_dim: size of the context of an amortized or conditional flow (``None``: none).
        options: any other keyword argument of the family's constructor (``coeff`` and
            ``logdet`` of ``residual``, ``reflections`` of ``qr``, ``m`` of ``sylvester-o``, …).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), or ``d < 1``,
            ``length < 1``, a bad hidden size, or an option the family does not take (a
            ``mask`` other than ``half``, an ``order``, a ``transformer``, a
            ``context_dim``, …; the message names the option and the family).
    """
    check_choice(flow, LAYERS, "flow")
    check_choice(base, BASES, "base")
    check_dim(d)
    check_dim(length, "flow length K")
    cls = LAYERS[flow]
    given = {
        "mask": mask,
        "order": order,
        "transformer": transformer,
        "monotone_hidden": monotone_hidden,
        "context_dim": context_dim,
    }
    # the defaults (None, and "half", every coupling layer's own) are not passed on
    options |= {k: v for k, v in given.items() if v is not None and (k, v) != ("mask", "half")}
    takes = cls.options()
    for name in options:
        if name not in takes and name in _APPLIES:
            raise ValueError(f"{name} applies to {_APPLIES[name]} only, not to {flow!r}")
    if "hidden" in takes:
        options["hidden"] = hidden
    return NormalizingFlow(BASES[base](d), cls.stack(d, length, **options))


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
        entry = {"layer": names[type(layer)], "context_dim": layer.context_dim, **layer.spec}
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
    "MASKS",
    "NICE",
    "NSF",
    "ORDERS",
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
    "ParametricLayer",
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
    "TransformerLayer",
    "TriangularAffine",
    "build",
    "describe",
    "rebuild",
]
