"""Runs on disk: JSON configuration and safetensors weights, written atomically; never pickle."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from flowvi.flows import NormalizingFlow, build

CONFIG, WEIGHTS = "config.json", "model.safetensors"


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


def save(model: NormalizingFlow, directory: str | Path, model_config: Mapping[str, Any]) -> None:
    """Save a flow built by :func:`flowvi.flows.build` as ``config.json`` + ``model.safetensors``.

    Args:
        model: the flow.
        directory: the run directory (created if missing).
        model_config: the keyword arguments of :func:`flowvi.flows.build` that rebuild it
            (``flow``, ``d``, ``length``, ``base``). Other entries of an existing
            ``config.json`` are kept.
    """
    directory = Path(directory)
    config_path = directory / CONFIG
    config = read_json(config_path) if config_path.exists() else {}
    config["model"] = dict(model_config)
    write_json(config_path, config)
    write_tensors(directory / WEIGHTS, model.state_dict())


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
    spec = read_json(config_path)["model"]
    model = build(spec["flow"], spec["d"], length=spec["length"], base=spec["base"])
    model.load_state_dict(load_file(directory / WEIGHTS, device=str(map_location)))
    return model.to(map_location).eval()
