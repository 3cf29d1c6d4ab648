"""flowvi: variational inference with normalizing flows, on PyTorch."""

from flowvi import distributions, flows, targets, transforms
from flowvi.fitting import fit
from flowvi.flows import NormalizingFlow
from flowvi.io import load, save
from flowvi.metrics import evaluate

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
    "targets",
    "transforms",
]
