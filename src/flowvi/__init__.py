"""flowvi: variational inference with normalizing flows, on PyTorch."""

from flowvi import distributions, flows, targets, transforms
from flowvi.fitting import fit
from flowvi.flows import NormalizingFlow
from flowvi.io import load, save
from flowvi.metrics import evaluate
from flowvi.threads import set_num_threads


def __getattr__(name: str):
    if name == "pyro":  # the Pyro bridge imports Pyro (an optional extra) only when used
        import importlib

        return importlib.import_module("flowvi.pyro")
    raise AttributeError(f"module 'flowvi' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "NormalizingFlow",
    "__version__",
    "distributions",
    "evaluate",
    "fit",
    "flows",
    "load",
    "save",
    "set_num_threads",
    "targets",
    "transforms",
]
