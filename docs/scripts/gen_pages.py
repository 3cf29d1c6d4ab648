"""Pages generated at build time (mkdocs-gen-files), so that they cannot drift from the code.

- ``cli.md``: the help of ``flowvi`` and of every subcommand, ``vae train/eval/gap`` included,
  rendered from the parser itself (``flowvi.app.cli.parser()``), at a fixed width of 82 columns.
- ``benchmarks.md``: ``benchmarks/RESULTS.md`` as it is, its image links pointed at copies of
  the pictures it shows (``assets/results/``).

Nothing here trains a model or reaches the network; it reads the parser and two files.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import mkdocs_gen_files

from flowvi.app.cli import parser as flowvi_parser

ROOT = Path(__file__).resolve().parents[2]
WIDTH = "82"  # argparse wraps at the terminal's width: fixed, to fit the page's column


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of ``parser`` by name, in the order they were added (none: empty)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices.items())
    return {}


def _help_block(parser: argparse.ArgumentParser) -> str:
    return "```text\n" + parser.format_help().rstrip() + "\n```\n"


def cli_reference() -> str:
    """The Markdown of the CLI reference page: one section per command and subcommand."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        root = flowvi_parser()
        lines = [
            "# CLI reference\n",
            "Generated when the site is built, from the parser of the `flowvi` command itself "
            "(`flowvi.app.cli.parser()`): each block below is exactly what `--help` prints. The "
            "[user guide](guide/fit.md) explains the commands with examples.\n",
            "## flowvi\n",
            _help_block(root),
        ]
        for name, command in _subcommands(root).items():
            lines += [f"## flowvi {name}\n", _help_block(command)]
            for action, sub in _subcommands(command).items():
                lines += [f"### flowvi {name} {action}\n", _help_block(sub)]
        return "\n".join(lines)
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


IMAGE = re.compile(r"\]\(results/([\w.-]+\.png)\)")


def benchmarks_page() -> tuple[str, list[str]]:
    """``benchmarks/RESULTS.md`` with its image links rewritten, and the images it names."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    images = IMAGE.findall(text)
    text = IMAGE.sub(r"](assets/results/\1)", text)
    title, _, rest = text.partition("\n")
    note = (
        "\n\n!!! note\n    This page is `benchmarks/RESULTS.md` of the repository, included when "
        "the site is built. The scripts that produce the records are in `benchmarks/`, the "
        "records in `benchmarks/results/`.\n"
    )
    return title + note + rest, images


with mkdocs_gen_files.open("cli.md", "w") as page:
    page.write(cli_reference())

markdown, pictures = benchmarks_page()
with mkdocs_gen_files.open("benchmarks.md", "w") as page:
    page.write(markdown)
for name in {*pictures, "vae_latent2d.png"}:  # the gallery shows the 2-D latent picture too
    with mkdocs_gen_files.open(f"assets/results/{name}", "wb") as copy:
        copy.write((ROOT / "benchmarks" / "results" / name).read_bytes())
