"""The ``flowvi`` command: one parser, its subcommands added by their modules (options
generated from each command's configuration dataclass, :mod:`flowvi.app.options`), and the
mapping of errors to messages and exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flowvi import __version__
from flowvi.app import cavi, density, estimators, fit, show, vae
from flowvi.threads import set_num_threads, training_threads
from flowvi.train import NonFiniteLossError, TrainingInterrupted

COMMANDS = (fit, density, estimators, cavi, vae, show)


def parser() -> argparse.ArgumentParser:
    """The parser of the ``flowvi`` command and all its subcommands."""
    main_parser = argparse.ArgumentParser(
        prog="flowvi", description="Variational inference with normalizing flows."
    )
    main_parser.add_argument("--version", action="version", version=f"flowvi {__version__}")
    commands = main_parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_command(commands)
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flowvi`` with ``argv`` (default: ``sys.argv[1:]``) and return its exit code: 0
    done, 2 a bad input or setting (the message names it; nothing on disk has changed), 3
    training stopped on non-finite values (the checkpoint keeps the last good state), 130
    interrupted (Ctrl-C; the message says how to resume). Usage errors (an unknown option, a
    value outside an option's choices) are argparse's: usage and message on standard error,
    code 2, returned like the others (``--help`` and ``--version`` return 0)."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as done:
        return 0 if done.code is None else int(done.code)
    try:
        threads = getattr(args, "threads", 1)
        if threads < 0:
            raise ValueError(f"--threads must be >= 0, got {threads}")
        set_num_threads(threads)
        with training_threads():  # the whole command, evaluation included, as training
            return args.run(args)
    except (ValueError, OSError) as error:  # OSError: a file in the way, a full disk, ...
        print(f"flowvi: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"flowvi: training stopped: {error}", file=sys.stderr)
        return 3
    except TrainingInterrupted as interrupt:
        again = ""
        if interrupt.path is not None:
            command = "vae train" if args.command == "vae" else args.command
            again = f"; continue it with: flowvi {command} --resume {interrupt.path.parent}"
        print(f"flowvi: {interrupt}{again}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("flowvi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
