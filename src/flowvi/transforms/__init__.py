"""Flow layers as pure math: ``torch.distributions.Transform`` subclasses with ``call_and_ladj``."""

from flowvi.transforms.base import ComposeTransform, Transform
from flowvi.transforms.elementwise import AffineTransform, LeakyReLUTransform, SigmoidTransform
from flowvi.transforms.linear import LUTransform, QRTransform, TriangularAffineTransform
from flowvi.transforms.permutation import PermutationTransform
from flowvi.transforms.planar import PlanarTransform
from flowvi.transforms.radial import RadialTransform
from flowvi.transforms.residual import ResidualTransform
from flowvi.transforms.sylvester import SylvesterTransform

__all__ = [
    "AffineTransform",
    "ComposeTransform",
    "LUTransform",
    "LeakyReLUTransform",
    "PermutationTransform",
    "PlanarTransform",
    "QRTransform",
    "RadialTransform",
    "ResidualTransform",
    "SigmoidTransform",
    "SylvesterTransform",
    "Transform",
    "TriangularAffineTransform",
]
