"""Runs on disk: JSON configuration and safetensors weights, written atomically; never pickle."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from flowvi.flows import NormalizingFlow, describe, rebuild

CONFIG, WEIGHTS = "config.json", "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"


def run_directory(directory: str | Path, *, resume: bool = False, resumable: bool = True) -> Path:
    """``directory`` as a ``Path``, checked before a run writes to it.

    Raises:
        ValueError: if it already holds a run (a ``config.json``) and ``resume`` is false (the
            message suggests ``--resume`` when the command is ``resumable``), or if ``resume``
            is true and it has no checkpoint to resume from.
    """
    directory = Path(directory)
    if (directory / CONFIG).exists() and not resume:
        again = f"continue it with --resume {directory} or " if resumable else ""
        raise ValueError(f"{directory} already holds a run; {again}choose another --out")
    if resume and not (directory / CHECKPOINT).exists():
        raise ValueError(f"cannot resume {directory}: it has no {CHECKPOINT}")
    return directory


def versions() -> dict[str, str]:
    """The versions a run records in its ``config.json``: flowvi, torch, Python."""
    import flowvi  # the package's own version; imported here, as flowvi imports this module

    return {
        "flowvi": flowvi.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A reader (or a crash) sees either the old file or the complete new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_tensors(
    path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write tensors to a safetensors file, atomically."""
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=dict(metadata or {})))


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def save(flow: NormalizingFlow, directory: str | Path) -> None:
    """Save a flow as ``config.json`` (its structure) + ``model.safetensors`` (its weights).

    Any flow made of flowvi's bases and registered layers can be saved, built by hand or by
    :func:`flowvi.flows.build`. Other entries of an existing ``config.json`` are kept.

    Raises:
        ValueError: if the flow has a base or layer that flowvi cannot rebuild by name.
    """
    spec = describe(flow)
    directory = Path(directory)
    config_path = directory / CONFIG
    config = read_json(config_path) if config_path.exists() else {}
    config["model"] = spec
    write_json(config_path, config)
    write_tensors(directory / WEIGHTS, flow.state_dict())


def load(directory: str | Path, *, map_location: str | torch.device = "cpu") -> NormalizingFlow:
    """Load the fitted flow of a run directory, ready to ``sample`` and ``log_prob``.

    Rebuilds the model from ``config.json`` and reads the weights from ``model.safetensors``
    (no unpickling). The model is returned in ``eval`` mode.

    Raises:
        FileNotFoundError: if ``directory`` is not a run; when it holds several runs (a multi-target
            ``flowvi fit``), the message lists them.
    """
    directory = Path(directory)
    config_path = directory / CONFIG
    if not config_path.exists():
        runs = sorted(p.parent.name for p in directory.glob(f"*/{CONFIG}"))
        hint = f"; it holds the runs {', '.join(runs)}: load one of them" if runs else ""
        raise FileNotFoundError(f"{directory} is not a flowvi run (no {CONFIG}){hint}")
    flow = rebuild(read_json(config_path)["model"])
    weights = load_file(directory / WEIGHTS, device=str(map_location))
    saved_dtype = next((v.dtype for v in weights.values() if v.is_floating_point()), None)
    if saved_dtype is not None:  # a float64 run loads as float64
        flow = flow.to(saved_dtype)
    flow.load_state_dict(weights)
    return flow.to(map_location).eval()
