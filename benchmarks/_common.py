"""Helpers shared by the benchmark scripts: one thread, strict JSON records that resume, and the
medians and number formats of their tables."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import torch


def one_thread() -> None:
    """Run torch on one thread (intra- and inter-op), so that timings do not depend on the
    number of cores or on what else the machine runs."""
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started
        pass


def finite(record: dict) -> dict:
    """NaN and ±inf as ``None``, so that the JSON is strict."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def load_records(path: Path) -> list[dict]:
    """The records of a results file, ``[]`` if there is none.

    Raises:
        ValueError: if the file does not hold a JSON list.
    """
    if not path.exists():
        return []
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path} does not hold a list of benchmark records")
    return records


def save_records(path: Path, records: list[dict]) -> None:
    """Write atomically: an interrupted write leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(records, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def median(group: list[dict], field: str) -> float:
    """The median of ``field`` over the records that have a finite value, NaN if none has."""
    values = [r[field] for r in group if r.get(field) is not None and math.isfinite(r[field])]
    return statistics.median(values) if values else math.nan


def fmt(value: float, spec: str) -> str:
    """``value`` formatted by ``spec`` (which may end in a unit "×"), or "n/a" for NaN."""
    spec, unit = spec.rstrip("×"), spec[len(spec.rstrip("×")) :]
    return "n/a" if math.isnan(value) else format(value, spec) + unit
