r"""Two-dimensional toy densities for maximum-likelihood fits: samples ``(n, 2)``.

``moons`` and ``circles`` are scikit-learn's ``make_moons`` / ``make_circles``; ``8gaussians``,
``pinwheel``, ``checkerboard`` and ``2spirals`` follow the definitions of the FFJORD and neural
spline flow toy data (Grathwohl et al. 2019; Durkan et al. 2019), written here from their
formulas. Every generator is reproducible from its ``seed`` and vectorized over the samples.

Each toy's ``noise`` is the standard deviation of its Gaussian noise, with these meanings and
defaults:

============  ==========================================================  ===================
toy           ``noise``                                                   default
============  ==========================================================  ===================
moons         Gaussian noise added to points on the two half circles      0.05
circles       Gaussian noise added to points on the circles of radius
              1 and 0.5                                                   0.05
8gaussians    standard deviation of each of the 8 components              :math:`1/(2\sqrt2)`
pinwheel      radial standard deviation (tangential: a third of it)       0.3
2spirals      Gaussian noise added to the (jittered) spiral points        0.1
checkerboard  none: uniform on the dark squares; giving one is an error   —
============  ==========================================================  ===================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowvi._checks import check_choice

Toy = Callable[[int, int, float | None], Tensor]


def _noise(noise: float | None, default: float, name: str) -> float:
    if noise is None:
        return default
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"{name}: noise must be a finite number >= 0, got {noise!r}")
    return float(noise)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _f64(shape: tuple[int, ...], g: torch.Generator, *, normal: bool) -> Tensor:
    sample = torch.randn if normal else torch.rand
    return sample(shape, generator=g, dtype=torch.float64)


def moons(n: int, seed: int = 0, noise: float | None = None) -> Tensor:
    """Two interleaving half circles (scikit-learn ``make_moons``), float64 ``(n, 2)``.

    Noise-free points lie on the unit circle about ``(0, 0)`` (upper half) or about
    ``(1, 0.5)`` (lower half).
    """
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=_noise(noise, 0.05, "moons"), random_state=seed)
    return torch.from_numpy(x).to(torch.float64)


def circles(n: int, seed: int = 0, noise: float | None = None) -> Tensor:
    """Two concentric circles of radii 1 and 0.5 (scikit-learn ``make_circles`` with
    ``factor=0.5``), float64 ``(n, 2)``."""
    from sklearn.datasets import make_circles

    x, _ = make_circles(n, noise=_noise(noise, 0.05, "circles"), factor=0.5, random_state=seed)
    return torch.from_numpy(x).to(torch.float64)


def eight_gaussians(n: int, seed: int = 0, noise: float | None = None) -> Tensor:
    r"""An equal mixture of 8 Gaussians, float64 ``(n, 2)``.

    Centers :math:`2\sqrt2\,(\cos \tfrac{2\pi k}{8}, \sin \tfrac{2\pi k}{8})`, ``k = 0..7``;
    isotropic standard deviation ``noise`` (default :math:`1/(2\sqrt2)`), i.e. FFJORD's centers
    at radius 4 with standard deviation 0.5, all divided by :math:`\sqrt2`.
    """
    sd = _noise(noise, 1 / (2 * math.sqrt(2)), "8gaussians")
    g = _generator(seed)
    k = torch.randint(8, (n,), generator=g)
    angle = 2 * math.pi * k.to(torch.float64) / 8
    centers = 2 * math.sqrt(2) * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return centers + sd * _f64((n, 2), g, normal=True)


def pinwheel(n: int, seed: int = 0, noise: float | None = None) -> Tensor:
    r"""Five curved arms, float64 ``(n, 2)``.

    1. Arm :math:`k \sim U\{0..4\}`; :math:`f = (1 + \sigma_r \epsilon_1, \sigma_t \epsilon_2)`,
       :math:`\epsilon \sim N(0, I)`, :math:`\sigma_r` = ``noise`` (default 0.3),
       :math:`\sigma_t = \sigma_r / 3`.
    2. Rotate by :math:`\theta = 2\pi k / 5 + \tfrac14 e^{f_1}` (the arm bends outwards) and
       scale by 2: :math:`x = 2 R(\theta) f`.
    """
    radial = _noise(noise, 0.3, "pinwheel")
    g = _generator(seed)
    k = torch.randint(5, (n,), generator=g).to(torch.float64)
    eps = _f64((n, 2), g, normal=True)
    f1, f2 = 1 + radial * eps[:, 0], radial / 3 * eps[:, 1]
    theta = 2 * math.pi * k / 5 + 0.25 * torch.exp(f1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    return 2 * torch.stack([cos * f1 - sin * f2, sin * f1 + cos * f2], -1)


def checkerboard(n: int, seed: int = 0, noise: float | None = None) -> Tensor:
    r"""Uniform on the 8 dark squares of a 4×4 board of side-2 squares on :math:`[-4, 4)^2`,
    float64 ``(n, 2)``.

    The dark squares are those with :math:`\lfloor x_1/2 \rfloor + \lfloor x_2/2 \rfloor` even:
    :math:`x_1 \sim U[-4, 4)`, then :math:`x_2` uniform on the two dark squares of its column.

    Raises:
        ValueError: if ``noise`` is given (the checkerboard has none).
    """
    if noise is not None:
        raise ValueError("checkerboard has no noise parameter (it is uniform on its squares)")
    g = _generator(seed)
    x1 = 8 * _f64((n,), g, normal=False) - 4
    column = torch.floor(x1 / 2)  # in {-2, -1, 0, 1}
    # rows of the same parity as the column: {-2, 0} + (column mod 2)
    row = 2 * torch.randint(2, (n,), generator=g).to(torch.float64) - 2 + column.remainder(2)
    x2 = 2 * (row + _f64((n,), g, normal=False))
    return torch.stack([x1, x2], -1)


def two_spirals(n: int, seed: int = 0, noise: float | None = None) -> Tensor:
    r"""Two interleaved spirals, float64 ``(n, 2)``.

    1. :math:`t = 3\pi \sqrt{u}`, :math:`u \sim U[0, 1)` (uniform along the arc, up to 540°).
    2. Point on the spiral :math:`t(-\cos t, \sin t)`, jittered by :math:`v \sim U[0, \tfrac12)^2`.
    3. Arm :math:`a \in \{+1, -1\}` with equal probability: the second arm is the point reflected
       through the origin.
    4. :math:`x = a\,(t(-\cos t, \sin t) + v) / 3 + \sigma \epsilon`, :math:`\sigma` = ``noise``
       (default 0.1), :math:`\epsilon \sim N(0, I)`.
    """
    sd = _noise(noise, 0.1, "2spirals")
    g = _generator(seed)
    t = 3 * math.pi * torch.sqrt(_f64((n,), g, normal=False))
    arm = 2 * torch.randint(2, (n, 1), generator=g).to(torch.float64) - 1
    point = torch.stack([-torch.cos(t) * t, torch.sin(t) * t], -1) + 0.5 * _f64(
        (n, 2), g, normal=False
    )
    return arm * point / 3 + sd * _f64((n, 2), g, normal=True)


TOYS: dict[str, Toy] = {
    "moons": moons,
    "circles": circles,
    "8gaussians": eight_gaussians,
    "pinwheel": pinwheel,
    "checkerboard": checkerboard,
    "2spirals": two_spirals,
}
"""The 2-D toy generators by name: ``TOYS[name](n, seed, noise) -> (n, 2)`` float64."""


def toy(
    name: str,
    n: int,
    *,
    seed: int = 0,
    noise: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` samples of the 2-D toy density ``name`` (see :data:`TOYS`), shape ``(n, 2)``.

    The same ``(name, n, seed, noise)`` always gives the same samples (generated in float64, then
    cast to ``dtype``). ``noise=None`` takes the toy's default (module docstring).

    Example:
        >>> from flowvi.data import toy
        >>> toy("8gaussians", 1000, seed=1).shape
        torch.Size([1000, 2])

    Raises:
        ValueError: for an unknown name (listing the valid ones), ``n < 1``, a negative or
            non-finite ``noise``, or a ``noise`` given to ``checkerboard``.
    """
    check_choice(name, TOYS, "toy data set")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of samples n must be a positive integer, got {n!r}")
    return TOYS[name](n, seed, noise).to(dtype)
