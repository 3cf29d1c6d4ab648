"""Objects named on the command line: ``module:name`` or ``path/to/file.py:name``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path


def load_object(spec: str, *, what: str = "object") -> object:
    """The object ``spec`` names: ``"package.module:name"`` (modules in the current directory
    are found, as ``python -m`` finds them) or ``"path/to/file.py:name"``.

    Raises:
        ValueError: for a spec without ``:``, a file or module that does not exist or fails to
            import (the message carries the error), or a missing name.
    """
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name:
        raise ValueError(f"{what} {spec!r} must be given as module:name or file.py:name")
    try:
        if location.endswith(".py"):
            path = Path(location)
            if not path.is_file():
                raise ValueError(f"{what} {spec!r}: no file {path}")
            module_name = f"_flowvi_user_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            cwd = str(Path.cwd())
            if cwd not in sys.path and "" not in sys.path:
                sys.path.insert(0, cwd)
            module = importlib.import_module(location)
    except ValueError:
        raise
    except Exception as error:  # the user's module failed to import: say where and why
        raise ValueError(
            f"cannot import {what} {spec!r}: {type(error).__name__}: {error}"
        ) from error
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"cannot import {what} {spec!r}: {location} has no {name!r}") from None
