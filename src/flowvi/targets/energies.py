"""The four test energies of Rezende & Mohamed (2015), Table 1, and their confinement box."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvi.targets.base import Target

HALF_WIDTH = 4.0  # the paper plots the energies on [-4, 4]²
WALL = 0.05  # width of the confining wall outside the box


def _w1(z: Tensor) -> Tensor:
    return torch.sin(0.5 * math.pi * z[..., 0])


def _w2(z: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z[..., 0] - 1) / 0.6) ** 2)


def _w3(z: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z[..., 0] - 1) / 0.3)


def u1(z: Tensor) -> Tensor:
    """U1: a ring of radius 2 split into two modes at z1 = ±2."""
    ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - 2) / 0.4) ** 2
    left = -0.5 * ((z[..., 0] - 2) / 0.6) ** 2
    right = -0.5 * ((z[..., 0] + 2) / 0.6) ** 2
    return ring - torch.logaddexp(left, right)


def u2(z: Tensor) -> Tensor:
    """U2: a sine wave."""
    return 0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2


def u3(z: Tensor) -> Tensor:
    """U3: a sine wave that splits in two around z1 = 1."""
    gap = z[..., 1] - _w1(z)
    return -torch.logaddexp(-0.5 * (gap / 0.35) ** 2, -0.5 * ((gap + _w2(z)) / 0.35) ** 2)


def u4(z: Tensor) -> Tensor:
    """U4: a sine wave that splits in two for z1 > 1 (sigmoid step)."""
    gap = z[..., 1] - _w1(z)
    return -torch.logaddexp(-0.5 * (gap / 0.4) ** 2, -0.5 * ((gap + _w3(z)) / 0.35) ** 2)


ENERGIES = {"U1": u1, "U2": u2, "U3": u3, "U4": u4}


def box_penalty(z: Tensor, half_width: float = HALF_WIDTH, wall: float = WALL) -> Tensor:
    r"""The wall :math:`\tfrac12 \sum_i (\max(0, |z_i| - a) / \delta)^2`, shape ``(*batch,)``.

    Zero inside the box :math:`[-a, a]^d`, continuously differentiable, and a Gaussian tail of
    width :math:`\delta` outside it, so that :math:`e^{-U - \text{penalty}}` is integrable and
    keeps all but a sliver of its mass (about :math:`\delta\sqrt{\pi/2}` per unit length of box
    edge, relative to the density at the edge) inside the box.
    """
    excess = F.relu(z.abs() - half_width) / wall
    return 0.5 * (excess * excess).sum(-1)


class Energy(Target):
    r"""Target :math:`\tilde p(z) = \exp(-U(z))` for one of the energies U1–U4 (Table 1).

    U2, U3 and U4 do not decay along :math:`z_1`, so :math:`\int e^{-U} = \infty` on
    :math:`\mathbb{R}^2` and no KL divergence to them exists. With ``confine=True`` (their default)
    flowvi adds :func:`box_penalty`, a steep smooth wall at the edge of the plotted box
    :math:`[-4, 4]^2` (width 0.05), which makes the target normalizable while leaving it
    unchanged inside the box. U1 is normalizable and is left as it is by default.

    Args:
        name: ``"U1"`` … ``"U4"``.
        confine: add the wall; defaults to ``True`` for U2–U4, ``False`` for U1.
    """

    def __init__(self, name: str, *, confine: bool | None = None) -> None:
        confine = name != "U1" if confine is None else confine
        a = HALF_WIDTH
        super().__init__(2, name=name, box=((-a, a), (-a, a)), normalizable=confine or name == "U1")
        self.confine = confine
        self.energy_fn = ENERGIES[name]

    def _log_prob(self, z: Tensor) -> Tensor:
        u = self.energy_fn(z)
        return -(u + box_penalty(z)) if self.confine else -u

    def extra_repr(self) -> str:
        return f"{self.name}, confine={self.confine}"
