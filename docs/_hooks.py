"""MkDocs hook: the docstrings' reStructuredText habits rendered as Markdown means them.

The package's docstrings are read by people in editors and by ``help()`` as much as on the
site, so they keep Python's usual spellings; this hook adds a Markdown extension (applied to
the pages and to mkdocstrings' docstrings alike) that renders them:

- a Sphinx role (``:class:`~ailab_async.X```) as inline code, ``~a.b.C`` showing ``C``; a
  fully qualified target becomes an *optional* autorefs link: a link when the API reference
  documents it, plain code when it does not (a private helper, the standard library), so a
  role never breaks the strict build;
- a doctest (lines from ``>>>`` to the next blank line) as a ``pycon`` code block, not as
  nested quotes;
- a paragraph ending in ``::`` (a literal block follows, indented) with one colon.

Loaded by ``hooks:`` in ``mkdocs.yml``.
"""

from __future__ import annotations

import html
import re
from typing import Any

from markdown import Markdown
from markdown.extensions import Extension
from markdown.inlinepatterns import InlineProcessor
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

__all__ = ["SphinxRolesExtension", "on_config", "role_html", "rst_blocks"]

_ROLE = r":(?:class|func|meth|mod|attr|exc|data|obj|const):`(~?)([\w.]+)(?:\(\))?`"


def role_html(tilde: str, target: str) -> str:
    """The HTML for one role: code, wrapped in an optional reference when qualified.

    >>> role_html("~", "ailab_async.errors.AILabError")
    '<autoref optional identifier="ailab_async.errors.AILabError"><code>AILabError</code></autoref>'
    >>> role_html("", ".models")
    '<code>.models</code>'
    """
    shown = target.rsplit(".", 1)[-1] if tilde else target
    code = f"<code>{html.escape(shown)}</code>"
    if not target.startswith("ailab_async."):
        return code
    return f'<autoref optional identifier="{html.escape(target)}">{code}</autoref>'


class _RoleProcessor(InlineProcessor):
    def handleMatch(self, m: re.Match[str], data: str) -> tuple[str, int, int]:
        placeholder = self.md.htmlStash.store(role_html(m.group(1), m.group(2)))
        return placeholder, m.start(0), m.end(0)


_FENCES = ("```", "~~~")


def rst_blocks(lines: list[str]) -> list[str]:
    """Doctests fenced as ``pycon``, ``::`` endings shortened; fenced code left alone.

    >>> rst_blocks(["Say::", "", ">>> 1 + 1", "2", "", "text"])
    ['Say:', '', '', '```pycon', '>>> 1 + 1', '2', '```', '', '', 'text']
    """
    out: list[str] = []
    in_fence = False
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith(_FENCES):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith(">>>"):
            block = []
            while index < len(lines) and lines[index].strip():
                block.append(lines[index])
                index += 1
            out += ["", f"{indent}```pycon", *block, f"{indent}```", ""]
            continue
        elif not in_fence and stripped.endswith("::"):
            line = line[:-1]
        out.append(line)
        index += 1
    return out


class _RstBlocks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return rst_blocks(lines)


class SphinxRolesExtension(Extension):
    """Markdown extension: Sphinx roles, doctests and ``::`` as Markdown renders them."""

    def extendMarkdown(self, md: Markdown) -> None:
        # Above backticks (190): the role's own code span must not be taken first.
        md.inlinePatterns.register(_RoleProcessor(_ROLE, md), "sphinx_roles", 200)
        # Before the fenced-code preprocessors (superfences: 25), which must see the fences.
        md.preprocessors.register(_RstBlocks(md), "rst_blocks", 40)


@event_priority(100)  # before mkdocstrings reads the extension list
def on_config(config: Any) -> Any:
    """Add the extension to the site's Markdown extensions."""
    config.markdown_extensions.append(SphinxRolesExtension())
    return config
