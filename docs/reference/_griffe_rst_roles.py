"""A griffe extension for the API reference: reST roles in docstrings become links.

melange's docstrings name other objects the Sphinx way (``:class:`~melange.message.Message```,
``:meth:`stop```). Markdown has no such syntax, so mkdocstrings would print the role literally.
This rewrites each role, before the docstrings are parsed, into an *optional* mkdocs-autorefs
reference: a link when the target is rendered somewhere in the reference, plain code when it is
not (a private helper, say), so a role never breaks the strict build. A paragraph's closing
``::`` (reST's literal-block marker) becomes ``:``.

mkdocs.yml loads it through the python handler's ``extensions`` option; it is not a page
(``exclude_docs``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from functools import partial
from typing import Any

from griffe import Extension, GriffeLoader, Module, NameResolutionError, Object

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(?P<target>[^`\s]+)`")
# "text::" introduces a literal block in reST and reads "text:"; Markdown sees the indented block.
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)


class SphinxRolesToAutorefs(Extension):
    """Rewrite ``:role:`target``` in every docstring of a package once it is fully loaded."""

    def on_package(self, *, pkg: Module, loader: GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the docstrings of ``pkg`` and everything it defines."""
        for obj in _defined_objects(pkg):
            docstring = obj.docstring
            if docstring is not None and ":" in docstring.value:
                value = _ROLE.sub(partial(_reference, scope=obj), docstring.value)
                docstring.value = _LITERAL_MARKER.sub(":", value)


def _defined_objects(obj: Object) -> Iterator[Object]:
    """``obj`` and its members, recursively; aliases are skipped (their target is visited)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias and isinstance(member, Object):
            yield from _defined_objects(member)


def _reference(match: re.Match[str], scope: Object) -> str:
    """The Markdown for one role: an optional autoref, or code when the name is unknown."""
    target = match["target"]
    short = target.startswith("~")
    written = target.lstrip("~").lstrip(".")
    shown = written.rsplit(".", 1)[-1] if short else written
    path = _resolve(written, scope)
    code = f"<code>{html.escape(shown)}</code>"
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(name: str, scope: Object) -> str | None:
    """The full path ``name`` means in ``scope``; a dotted name not in scope is absolute."""
    first, _, rest = name.partition(".")
    try:
        resolved = scope.resolve(first)
    except NameResolutionError:
        return name if rest else None
    return f"{resolved}.{rest}" if rest else resolved
