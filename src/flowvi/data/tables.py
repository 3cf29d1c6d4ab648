"""User data tables: ``.npy`` arrays and ``.csv`` files of numbers, read strictly.

Nothing is silently dropped or repaired: every problem (a NaN, a ragged row, a word among the
numbers, a constant column) is a ``ValueError`` naming the file and where the problem is. A
``.csv`` counts as an editor and a spreadsheet show it: line numbers and column numbers from 1,
with the column's name when the file has a header. An ``.npy`` array counts as numpy does: row
and column indices from 0, said so in the message.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SUFFIXES = (".npy", ".csv")


def read_table(path: str | Path) -> Tensor:
    r"""Read a table of real numbers, one example per row: float64 ``(n, d)``.

    ``.npy``: a 2-D array of a real (integer or floating) dtype, read without pickle.

    ``.csv``: one row per line, all rows with the same number of cells. The delimiter is a
    comma, else a semicolon, else a tab, else runs of whitespace (the first that occurs in the
    first non-blank line; ``np.savetxt``'s default is whitespace). A first line whose cells are
    all non-numeric is a header giving the column names (a leading ``#``, as ``np.savetxt``
    writes it, is removed). Blank lines carry no data and are skipped; every other line must be a
    full row of numbers.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from flowvi.data import read_table
        >>> directory = tempfile.TemporaryDirectory()
        >>> path = Path(directory.name) / "points.csv"
        >>> _ = path.write_text("height,weight\n1.62,55.0\n1.80,81.5\n1.75,70.2\n")
        >>> x = read_table(path)
        >>> x.shape, x.dtype
        (torch.Size([3, 2]), torch.float64)
        >>> directory.cleanup()

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file and the row (``.csv``: line number) or column, for an
            unknown suffix, an empty file or one with no data rows, fewer than 2 rows, a line that
            is neither a header nor a data row, a row with the wrong number of cells, a
            non-numeric cell, a NaN or infinite value, an ``.npy`` array that is not 2-D (giving
            its shape) or not real-valued, and a constant column (zero variance).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown table format {suffix!r}; give a .npy or .csv file")
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    if suffix == ".npy":
        x, header = _read_npy(path), None
    else:
        x, header = _read_csv(path)
    _check_columns(x, header, path, first=0 if suffix == ".npy" else 1)
    return torch.from_numpy(x)


def _read_npy(path: Path) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays, or not an .npy file at all
        raise ValueError(f"{path}: cannot read as a numeric .npy array ({err})") from err
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{path}: expected one array, found {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(
            f"{path}: expected a 2-D array (examples × columns), got shape {x.shape}"
            + (": reshape a single column to (n, 1)" if x.ndim == 1 else "")
        )
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{path}: expected real numbers, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{path}: the array is empty, shape {x.shape}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{path}: {int(bad.any(1).sum())} rows hold NaN or inf; the first is row index "
            f"{row}, column index {col} (0-based): {x[row, col]}"
        )
    return x


def _delimiter(line: str) -> str | None:
    for delimiter in (",", ";", "\t"):
        if delimiter in line:
            return delimiter
    return None  # whitespace


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not a header cell
    lines = text.splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise ValueError(f"{path}: the file is empty")
    delimiter = _delimiter(numbered[0][1])

    def cells(line: str) -> list[str]:
        if delimiter is None:
            return line.split()
        return [c.strip() for c in next(csv.reader([line], delimiter=delimiter))]

    header = None
    first_no, first = numbered[0]
    first_cells = cells(first.lstrip().removeprefix("#"))
    numeric = [_number(c) is not None for c in first_cells]
    if not any(numeric):
        header, numbered = first_cells, numbered[1:]
    elif not all(numeric):
        text_cells = [c for c, ok in zip(first_cells, numeric, strict=True) if not ok]
        raise ValueError(
            f"{path}, line {first_no}: mixes numbers and text ({text_cells[0]!r}), so it is "
            "neither a header (all names) nor a data row (all numbers)"
        )
    if not numbered:
        raise ValueError(f"{path}: a header ({', '.join(header or [])}) but no data rows")
    d = len(header) if header is not None else len(first_cells)
    lines = [line for _, line in numbered]
    if delimiter is None:
        rows = [line.split() for line in lines]
    else:
        rows = list(csv.reader(lines, delimiter=delimiter))
    for (line_no, _), row in zip(numbered, rows, strict=True):
        if len(row) != d:
            where = "the header" if header is not None else f"line {first_no}"
            raise ValueError(
                f"{path}, line {line_no}: {len(row)} cells, expected {d} as on {where}"
            )
    try:  # numpy parses strings as Python's float() does, in one vectorized pass
        x = np.array(rows, dtype=np.float64)
    except ValueError:
        for (line_no, _), row in zip(numbered, rows, strict=True):
            for j, cell in enumerate(row):
                if _number(cell) is None:
                    raise ValueError(
                        f"{path}, line {line_no}, column {j + 1}{_name(header, j)}: "
                        f"cannot read {cell.strip()!r} as a number"
                    ) from None
        raise
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(
            f"{path}, line {numbered[i][0]}, column {j + 1}{_name(header, j)}: "
            f"{rows[i][j].strip()!r} is not finite (NaN and inf are refused; "
            f"{int(bad.any(1).sum())} rows have one)"
        )
    return x, header


def _name(header: list[str] | None, j: int) -> str:
    return f" ({header[j]!r})" if header is not None else ""


def _check_columns(x: np.ndarray, header: list[str] | None, path: Path, *, first: int) -> None:
    """Refuse tables too small to standardize, and constant columns (zero variance); columns
    are numbered from ``first`` (1 in a .csv, 0 in an .npy)."""
    if x.shape[0] < 2:
        raise ValueError(f"{path}: {x.shape[0]} data row; at least 2 are needed")
    constant = np.flatnonzero((x == x[0]).all(0))
    if constant.size:
        j = int(constant[0])
        numbers = ", ".join(str(k + first) for k in constant.tolist())
        raise ValueError(
            f"{path}: column {j + first}{_name(header, j)} is constant (every value is "
            f"{x[0, j]:g}); a zero-variance column has no density: drop it "
            f"({constant.size} constant column(s): {numbers})"
        )


def read_arrays(path: str | Path, *, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Named arrays for a model's keyword arguments, read without pickle.

    ``.csv``: a table with a header; each column is an array ``(n,)`` named by its header cell.
    ``.npz``: each array under its name. ``.pt``: a dict of tensors (``torch.load`` with
    ``weights_only=True``). Floating arrays take ``dtype``; integer arrays (indices, counts)
    stay ``int64``; boolean arrays stay boolean.

    Raises:
        ValueError: for a missing file, another suffix, a CSV without a header, names that are
            not Python identifiers, a non-numeric array or NaN/inf in a floating one (named).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no data file {path}")
    if path.suffix == ".csv":
        x, header = _read_csv(path)
        if header is None:
            raise ValueError(f"{path}: a model's data needs a header naming each column")
        arrays = {name: x[:, j] for j, name in enumerate(header)}
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (ValueError, OSError) as error:
            raise ValueError(f"{path}: cannot read it as .npz without pickle: {error}") from None
    elif path.suffix == ".pt":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several kinds for a bad file
            raise ValueError(f"{path}: cannot read it as a dict of tensors: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of named tensors, got {type(data).__name__}")
        arrays = {str(k): torch.as_tensor(v).numpy() for k, v in data.items()}
    else:
        raise ValueError(f"{path}: model data must be .csv, .npz or .pt, not {path.suffix!r}")
    out = {}
    for name, array in arrays.items():
        if not name.isidentifier():
            raise ValueError(f"{path}: {name!r} is not a valid keyword argument name")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{path}: array {name!r} is not numeric ({array.dtype})")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{path}: array {name!r} holds NaN or inf")
        tensor = torch.as_tensor(np.ascontiguousarray(array))
        out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out
