"""Flow layers as pure math: ``torch.distributions.Transform`` subclasses with ``call_and_ladj``."""

from flowvi.transforms.base import ComposeTransform, ForeignTransform, Transform, as_transform
from flowvi.transforms.elementwise import (
    ElementwiseAffineTransform,
    LeakyReLUTransform,
    SigmoidTransform,
)
from flowvi.transforms.linear import LUTransform, QRTransform, TriangularAffineTransform
from flowvi.transforms.permutation import PermutationTransform
from flowvi.transforms.planar import PlanarTransform
from flowvi.transforms.preprocessing import LogitPreprocessingTransform, StandardizationTransform
from flowvi.transforms.radial import RadialTransform
from flowvi.transforms.residual import ResidualTransform
from flowvi.transforms.sylvester import SylvesterTransform

__all__ = [
    "ComposeTransform",
    "ElementwiseAffineTransform",
    "ForeignTransform",
    "LUTransform",
    "LeakyReLUTransform",
    "LogitPreprocessingTransform",
    "PermutationTransform",
    "PlanarTransform",
    "QRTransform",
    "RadialTransform",
    "ResidualTransform",
    "SigmoidTransform",
    "StandardizationTransform",
    "SylvesterTransform",
    "Transform",
    "TriangularAffineTransform",
    "as_transform",
]
