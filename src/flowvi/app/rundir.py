"""The run skeleton every training command shares.

A run directory goes through explicit states, each recorded atomically in ``status.json``
(:data:`flowvi.io.STATES`): ``created`` when its ``config.json`` is written (once, with the
model's description, after every check has passed: :func:`flowvi.io.run_directory`,
:func:`flowvi.io.check_checkpoint`, :func:`flowvi.io.check_iterations`,
:func:`flowvi.io.check_memory`), ``training`` while it trains (its checkpoints hold the
progress; a killed run stays ``training`` and resumes from its last checkpoint, or from
iteration 0 without one), then ``finished``, ``interrupted`` (Ctrl-C, once the checkpoint is
written) or ``failed`` (with the error).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowvi.io import (
    CHECKPOINT,
    check_checkpoint,
    check_iterations,
    checkpoint_iteration,
    save_weights,
    versions,
    write_config,
    write_status,
)
from flowvi.train import TrainingInterrupted


def record(config: Any, kind: str, device: torch.device, **facts: Any) -> dict[str, Any]:
    """What a run's ``config.json`` holds: the settings of the dataclass ``config``, the run's
    ``kind``, the device it resolved to, flowvi's, torch's and Python's versions, and
    ``facts`` (the data's sizes, the model's description)."""
    return asdict(config) | {
        "kind": kind,
        **facts,
        "resolved_device": str(device),
        "versions": versions(),
    }


@contextmanager
def training(
    directory: str | Path,
    config: Mapping[str, Any],
    *,
    resume: bool,
    changed: tuple[str, ...] = (),
    writes: bool = True,
) -> Iterator[None]:
    """Write the run's ``config.json`` (created once; on ``resume`` only the ``changed``
    entries), mark it ``training`` for the body, then ``finished``, ``interrupted`` or
    ``failed``. Call it after every check, when the run is about to change the disk.

    ``writes``: false for a data-parallel rank other than 0, which writes nothing.
    """
    if not writes:
        yield
        return
    write_config(directory, config, resume=resume, changed=changed)
    write_status(directory, "training")
    try:
        yield
    except (TrainingInterrupted, KeyboardInterrupt):
        path = Path(directory) / CHECKPOINT
        iteration = checkpoint_iteration(path) if path.exists() else None
        write_status(directory, "interrupted", iteration=iteration)
        raise
    except BaseException as error:
        write_status(directory, "failed", error=f"{type(error).__name__}: {error}")
        raise
    write_status(directory, "finished")


def check_resume(
    directory: str | Path,
    model: torch.nn.Module,
    *,
    iters: int,
    flag: str,
    per_epoch: int = 0,
    early_stopping: bool = False,
) -> None:
    """Check a ``--resume`` before anything on disk changes: the checkpoint (if any) is whole
    and fits ``model`` (:func:`flowvi.io.check_checkpoint`), and ``iters`` (``flag``'s value,
    in iterations; ``per_epoch`` for a run counted in epochs) is not below the iterations done.

    Raises:
        flowvi.io.RunError: for a checkpoint that is unreadable or does not fit ``model``.
        ValueError: for ``iters`` below the iterations done, naming the count.
    """
    done = check_checkpoint(directory, model, early_stopping=early_stopping)
    check_iterations(done, iters, directory=directory, flag=flag, per_epoch=per_epoch)


def save_final(model: torch.nn.Module, directory: str | Path, trace: Tensor) -> int:
    """Write the trained ``model.safetensors`` with the iterations done (those of the last
    checkpoint, else the finite entries of ``trace``), and return that count."""
    path = Path(directory) / CHECKPOINT
    done = (checkpoint_iteration(path) if path.exists() else None) or int(
        (~torch.isnan(trace)).sum()
    )
    save_weights(model, directory, iteration=done)
    return done
