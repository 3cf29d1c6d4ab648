"""A griffe extension for the API pages: read flowvi's ``Example:`` docstring sections as
examples.

flowvi's docstrings head their doctests ``Example:``. Griffe's Google parser knows only the
plural, ``Examples:``, and reads the singular as an admonition, whose ``>>>`` lines Markdown
would turn into nested block quotes. Renaming the heading before parsing gives every example
its code block, with no change to the docstrings themselves.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = SINGULAR.sub(r"\1Examples:", obj.docstring.value)
