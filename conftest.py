"""Repository-wide pytest settings.

``python -m pytest`` runs ``tests/`` and the docstring examples of ``src/flowvi``
(``--doctest-modules``, see ``[tool.pytest.ini_options]`` in pyproject.toml). Collecting the
examples imports every module, so a module whose optional dependency is not installed is left
out here instead of failing the collection.
"""

from __future__ import annotations

import importlib.util

# module file (relative to this directory) -> the optional package it needs
OPTIONAL = {"src/flowvi/pyro.py": "pyro"}

collect_ignore = [
    path for path, package in OPTIONAL.items() if not importlib.util.find_spec(package)
]
