"""Argument checks shared across flowvi, raising clear ``ValueError`` s before any work starts."""

from __future__ import annotations

from collections.abc import Iterable


def check_dim(d: object, name: str = "dimension d") -> None:
    """Raise ``ValueError`` unless ``d`` is a positive integer."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"{name} must be a positive integer, got {d!r}")


def check_choice(value: str, choices: Iterable[str], kind: str) -> None:
    """Raise ``ValueError`` naming the valid choices unless ``value`` is one of them."""
    choices = sorted(choices)
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(choices)}")


def check_hidden(hidden: Iterable[int], name: str = "hidden layer size") -> tuple[int, ...]:
    """``hidden`` as a tuple; raise ``ValueError`` unless every size is a positive integer."""
    hidden = tuple(hidden)
    for size in hidden:
        check_dim(size, name)
    return hidden
