"""Fixed permutations of the coordinates."""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.flows.base import Layer
from flowvi.transforms.permutation import PermutationTransform


class Permutation(Layer):
    """A fixed permutation of the coordinates, drawn from torch's generator when built.

    The permutation is a buffer: it is saved with the weights and restored by
    :func:`flowvi.load`. ``context`` is accepted and ignored.
    """

    def __init__(self, d: int, *, context_dim: int | None = None) -> None:
        super().__init__(d, context_dim=context_dim)
        self.register_buffer("permutation", self._draw(d))

    @staticmethod
    def _draw(d: int) -> Tensor:
        return torch.randperm(d)

    def forward(self, context: Tensor | None = None) -> PermutationTransform:
        return PermutationTransform(self.permutation)


class Reverse(Permutation):
    """The order-reversing permutation ``d-1, …, 0``."""

    @staticmethod
    def _draw(d: int) -> Tensor:
        return torch.arange(d - 1, -1, -1)
