"""Helpers shared by the benchmark scripts: one thread, where a record was made (commit,
versions, machine), JSON Lines records that resume, and the medians and number formats of
their tables.

Records are JSON Lines: one compact JSON object per line, strict JSON (NaN and ±inf written
as ``null``). Each record made since the records moved to JSON Lines carries
:func:`provenance`: the git commit (``git rev-parse --short HEAD``, ``+dirty`` when ``src/``
or ``benchmarks/`` has uncommitted changes), the versions of flowvi, torch, Python and the
peer libraries compared, and the machine (CPU count, platform); records made before commits
were recorded hold ``"commit": null``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import torch

import flowvi

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("benchmarks/results")  # relative: scripts run from the repository root


def one_thread() -> None:
    """Run torch on one thread (intra- and inter-op), so that timings do not depend on the
    number of cores or on what else the machine runs."""
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started
        pass


def git_commit() -> str | None:
    """The repository's short commit, with ``+dirty`` when ``src/`` or ``benchmarks/`` has
    uncommitted changes; ``None`` outside a git checkout."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return run.stdout.strip()


def versions(*packages: str) -> dict[str, str | None]:
    """flowvi's, torch's and Python's versions, and those of the installed distributions
    ``packages`` (e.g. ``"zuko"``, ``"pyro-ppl"``; ``None`` where not installed)."""
    out: dict[str, str | None] = {
        "flowvi": flowvi.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def machine() -> dict[str, Any]:
    """The CPU count, platform, processor and torch's intra-op threads."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }


def provenance(*packages: str) -> dict[str, Any]:
    """``{"commit", "versions", "machine"}`` for a new record (see :func:`versions` for
    ``packages``): merge it into each record, ``record | provenance("zuko")``."""
    return {"commit": git_commit(), "versions": versions(*packages), "machine": machine()}


def finite(record: dict) -> dict:
    """NaN and ±inf as ``None``, so that the JSON is strict."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def load_records(path: Path) -> list[dict]:
    """The records of a JSON Lines results file, ``[]`` if there is none.

    Raises:
        ValueError: if a line does not hold a JSON object (naming the file and line).
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: not a benchmark record (a JSON object)")
        records.append(record)
    return records


def save_records(path: Path, records: list[dict]) -> None:
    """Write ``records`` as JSON Lines, atomically: an interrupted write leaves the previous
    file intact.

    Raises:
        ValueError: if a record holds NaN or ±inf (pass it through :func:`finite`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n" for record in records
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(lines)
    os.replace(tmp, path)


def median(group: list[dict], field: str) -> float:
    """The median of ``field`` over the records that have a finite value, NaN if none has."""
    values = [r[field] for r in group if r.get(field) is not None and math.isfinite(r[field])]
    return statistics.median(values) if values else math.nan


def fmt(value: float, spec: str) -> str:
    """``value`` formatted by ``spec`` (which may end in a unit "×"), or "n/a" for NaN."""
    spec, unit = spec.rstrip("×"), spec[len(spec.rstrip("×")) :]
    return "n/a" if math.isnan(value) else format(value, spec) + unit
