"""benchmarks.common: JSON Lines records with where they were made; the committed records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmarks.common import finite, load_records, provenance, save_records

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_records_round_trip_as_one_compact_line_each(tmp_path):
    path = tmp_path / "r.jsonl"
    records = [{"a": 1, "b": [1.5, None]}, finite({"c": math.nan, "d": "x"})]
    save_records(path, records)
    lines = path.read_text().splitlines()
    assert lines == ['{"a":1,"b":[1.5,null]}', '{"c":null,"d":"x"}']
    assert load_records(path) == [{"a": 1, "b": [1.5, None]}, {"c": None, "d": "x"}]
    assert load_records(tmp_path / "none.jsonl") == []
    with pytest.raises(ValueError):
        save_records(path, [{"e": math.inf}])  # strict JSON: pass it through finite()
    assert load_records(path)[0] == {"a": 1, "b": [1.5, None]}  # the old file is intact


def test_load_names_the_line_that_is_not_a_record(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:3: not a benchmark record"):
        load_records(path)
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not JSON"):
        load_records(path)


def test_provenance_names_the_commit_versions_and_machine():
    made = provenance("numpy", "not-a-distribution")
    assert set(made) == {"commit", "versions", "machine"}
    assert made["commit"] is None or len(made["commit"].split("+")[0]) >= 7
    versions = made["versions"]
    assert {"flowvi", "torch", "python", "numpy"} <= set(versions)
    assert versions["not-a-distribution"] is None
    assert made["machine"]["cpus"] >= 1 and made["machine"]["platform"]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.jsonl")), ids=lambda p: p.name)
def test_committed_records_are_json_lines_with_a_commit_and_no_absolute_paths(path):
    records = load_records(path)
    assert records and all("commit" in r for r in records)
    assert not [s for r in records for s in _strings(r) if s.startswith(("/", "~"))]
    assert not list(RESULTS.glob("*.json"))  # the indented JSON lists are gone
    json.dumps(records, allow_nan=False)  # strict JSON
