"""A griffe extension for the API pages: read flowvi's docstrings as the site renders them.

flowvi's docstrings are Google style with a few reST habits, which this extension translates
before griffe parses them, without changing the docstrings themselves:

- ``Example:`` sections hold the doctests. Griffe's Google parser knows only the plural,
  ``Examples:``, and reads the singular as an admonition, whose ``>>>`` lines Markdown would
  turn into nested block quotes; the heading is renamed.
- Sphinx roles (``:class:`~flowvi.flows.Layer```, ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``,
  ``:data:``, ``:exc:``) become cross-references to the API pages where the object is
  documented, and plain code where it is not (a torch class, say): autorefs' optional
  references, which never fail the strict build. A short name is looked up beside the object
  whose docstring it is in (its class for ``:meth:`` and ``:attr:``, else its module).
- ``:math:`...``` becomes inline code: the site loads no script from the network, so the TeX is
  shown as written.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
MATH = re.compile(r":math:`([^`]+)`")
MEMBER_ROLES = {"meth", "attr"}


def _scope(obj: griffe.Object, role: str) -> str:
    """Where a short name in ``obj``'s docstring is looked for."""
    if role in MEMBER_ROLES:
        owner = obj if obj.is_class else obj.parent
        if owner is not None and owner.is_class:
            return owner.path
    return obj.module.path if not obj.is_module else obj.path


def _reference(obj: griffe.Object, match: re.Match) -> str:
    role, short, name = match.groups()
    name = name.strip()
    top = name.split(".", 1)[0]
    if top in {"flowvi", "torch", "pyro", "numpy", "arviz"} or ("." in name and top[:1].isupper()):
        identifier = name if top[:1].islower() else f"{obj.module.path}.{name}"
    else:
        identifier = f"{_scope(obj, role)}.{name}"
    title = name.rsplit(".", 1)[-1] if short else name
    if role in {"func", "meth"}:
        title += "()"
    return (
        f'<autoref identifier="{html.escape(identifier)}" optional>'
        f"<code>{html.escape(title)}</code></autoref>"
    )


def translate(obj: griffe.Object, text: str) -> str:
    """``text``, a docstring of ``obj``, with the reST habits above made Markdown."""
    text = SINGULAR.sub(r"\1Examples:", text)
    text = ROLE.sub(lambda match: _reference(obj, match), text)
    return MATH.sub(lambda match: f"`` {match.group(1)} ``", text)


class ExampleSections(griffe.Extension):
    """Apply :func:`translate` to every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = translate(obj, obj.docstring.value)
