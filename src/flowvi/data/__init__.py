"""Data for maximum-likelihood density estimation, and the exact pre-processing bijections.

- 2-D toys: :data:`TOYS`, :func:`toy` (moons, circles, 8gaussians, pinwheel, checkerboard,
  2spirals).
- User tables: :func:`read_table` (``.npy``, ``.csv``), standardized by
  :class:`flowvi.transforms.StandardizationTransform`.
- Images: :func:`digits` (scikit-learn, 8×8, 17 levels), :func:`read_idx` (MNIST-style IDX
  files; Fashion-MNIST by default), pre-processed by :func:`dequantize` and
  :class:`flowvi.transforms.LogitPreprocessingTransform`, scored with :func:`bits_per_dim`.

The pre-processing maps are flowvi transforms with exact log-determinants, so a flow that ends
with them (the :class:`flowvi.flows.Standardization` and :class:`flowvi.flows.LogitPreprocessing`
layers, in the base → data direction) gives log densities in data units.
"""

from flowvi.data.images import FASHION_MNIST, digits, read_idx, read_idx_file
from flowvi.data.preprocess import bits_per_dim, dequantize
from flowvi.data.tables import read_table
from flowvi.data.toy import TOYS, toy

__all__ = [
    "FASHION_MNIST",
    "TOYS",
    "bits_per_dim",
    "dequantize",
    "digits",
    "read_idx",
    "read_idx_file",
    "read_table",
    "toy",
]
