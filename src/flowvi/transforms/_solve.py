"""Vectorized root finding for the layers whose inverse has no closed form."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

MAX_ITER = 200


def solve_increasing(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]], lo: Tensor, hi: Tensor
) -> Tensor:
    """Solve ``g(a) = 0`` elementwise for a non-decreasing ``g`` with a root in ``[lo, hi]``.

    ``fn(a)`` returns ``(g(a), g'(a))``. The solve is a safeguarded Newton iteration (Press et
    al., Numerical Recipes, ``rtsafe``): a Newton step that leaves the current bracket, or that
    is longer than half the step before last (and longer than the tolerance), is replaced by
    bisection. The second rule stops Newton from cycling between two points inside the bracket
    (as it does on a sigmoid-like ``g`` whose tangents overshoot from either side); so every
    element converges (quadratically near the root) and no step divides by a vanishing
    derivative.

    The iteration runs without autograd. One Newton step from the detached root is then taken
    with autograd on: since ``g(a*) = 0`` its gradient is exactly the implicit-function gradient
    ``∂a*/∂θ = -(∂g/∂θ) / g'(a*)``, so the solution is differentiable at the cost of one step.

    Args:
        fn: maps ``a`` of shape ``S`` to ``(g, dg)`` of shape ``S``.
        lo, hi: brackets with ``g(lo) <= 0 <= g(hi)``, shape ``S``.

    Returns:
        the root, shape ``S``, to machine precision of the input dtype.
    """
    with torch.no_grad():
        lo, hi = lo.detach().clone(), hi.detach().clone()
        a = 0.5 * (lo + hi)
        eps = torch.finfo(a.dtype).eps
        # the last two steps' lengths (at the start: the whole bracket)
        move = before = hi - lo
        for _ in range(MAX_ITER):
            g, dg = fn(a)
            lo = torch.where(g <= 0, a, lo)
            hi = torch.where(g >= 0, a, hi)
            step = a - g / dg
            tol = 4 * eps * (1 + a.abs())
            length = (step - a).abs()
            newton = (step >= lo) & (step <= hi) & ((2 * length <= before) | (length <= tol))
            new = torch.where(newton, step, 0.5 * (lo + hi))
            before, move = move, (new - a).abs()
            done = (move <= tol) | (hi - lo <= tol)
            a = new
            if bool(done.all()):
                break
    g, dg = fn(a)
    return a - g / dg
