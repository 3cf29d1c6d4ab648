"""Fixed permutations of the coordinates (volume preserving: ln|det J| = 0)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.transforms.base import Transform


class PermutationTransform(Transform):
    r"""Coordinate permutation :math:`y_i = x_{\pi(i)}`; :math:`\ln|\det J| = 0`.

    Between coupling or autoregressive layers it lets every coordinate be transformed in turn
    (Dinh et al. 2016; Papamakarios et al. 2017).

    Args:
        permutation: a permutation of ``0 … d-1``, shape ``(d,)``, integer dtype.

    Raises:
        ValueError: if ``permutation`` is not a permutation of ``0 … d-1``.
    """

    def __init__(self, permutation: Tensor) -> None:
        super().__init__()
        d = permutation.shape[-1]
        expected = torch.arange(d, device=permutation.device)
        if permutation.dim() != 1 or not torch.equal(permutation.sort().values, expected):
            raise ValueError(f"not a permutation of 0..{d - 1}: {permutation.tolist()}")
        self.permutation = permutation
        self.inverse_permutation = torch.argsort(permutation)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[..., self.permutation], x.new_zeros(x.shape[:-1])

    def _inverse(self, y: Tensor) -> Tensor:
        return y[..., self.inverse_permutation]

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._inverse(y), y.new_zeros(y.shape[:-1])

    def __repr__(self) -> str:
        return f"PermutationTransform({self.permutation.tolist()})"
