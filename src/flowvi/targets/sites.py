r"""Named, constrained parameters of a model whose posterior lives on :math:`\mathbb R^d`.

A :class:`flowvi.targets.Target` is a density of one unconstrained vector ``z: (batch, d)``;
a Bayesian model has named parameters, each with a shape and a support (a scale is positive, a
probability vector lies on the simplex). A :class:`Site` records one of them: its name, its
constrained shape, and the bijection from its slice of ``z`` onto its support (torch's
``biject_to(support)``, as Stan and Pyro use). The target's density must already include the
log-Jacobian of those bijections, so that it is the density of ``z``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Transform
from torch.distributions.transforms import identity_transform


@dataclass(frozen=True)
class Site:
    """One named parameter: ``transform`` maps its unconstrained slice of ``z`` to its value.

    Args:
        name: the parameter's name (``"tau"``).
        shape: its shape in the constrained space, ``()`` for a scalar.
        transform: unconstrained → constrained, e.g. ``biject_to(constraints.positive)`` (an
            ``ExpTransform``); the identity by default. Its ``inverse_shape(shape)`` is the shape
            of the unconstrained slice (different from ``shape`` on the simplex, say).

    Raises:
        ValueError: for an empty name or a negative size in ``shape``.
    """

    name: str
    shape: tuple[int, ...] = ()
    transform: Transform = field(default_factory=lambda: identity_transform)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a site needs a name")
        shape = tuple(int(s) for s in self.shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"site {self.name!r} has a negative size in its shape {shape}")
        object.__setattr__(self, "shape", shape)

    @property
    def unconstrained_shape(self) -> tuple[int, ...]:
        """The shape of the site's slice of ``z`` before the transform."""
        return tuple(self.transform.inverse_shape(torch.Size(self.shape)))

    @property
    def size(self) -> int:
        """The number of coordinates of ``z`` the site takes."""
        return math.prod(self.unconstrained_shape)

    def element_names(self) -> list[str]:
        """``name`` for a scalar, else ``name[i]``, ``name[i,j]``, … in row-major order."""
        if not self.shape:
            return [self.name]
        index = torch.cartesian_prod(*(torch.arange(s) for s in self.shape)).reshape(
            -1, len(self.shape)
        )
        return [f"{self.name}[{','.join(map(str, row))}]" for row in index.tolist()]


def vector_site(d: int, name: str = "z") -> tuple[Site, ...]:
    """The default description of a target: one real vector ``name`` of shape ``(d,)``."""
    return (Site(name, (d,)),)


def check_sites(sites: Sequence[Site], d: int) -> tuple[Site, ...]:
    """``sites`` as a tuple, checked against the dimension ``d``.

    Raises:
        ValueError: if the names repeat or the sites' sizes do not add up to ``d``.
    """
    sites = tuple(sites)
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique, got {names}")
    total = sum(s.size for s in sites)
    if total != d:
        raise ValueError(f"the sites {names} take {total} coordinates, but the target is {d}-D")
    return sites


def split(sites: Sequence[Site], z: Tensor) -> Iterator[tuple[Site, Tensor]]:
    """Each site with its unconstrained slice of ``z: (*batch, d)``, shaped
    ``(*batch, *site.unconstrained_shape)``."""
    start = 0
    for site in sites:
        piece = z[..., start : start + site.size]
        yield site, piece.reshape(tuple(z.shape[:-1]) + site.unconstrained_shape)
        start += site.size


def constrain(sites: Sequence[Site], z: Tensor) -> dict[str, Tensor]:
    """The named constrained values of ``z: (*batch, d)``: ``{name: (*batch, *site.shape)}``."""
    return {site.name: site.transform(piece) for site, piece in split(sites, z)}


def unconstrain(sites: Sequence[Site], values: dict[str, Tensor]) -> Tensor:
    """The inverse of :func:`constrain`: ``z: (*batch, d)`` from ``{name: (*batch, *shape)}``.

    Raises:
        ValueError: for a missing or unknown name, or a value of the wrong shape.
    """
    unknown = set(values) - {s.name for s in sites}
    if unknown:
        raise ValueError(f"unknown sites {sorted(unknown)}; the model's: {[s.name for s in sites]}")
    pieces = []
    for site in sites:
        if site.name not in values:
            raise ValueError(f"no value for site {site.name!r}")
        value = torch.as_tensor(values[site.name])
        if tuple(value.shape[value.dim() - len(site.shape) :]) != site.shape:
            raise ValueError(
                f"site {site.name!r} has shape {site.shape}, got a value of shape "
                f"{tuple(value.shape)}"
            )
        lead = tuple(value.shape[: value.dim() - len(site.shape)])
        pieces.append(site.transform.inv(value).reshape((*lead, site.size)))
    return torch.cat(pieces, -1)


__all__ = ["Site", "check_sites", "constrain", "split", "unconstrain", "vector_site"]
