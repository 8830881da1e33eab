"""Griffe extension: read jaxrnn's docstrings, written in reStructuredText habits, as Markdown.

The docstrings follow the Google layout (``Args:`` / ``Returns:``) with a few
reStructuredText constructs that Markdown does not know; this extension rewrites them
for the API reference only (the source keeps them, and ``help()`` shows them as written):

* a paragraph ending in ``::`` followed by an indented block (``Example::``, equations,
  ``>>>`` sessions) becomes the paragraph ending in ``:`` and a fenced code block;
* a reStructuredText simple table (``====`` borders) is shown as preformatted text;
* ``:func:`~jaxrnn.x.f``` and the other roles become a cross-reference ``[`f`][jaxrnn.x.f]``
  when the target is a full ``jaxrnn.`` path (a target that does not exist then fails
  ``mkdocs build --strict``), and inline code otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

TABLE_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")
ROLE = re.compile(r":(?:func|class|mod|data|meth|attr|obj|exc|const):`(~?)([^`]+)`")


def _role(m: re.Match) -> str:
    short, target = m.group(1), m.group(2).strip()
    if target.endswith("()"):
        target = target[:-2]
    label = target.rsplit(".", 1)[-1] if short else target
    if target.startswith("jaxrnn."):
        return f"[`{label}`][{target}]"
    return f"`{label}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def convert(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if TABLE_BORDER.match(line):  # a simple table: top border, header rule, bottom border
            borders = [k for k in range(i, len(lines)) if TABLE_BORDER.match(lines[k])][:3]
            if len(borders) == 3:
                pad = " " * _indent(line)
                out += [pad + "```text", *lines[i:borders[2] + 1], pad + "```"]
                i = borders[2] + 1
                continue
        if line.rstrip().endswith("::") and not line.strip().startswith(">>>"):
            base = _indent(line)
            stripped = line.rstrip()[:-2].rstrip()
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block_start = j
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                j += 1
            block = lines[block_start:j]
            while block and not block[-1].strip():
                block.pop()
            if block:
                pad = " " * base
                if stripped.strip():
                    out.append(pad + stripped.strip() + ":")
                    out.append("")
                lang = "python" if any(b.strip().startswith(">>>") for b in block) else "text"
                cut = min(_indent(b) for b in block if b.strip())
                out.append(pad + "```" + lang)
                out.extend(pad + b[cut:] if b.strip() else "" for b in block)
                out.append(pad + "```")
                out.append("")
                i = j
                continue
        out.append(ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of the loaded package (see the module docstring)."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
