"""Runs on disk: JSON configuration and safetensors weights, written atomically; never pickle."""

from __future__ import annotations

import json
import os
import platform
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from flowvi.flows import NormalizingFlow, describe, rebuild

CONFIG, WEIGHTS = "config.json", "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"

# runs whose config.json names a model that is not a flow, and where their loader lives
_OTHER_MODELS = {
    "vae": "flowvi.vae.run.load_vae",
    "nlpca": "flowvi.vae.pca.load_nlpca",
}


class RunError(ValueError):
    """A run directory that cannot be loaded; the message names the file and what is wrong."""


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
    The file gets the usual permissions, ``0o666`` less the process's umask (``0o644`` under
    the common umask ``022``), not the ``0o600`` of ``tempfile.mkstemp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(path)
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 less the umask, as the kernel set it
        write(str(tmp))
        os.chmod(tmp, mode)  # a writer may have replaced the file (safetensors makes it 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_beside(path: Path) -> Path:
    """Create a new, empty, uniquely named file beside ``path`` with mode ``0o666`` (the kernel
    applies the umask), as ``mkstemp`` does with ``0o600``."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


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
        RunError: (a ``ValueError``) naming the file and what is wrong: a ``config.json`` that is
            not a JSON object (truncated or corrupt), one with no flow (a run of a command
            without one, or of a VAE: the message names its loader), a model entry that cannot
            be rebuilt, a missing or corrupt ``model.safetensors``, or weights that do not fit
            the model.
    """
    directory = Path(directory)
    config_path = directory / CONFIG
    if not config_path.exists():
        runs = sorted(p.parent.name for p in directory.glob(f"*/{CONFIG}"))
        hint = f"; it holds the runs {', '.join(runs)}: load one of them" if runs else ""
        raise FileNotFoundError(f"{directory} is not a flowvi run (no {CONFIG}){hint}")
    spec = _model_spec(config_path)
    try:
        flow = rebuild(spec)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RunError(
            f"{config_path}: its model entry cannot be rebuilt ({type(error).__name__}: {error})"
        ) from error
    weights_path = directory / WEIGHTS
    if not weights_path.exists():
        raise RunError(f"{weights_path} does not exist: the run has not saved its model yet")
    try:
        weights = load_file(weights_path, device=str(map_location))
    except SafetensorError as error:
        raise RunError(f"{weights_path} is not a readable safetensors file: {error}") from error
    saved_dtype = next((v.dtype for v in weights.values() if v.is_floating_point()), None)
    if saved_dtype is not None:  # a float64 run loads as float64
        flow = flow.to(saved_dtype)
    try:
        flow.load_state_dict(weights)
    except RuntimeError as error:
        raise RunError(
            f"{weights_path} does not hold the weights of the model in {CONFIG}: {error}"
        ) from error
    return flow.to(map_location).eval()


def _model_spec(config_path: Path) -> dict[str, Any]:
    """The ``model`` entry of a run's ``config.json``, a flow's description.

    Raises:
        RunError: naming ``config_path``, for a file that is not a JSON object or whose
            ``model`` is missing or not a flow.
    """
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunError(f"{config_path} is not valid JSON (truncated or corrupt): {error}") from None
    if not isinstance(config, dict):
        raise RunError(f"{config_path} holds a JSON {type(config).__name__}, not an object")
    spec = config.get("model")
    if isinstance(spec, str) and spec in _OTHER_MODELS:
        raise RunError(
            f"{config_path} is a {spec!r} run, not a flow: load it with {_OTHER_MODELS[spec]}"
        )
    if not isinstance(spec, dict):
        found = "no model entry" if spec is None else f"the model entry {spec!r}"
        raise RunError(
            f"{config_path} has {found}, not a flow: the run saved no model yet (killed early), "
            "or its command fits no flow"
        )
    return spec
