"""Settings every run command shares: dtype and device names, the flow's options (with their
command-line help) and the flow a configuration names."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

import flowvi.flows
from flowvi.flows import MASKS, ORDERS, build
from flowvi.io import CONFIG, RunError, read_config
from flowvi.train import OPTIMIZERS, SCHEDULES
from flowvi.transforms.transformers import TRANSFORMERS

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# the flow's settings shared by FitConfig and DensityConfig: their command-line help (the CLI
# generates an option from each field with a "help")
FLOW_OPTIONS: dict[str, dict[str, Any]] = {
    "flow": {
        "help": f"layer family: {', '.join(flowvi.flows.LAYERS)} (fit's None: planar for U1-U4 "
        "and the 2-D toys, iaf for posteriors)"
    },
    "length": {"help": "flow length K (fit's None: 32 planar, 4 iaf)", "aliases": ("-K",)},
    "base": {
        "help": "base distribution: standard N(0, I) or a trainable diagonal Gaussian (fit's "
        "None: standard for U1-U4 and the toys, diagonal for posteriors)",
        "choices": ("standard", "diagonal"),
    },
    "hidden": {"help": "hidden sizes of coupling/MADE networks, e.g. 64,64"},
    "mask": {"help": "coupling split (checkerboard: square images)", "choices": tuple(MASKS)},
    "order": {
        "help": "autoregressive order of every layer (None: natural and reverse alternate)",
        "choices": tuple(ORDERS),
    },
    "transformer": {
        "help": "elementwise map of coupling/autoregressive layers (None: the family's own)",
        "choices": tuple(TRANSFORMERS),
    },
    "compile": {
        "help": "run each training step as one compiled graph (Adam only; steps several times "
        "faster after a compile of tens of seconds to minutes: for long or repeated runs)"
    },
    "device": {"help": "cpu, cuda, cuda:N or auto"},
    "dtype": {"help": "floating-point type of the model and data", "choices": tuple(DTYPES)},
    "optimizer": {"help": "adam, or rmsprop as in the paper", "choices": tuple(OPTIMIZERS)},
    "schedule": {
        "help": "learning rate: constant, or cosine (decays to 0 at --iters)",
        "choices": SCHEDULES,
    },
    "seed": {"help": "random seed"},
    "lr": {"help": "learning rate"},
    "checkpoint_every": {"help": "iterations between checkpoints"},
}


def build_flow(config: Any, d: int) -> flowvi.NormalizingFlow:
    """The flow a run's configuration names (``flow``, ``length``, ``base``, ``hidden``,
    ``mask``, ``order``, ``transformer``; a :class:`FitConfig` or a ``DensityConfig``) in
    ``d`` dimensions, by :func:`flowvi.flows.build`."""
    return build(
        config.flow,
        d,
        length=config.length,
        base=config.base,
        hidden=config.hidden,
        mask=config.mask,
        order=config.order,
        transformer=config.transformer,
    )


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means: ``cpu``, ``cuda``, ``cuda:N``, or ``auto`` (CUDA when present).

    Raises:
        ValueError: for an unknown name, or CUDA requested where it is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def saved_config(cls: type, directory: str | Path, *, kind: str, **overrides: Any) -> Any:
    """The configuration dataclass ``cls`` saved in a run directory of the command ``kind``
    (unknown entries ignored, ``hidden`` as a tuple), with the ``overrides`` that are not
    ``None`` (e.g. a longer ``iters``).

    Raises:
        flowvi.io.RunError: (a ``ValueError``) naming the ``config.json``: missing, not a JSON
            object, of a run of another command, or holding settings of the wrong type.
    """
    saved = read_config(directory, kind=kind)
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in saved.items() if k in known}
    try:
        if "hidden" in known:
            values["hidden"] = tuple(values.get("hidden", cls.hidden))
        config = cls(**values)
    except TypeError as error:
        raise RunError(
            f"{Path(directory) / CONFIG} holds settings of the wrong type: {error}"
        ) from None
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
