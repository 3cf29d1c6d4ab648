"""flowvi: variational inference with normalizing flows, on PyTorch."""

import importlib.metadata

from flowvi import distributions, flows, targets, transforms
from flowvi.fitting import fit
from flowvi.flows import NormalizingFlow
from flowvi.io import load, save
from flowvi.metrics import evaluate
from flowvi.threads import set_num_threads

# imported on first use (``flowvi.pyro`` needs the optional Pyro; the others are large)
_LAZY = ("ais", "evidence", "inference", "metrics", "objectives", "plot", "posterior", "pyro")
_LAZY += ("train", "vae")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"flowvi.{name}")
    raise AttributeError(f"module 'flowvi' has no attribute {name!r}")


__version__ = importlib.metadata.version("flowvi")  # one source: pyproject.toml

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
