"""flowvi: variational inference with normalizing flows, on PyTorch."""

from flowvi import distributions, flows, targets, transforms
from flowvi.flows import NormalizingFlow
from flowvi.io import load, save

__version__ = "0.1.0"

__all__ = [
    "NormalizingFlow",
    "__version__",
    "distributions",
    "flows",
    "load",
    "save",
    "targets",
    "transforms",
]
