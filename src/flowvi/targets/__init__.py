"""Targets: unnormalized log densities ``log_prob(z: (batch, d)) -> (batch,)``, by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from flowvi._checks import check_choice, check_dim
from flowvi._imports import load_object
from flowvi.targets.base import FunctionTarget, Target
from flowvi.targets.bayes import EightSchools, LogisticRegression
from flowvi.targets.energies import ENERGIES, Energy, box_penalty
from flowvi.targets.simple import Banana, Gaussian, GaussianMixture
from flowvi.targets.sites import Site

NAMES = [*ENERGIES, "gaussian", "mixture", "banana", "eight-schools", "logistic-regression"]


def get(name: str, *, dim: int | None = None, confine: bool | None = None) -> Target:
    """The target called ``name``, or a user's function given as ``"module:function"``.

    Args:
        name: ``U1``–``U4`` (Rezende & Mohamed 2015, Table 1), ``gaussian``, ``mixture``,
            ``banana``, ``eight-schools`` (non-centered, d = 10), ``logistic-regression``
            (breast_cancer, d = 31; see :mod:`flowvi.targets.bayes`), or
            ``"package.module:function"`` (modules in the current directory are found) or
            ``"path/to/file.py:function"`` for a function mapping ``z: (batch, d)``
            to an unnormalized log density ``(batch,)`` in nats.
        dim: required for a user's function; for a built-in target it must equal its dimension
            (``gaussian`` accepts any ``dim``, default 2).
        confine: for U1–U4, whether to add the wall at the edge of ``[-4, 4]²`` (see
            :class:`flowvi.targets.energies.Energy`); default on for U2–U4.

    Raises:
        ValueError: for an unknown name (the valid ones are listed), a module or function that
            cannot be imported, a ``dim`` that is not a positive integer, or one that does not
            match the target.
    """
    if dim is not None:
        check_dim(dim, "dim")
    if ":" in name:
        return _import(name, dim)
    name = {n.lower(): n for n in NAMES}.get(name.lower(), name)  # "u1" means "U1"
    check_choice(name, NAMES, "target")
    if name in ENERGIES:
        target: Target = Energy(name, confine=confine)
    elif name == "gaussian":
        target = Gaussian.default(2 if dim is None else dim)
    elif name == "mixture":
        target = GaussianMixture()
    elif name == "eight-schools":
        target = EightSchools()
    elif name == "logistic-regression":
        target = LogisticRegression.breast_cancer()
    else:
        target = Banana()
    if dim is not None and dim != target.dim:
        raise ValueError(f"target {name} is {target.dim}-dimensional, but dim={dim} was given")
    return target


def as_target(target: Target | Callable[[Tensor], Tensor], *, dim: int) -> Target:
    """``target`` as a :class:`Target`: a Target as it is, or a function
    ``log_p(z: (batch, dim)) -> (batch,)`` (unnormalized, nats) wrapped in a
    :class:`FunctionTarget` of dimension ``dim``.

    Raises:
        TypeError: if ``target`` is neither a Target nor callable.
        ValueError: if the function fails on, or returns the wrong shape for, a probe batch.
    """
    if isinstance(target, Target):
        return target
    if not callable(target):
        raise TypeError(
            "a target is a flowvi.targets.Target or a function log_p(z: (batch, d)) -> (batch,); "
            f"got {type(target).__name__}"
        )
    return FunctionTarget(target, dim)


def _import(spec: str, dim: int | None) -> Target:
    if dim is None:
        raise ValueError(f"a user target ({spec}) needs its dimension: pass dim (--dim on the CLI)")
    fn = load_object(spec, what="target")
    if isinstance(fn, Target):
        if fn.dim != dim:
            raise ValueError(f"target {spec} is {fn.dim}-dimensional, but dim={dim} was given")
        return fn
    if not callable(fn):
        raise ValueError(f"target {spec!r} is not callable")
    return FunctionTarget(fn, dim, name=spec)


__all__ = [
    "NAMES",
    "Banana",
    "EightSchools",
    "Energy",
    "FunctionTarget",
    "Gaussian",
    "GaussianMixture",
    "LogisticRegression",
    "Site",
    "Target",
    "as_target",
    "box_penalty",
    "get",
]
