"""Command-line options generated from the configuration dataclasses.

Each run command's settings are one frozen dataclass whose fields declare their help in
``field(metadata={"help": ...})``; :func:`config_options` turns every such field into an
option, so help, defaults and choices live in one place and ``--help`` shows them.
Standard-library :mod:`argparse` does the parsing: the generation needs about forty lines,
and a dependency such as jsonargparse would bring its own conventions (``--config`` files,
nested ``--a.b`` names) to a command line whose flags users already know.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from datetime import datetime
from pathlib import Path
from typing import Any


def config_options(parser: argparse.ArgumentParser, config: type) -> None:
    """One option per field of the configuration dataclass ``config`` that declares its help in
    ``field(metadata={"help": ...})``: the flag ``--field-name`` (or ``metadata["flag"]``, and
    ``metadata["aliases"]``), the type from the field's annotation (``int``, ``float``,
    ``str``; ``tuple[int, ...]`` as sizes like ``64,64``; ``bool`` as ``--x/--no-x``;
    ``tuple[Path, ...]`` as one or more paths), ``metadata["choices"]``, and the field's
    default shown in the help. Options not given stay absent from the namespace, so that the
    dataclass's own default applies (:func:`given`)."""
    hints = typing.get_type_hints(config)
    for f in fields(config):
        if "help" not in f.metadata:
            continue
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        kwargs: dict[str, Any] = {}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple and typing.get_args(kind)[0] is Path:
            kwargs.update(type=Path, nargs="+", metavar="DIR")
        elif typing.get_origin(kind) is tuple:
            kwargs["type"] = sizes
        elif kind in (int, float, Path):
            kwargs["type"] = kind
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
        if "flag" in f.metadata and kind is not bool:  # --model, not PYRO_MODEL
            kwargs["metavar"] = f.metadata["flag"].lstrip("-").upper().replace("-", "_")
        default = f.default if f.default is not MISSING else f.default_factory()
        parser.add_argument(
            f.metadata.get("flag", "--" + f.name.replace("_", "-")),
            *f.metadata.get("aliases", ()),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=f"{f.metadata['help']} (default: {default})",
            **kwargs,
        )


def given(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The fields of ``config`` given on the command line (``name: value``)."""
    return {f.name: getattr(args, f.name) for f in fields(config) if hasattr(args, f.name)}


def sizes(text: str) -> tuple[int, ...]:
    """``"64,64"`` as ``(64, 64)``; an argparse type."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,64, got {text!r}") from None


def command(
    commands: Any,
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    config: type | None = None,
    out: str | None = None,
    resume: str | None = None,
    threads: bool = False,
    quiet: bool = True,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` to ``commands`` (an argparse subparsers action), dispatching
    to ``run(args)``, with the options of ``config`` and the shared ones it asks for:
    ``--quiet`` (no progress bars), ``--out`` (a directory, default ``runs/<out>-<date>-<time>``),
    ``--resume DIR`` (``resume`` names the option that may extend a run, e.g. ``--iters``) and
    ``--threads``."""
    parser = commands.add_parser(name, help=help, description=description)
    if config is not None:
        config_options(parser, config)
    if out is not None:
        parser.add_argument(
            "--out", type=Path, default=None, help=f"directory (default: runs/{out}-<date>-<time>)"
        )
    if resume is not None:
        parser.add_argument(
            "--resume",
            type=Path,
            default=None,
            metavar="DIR",
            help=f"continue the run in DIR from its last checkpoint ({resume} may extend it)",
        )
    if threads:
        parser.add_argument(
            "--threads",
            type=int,
            default=1,
            help="CPU threads for torch, as flowvi.threads.set_num_threads (default: 1, the "
            "fastest for small flows, whose steps are many small operations; 0: torch's own "
            "default; results do not depend on it)",
        )
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
    return parser


def output(args: argparse.Namespace, prefix: str) -> Path:
    """The ``--out`` directory, or ``runs/<prefix>-<date>-<time>``."""
    return args.out or Path("runs") / datetime.now().strftime(f"{prefix}-%Y%m%d-%H%M%S")
