"""Runs on disk: JSON configuration and safetensors weights, written atomically; never pickle."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import secrets
import stat
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from flowvi.flows import NormalizingFlow, describe, rebuild

CONFIG, WEIGHTS = "config.json", "model.safetensors"
CHECKPOINT, STATUS = "checkpoint.safetensors", "status.json"

# a run's states, recorded in status.json: config written, nothing trained yet; training
# (checkpoints hold its progress; a killed run stays here); finished; stopped by Ctrl-C after
# its checkpoint; failed (the message says why)
STATES = ("created", "training", "finished", "interrupted", "failed")

# runs whose config.json names a model that is not a flow, and where their loader lives
_OTHER_MODELS = {
    "vae": "flowvi.vae.config.load_vae",
    "nlpca": "flowvi.vae.pca.load_nlpca",
}


class RunError(ValueError):
    """A run directory that cannot be loaded; the message names the file and what is wrong."""


class RunNotFoundError(RunError, FileNotFoundError):
    """A directory that holds no run (no ``config.json``): a :class:`RunError` (so a
    ``ValueError``) and a ``FileNotFoundError``."""


# what each command records as its run's "kind" in config.json, and the command that resumes it
KINDS = {
    "fit": "flowvi fit",
    "density": "flowvi density",
    "vae": "flowvi vae train",
    "nlpca": "flowvi vae train",
    "cavi": "flowvi cavi",
}


def run_kind(config: Mapping[str, Any]) -> str | None:
    """The kind of run a ``config.json`` describes: its ``"kind"`` entry, or for runs written
    before flowvi recorded it, inferred from its fields (``None`` when nothing fits)."""
    kind = config.get("kind")
    if isinstance(kind, str):
        return kind
    model = config.get("model")
    if model in ("vae", "nlpca"):
        return model
    if "target" in config and "beta0" in config:
        return "fit"
    if "valid_every" in config or "n_train" in config:
        return "density"
    if "restarts" in config and "method" in config:
        return "cavi"
    return None


def check_output(directory: str | Path) -> Path:
    """``directory`` as a ``Path``, refused if it is a file or lies under one.

    Raises:
        ValueError: naming the file in the way.
    """
    directory = Path(directory)
    for path in (directory, *directory.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == directory else f"lies under the file {path}"
            raise ValueError(f"--out {directory} {where}: choose a directory")
    return directory


def read_config(
    directory: str | Path, *, kind: str | Iterable[str] | None = None
) -> dict[str, Any]:
    """The ``config.json`` of a run directory, checked (nothing is written).

    Args:
        directory: the run directory.
        kind: the kind (or kinds) of run the caller accepts (see :data:`KINDS`); ``None``: any.

    Raises:
        RunError: (a ``ValueError``) naming the file: no ``config.json``, one that is not a JSON
            object (truncated, corrupt, ``[]``), one of no known kind or of another kind than
            ``kind`` (the message names the command that owns it).
    """
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise RunError(f"{directory} holds no flowvi run (no {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunError(f"{path} is not valid JSON (truncated or corrupt): {error}") from None
    except OSError as error:
        raise RunError(f"{path} cannot be read: {error}") from None
    if not isinstance(config, dict):
        raise RunError(f"{path} holds a JSON {type(config).__name__}, not an object")
    if kind is not None:
        wanted = (kind,) if isinstance(kind, str) else tuple(kind)
        found = run_kind(config)
        if found is None:
            raise RunError(f"{path} describes no flowvi run of a known kind ({', '.join(wanted)})")
        if found not in wanted:
            owner = KINDS.get(found, found)
            raise RunError(
                f"{path} is a {found!r} run ({owner}), not a {' or '.join(map(repr, wanted))} run"
            )
    return config


def run_directory(
    directory: str | Path,
    *,
    resume: bool = False,
    resumable: bool = True,
    kind: str | Iterable[str] | None = None,
) -> Path:
    """``directory`` as a ``Path``, checked before a run writes to it (nothing is written).

    A run to ``resume`` needs a ``config.json`` (of ``kind``, when given); its checkpoint may be
    missing (a run killed before its first checkpoint starts from iteration 0).

    Raises:
        ValueError: if ``directory`` is a file or lies under one; if it already holds a run (a
            ``config.json``) and ``resume`` is false (the message suggests ``--resume`` when the
            command is ``resumable``); if ``resume`` is true and it holds no run, or a run of
            another kind, or a ``config.json`` that is not a JSON object
            (:class:`RunError`).
    """
    directory = check_output(directory)
    if (directory / CONFIG).exists() and not resume:
        again = f"continue it with --resume {directory} or " if resumable else ""
        raise ValueError(f"{directory} already holds a run; {again}choose another --out")
    if resume:
        read_config(directory, kind=kind)
    return directory


def checkpoint_iteration(path: str | Path) -> int | None:
    """The iteration recorded in a safetensors file's metadata (``None``: none recorded).

    Raises:
        RunError: naming the file, if it is not a readable safetensors file.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise RunError(f"{path} is not a readable safetensors file: {error}") from None
    try:
        return int(metadata["iteration"]) if "iteration" in metadata else None
    except ValueError:
        raise RunError(f"{path} records the iteration {metadata['iteration']!r}") from None


def check_checkpoint(
    directory: str | Path, model: torch.nn.Module, *, early_stopping: bool = False
) -> int | None:
    """Check a run's ``checkpoint.safetensors`` against ``model`` before a resume writes anything.

    The whole file is read (a truncated one fails here), and its ``model/`` tensors must be
    exactly the model's state, name for name and shape for shape.

    Returns:
        the number of iterations done, or ``None`` if there is no checkpoint (the run was
        stopped before its first one, and starts again from iteration 0).

    Raises:
        RunError: (a ``ValueError``) naming the file: not a readable safetensors file
            (truncated or corrupt), no iteration or optimizer state recorded, tensors that do
            not fit the model, or (``early_stopping``) no validation state.
    """
    path = Path(directory) / CHECKPOINT
    if not path.exists():
        return None
    iteration = checkpoint_iteration(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise RunError(f"{path} is not a readable safetensors file: {error}") from None
    if iteration is None or "param_groups" not in metadata or "rng/cpu" not in tensors:
        raise RunError(f"{path} is not a flowvi checkpoint (no iteration or optimizer state)")
    saved = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    expected = model.state_dict()
    if saved.keys() != expected.keys():
        missing = sorted(expected.keys() - saved.keys())[:3]
        extra = sorted(saved.keys() - expected.keys())[:3]
        raise RunError(
            f"{path} does not hold the state of this run's model (missing {missing}, "
            f"unexpected {extra})"
        )
    for name, value in expected.items():
        if saved[name].shape != value.shape:
            raise RunError(
                f"{path}: {name} has shape {tuple(saved[name].shape)}, the model's is "
                f"{tuple(value.shape)}"
            )
    if early_stopping and "stop/valid_trace" not in tensors:
        raise RunError(f"{path} has no validation state (early stopping) to resume from")
    return iteration


def check_iterations(
    done: int | None, iters: int, *, directory: str | Path, flag: str, per_epoch: int = 0
) -> None:
    """Refuse to resume a run to fewer iterations than it has done.

    ``per_epoch``: iterations per epoch, for a run counted in epochs (``flag`` gives epochs,
    ``iters`` is ``epochs * per_epoch``); 0 for a run counted in iterations.

    Raises:
        ValueError: if ``iters < done``, naming the count done.
    """
    if done is None or iters >= done:
        return
    if per_epoch:
        epochs = -(-done // per_epoch)
        raise ValueError(
            f"{flag} {iters // per_epoch} is below the {epochs} epochs ({done} iterations) "
            f"already done in {directory}: give {flag} {epochs} or more (a run is never cut back)"
        )
    raise ValueError(
        f"{flag} {iters} is below the {done} iterations already done in {directory}: give "
        f"{flag} {done} or more (a run is never cut back)"
    )


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes of memory available for a new allocation on ``device`` (CPU: ``MemAvailable`` of
    ``/proc/meminfo``, else free physical pages), ``None`` where unknown."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: float, what: str, device: torch.device | None = None) -> None:
    """Refuse work whose estimated memory (``nbytes``, bytes) exceeds what is available.

    Raises:
        ValueError: naming ``what`` (e.g. ``"one batch of --batch-size 10000"``), the estimate
            and the memory available, in GiB.
    """
    available = available_memory(device)
    if available is not None and nbytes > available:
        raise ValueError(
            f"{what} needs about {nbytes / 2**30:.3g} GiB of memory, more than the "
            f"{available / 2**30:.3g} GiB available: choose smaller sizes"
        )


def versions() -> dict[str, str]:
    """The versions a run records in its ``config.json``: flowvi, torch, Python."""
    return {
        "flowvi": version("flowvi"),
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


def write_config(
    directory: str | Path,
    record: Mapping[str, Any],
    *,
    resume: bool = False,
    changed: Iterable[str] = (),
) -> None:
    """Write a run's ``config.json`` once, when the run is created (with its ``kind`` and, where
    it has one, its model's description, so that :func:`load` works from the first checkpoint),
    after its ``status.json`` says ``created``.

    On ``resume`` the saved file is kept, updated (atomically, and only if anything differs)
    with the ``changed`` entries of ``record`` (e.g. ``iters`` extended) and any of ``kind`` and
    ``model`` that it lacks (a run written by an older flowvi).
    """
    path = Path(directory) / CONFIG
    if not resume:  # the state first: a run's config.json never stands without its status
        write_status(directory, "created")
        write_json(path, record)
        return
    saved = read_config(directory)
    updated = dict(saved)
    for key in changed:
        updated[key] = record[key]
    for key in ("kind", "model"):
        if key in record and key not in saved:
            updated[key] = record[key]
    if updated != saved:
        write_json(path, updated)


def write_status(directory: str | Path, state: str, **info: Any) -> None:
    """Record a run's state (one of :data:`STATES`) in its ``status.json``, atomically, with
    the time and ``info`` (e.g. ``iteration``, ``error``).

    Raises:
        ValueError: for a state not in :data:`STATES`.
    """
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; one of {', '.join(STATES)}")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(Path(directory) / STATUS, {"state": state, "time": now, **info})


def read_status(directory: str | Path) -> dict[str, Any]:
    """A run's ``status.json`` (``{"state": ..., "time": ..., ...}``); ``{"state": None}`` for
    a run written before flowvi recorded states, or a file that cannot be read."""
    try:
        status = json.loads((Path(directory) / STATUS).read_text())
    except (OSError, ValueError):
        return {"state": None}
    return status if isinstance(status, dict) else {"state": None}


def write_csv(path: str | Path, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a table as CSV (a header line, then one line per row), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def save(flow: NormalizingFlow, directory: str | Path) -> None:
    """Save a flow as ``config.json`` (its structure) + ``model.safetensors`` (its weights).

    Any flow made of flowvi's bases and registered layers can be saved, built by hand or by
    :func:`flowvi.flows.build`. Other entries of an existing ``config.json`` are kept; it is
    rewritten (atomically) only when its model entry differs. A run of a ``flowvi`` command
    records its model when it is created and saves its weights with :func:`save_weights`.

    Raises:
        ValueError: if the flow has a base or layer that flowvi cannot rebuild by name.
    """
    spec = describe(flow)
    directory = Path(directory)
    config_path = directory / CONFIG
    config = read_json(config_path) if config_path.exists() else {}
    if config.get("model") != spec:
        config["model"] = spec
        write_json(config_path, config)
    write_tensors(directory / WEIGHTS, flow.state_dict())


def save_weights(model: torch.nn.Module, directory: str | Path, *, iteration: int) -> None:
    """Write a run's final ``model.safetensors`` (atomically), recording the ``iteration``
    (iterations done) that :func:`load` compares with the checkpoint's."""
    write_tensors(Path(directory) / WEIGHTS, model.state_dict(), {"iteration": str(iteration)})


def run_weights(directory: str | Path) -> tuple[dict[str, Tensor], str | None]:
    """The weights of a run's model: those of a finished run, or the model state of the last
    checkpoint of an unfinished one (a run killed or interrupted while training, or extended
    with ``--resume --iters`` and not yet finished).

    Returns:
        ``(state_dict, note)``: ``note`` is ``None`` for a finished run, else a sentence naming
        the checkpoint and its iteration (for a warning).

    Raises:
        RunError: (a ``ValueError``) naming the file, when there are no weights yet (the run
            was stopped before its first checkpoint) or the file to read is not a readable
            safetensors file.
    """
    directory = Path(directory)
    weights_path, checkpoint_path = directory / WEIGHTS, directory / CHECKPOINT
    finished = weights_path.exists()
    if finished and checkpoint_path.exists():
        done = checkpoint_iteration(weights_path)
        try:
            last = checkpoint_iteration(checkpoint_path)
        except RunError:  # a damaged checkpoint: the finished weights still load
            last = None
        finished = done is None or last is None or last <= done
    if finished:
        return _read_tensors(weights_path), None
    if not checkpoint_path.exists():
        raise RunError(f"{weights_path} does not exist: the run has not saved its model yet")
    tensors = _read_tensors(checkpoint_path)
    state = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    iteration = checkpoint_iteration(checkpoint_path)
    note = (
        f"{directory} is an unfinished run: loaded the last checkpoint ({checkpoint_path}, "
        f"iteration {iteration}); finish it with --resume {directory}"
    )
    return state, note


def _read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise RunError(f"{path} is not a readable safetensors file: {error}") from None


def load(directory: str | Path, *, map_location: str | torch.device = "cpu") -> Any:
    """Load the model of a run directory, in ``eval`` mode, ready to use.

    ``fit`` and ``density`` runs (and any directory written by :func:`save`) give their
    :class:`flowvi.NormalizingFlow`, rebuilt from ``config.json`` with the weights of
    ``model.safetensors`` (no unpickling; a ``float64`` run loads as ``float64``); a density
    run's flow takes data in data units. ``flowvi vae train`` runs give the trained
    :class:`flowvi.vae.VAE` (``--model nlpca``: the :class:`flowvi.vae.pca.NonlinearPCA`), on
    ``map_location``, in the run's dtype.

    An unfinished run (killed or interrupted while training) gives the model of its last
    checkpoint, with a ``UserWarning`` naming the checkpoint's iteration.

    Raises:
        RunNotFoundError: (a ``RunError`` and a ``FileNotFoundError``) if ``directory`` is not
            a run; when it holds several runs (a multi-target ``flowvi fit``), the message lists
            them.
        RunError: (a ``ValueError``) naming the file and what is wrong: a ``config.json`` that is
            not a JSON object (truncated or corrupt), one with no model (a run of a command
            without one, such as ``cavi``), a model entry that cannot be rebuilt, no weights
            yet (a run stopped before its first checkpoint), a corrupt ``model.safetensors`` or
            checkpoint, or weights that do not fit the model.
    """
    directory = Path(directory)
    config_path = directory / CONFIG
    if not config_path.exists():
        runs = sorted(p.parent.name for p in directory.glob(f"*/{CONFIG}"))
        hint = f"; it holds the runs {', '.join(runs)}: load one of them" if runs else ""
        raise RunNotFoundError(f"{directory} is not a flowvi run (no {CONFIG}){hint}")
    config = read_config(directory)
    if isinstance(config.get("model"), str) and config["model"] in _OTHER_MODELS:
        return _load_other(directory, config, map_location)
    spec = _model_spec(config_path, config)
    try:
        flow = rebuild(spec)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RunError(
            f"{config_path}: its model entry cannot be rebuilt ({type(error).__name__}: {error})"
        ) from error
    weights, note = run_weights(directory)
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=2)
    saved_dtype = next((v.dtype for v in weights.values() if v.is_floating_point()), None)
    if saved_dtype is not None:  # a float64 run loads as float64
        flow = flow.to(saved_dtype)
    try:
        flow.load_state_dict(weights)
    except RuntimeError as error:
        where = directory / (WEIGHTS if note is None else CHECKPOINT)
        raise RunError(
            f"{where} does not hold the weights of the model in {CONFIG}: {error}"
        ) from error
    return flow.to(map_location).eval()


def _load_other(directory: Path, config: dict[str, Any], map_location) -> torch.nn.Module:
    """The model of a VAE or nonlinear-PCA run (:data:`_OTHER_MODELS`), in eval mode."""
    import importlib

    module_name, _, name = _OTHER_MODELS[config["model"]].rpartition(".")
    loader = getattr(importlib.import_module(module_name), name)
    model, _ = loader(directory, device=str(map_location), unfinished=True)
    return model.eval()


def _model_spec(config_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` entry of a run's ``config.json``, a flow's description.

    Raises:
        RunError: naming ``config_path``, for a ``model`` that is missing or not a flow.
    """
    spec = config.get("model")
    if not isinstance(spec, dict):
        found = "no model entry" if spec is None else f"the model entry {spec!r}"
        raise RunError(
            f"{config_path} has {found}, not a flow: the run saved no model yet (killed early), "
            "or its command fits no flow"
        )
    return spec
