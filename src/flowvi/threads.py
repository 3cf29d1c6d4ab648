"""How many CPU threads flowvi's training uses: one rule for the library and every command.

A training step of the models flowvi fits (flows of tens to thousands of parameters, VAEs with
300-unit layers) is many small operations; torch's intra-op threads then cost more in
synchronization than they save. Measured on a 2-core machine: MAF density fitting 168 it/s on
one thread against 9 it/s with torch's default, a Fashion-MNIST VAE epoch 8.6 s against 77 s.

The rule: while :func:`flowvi.train.train` runs on the CPU (every fit, ``flowvi.fit`` and every
command), torch uses :func:`get_num_threads` threads, **one by default**, and the setting torch
had is restored afterwards. :func:`set_num_threads` changes the number for all later training
(``flowvi --threads`` on the command line); ``0`` leaves torch's own setting alone. Nothing is
changed at import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_threads = 1


def set_num_threads(n: int) -> None:
    """Use ``n`` CPU threads while flowvi trains (``0``: torch's own setting, untouched).

    Raises:
        ValueError: if ``n`` is not a non-negative integer.
    """
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of threads must be an integer >= 0, got {n!r}")
    _threads = n


def get_num_threads() -> int:
    """The number of CPU threads training uses (``0``: torch's own setting)."""
    return _threads


@contextlib.contextmanager
def training_threads(n: int | None = None) -> Iterator[None]:
    """Run the body with ``n`` torch threads (default :func:`get_num_threads`), restoring
    torch's setting afterwards; ``0`` changes nothing.

    Raises:
        ValueError: if ``n`` is negative.
    """
    n = _threads if n is None else n
    if n < 0:
        raise ValueError(f"the number of threads must be >= 0, got {n}")
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)
