"""A Griffe extension: fastloss's reStructuredText docstring markup, rendered as Markdown.

fastloss's docstrings are numpydoc, written for ``help()`` and Sphinx-style readers: math as
``:math:`...``` and ``.. math::`` blocks, cross-references as ``:func:`name```. mkdocstrings
renders docstrings as Markdown, so before they are parsed this extension rewrites:

* ``:math:`x``` into ``$x$`` and a ``.. math::`` block into a ``$$ ... $$`` block (rendered by
  ``pymdownx.arithmatex`` and MathJax, like the math of the hand-written pages);
* ``:func:`name``` / ``:func:`fastloss.name``` into a link to that function's API entry when
  ``name`` is public (in ``fastloss.__all__``), into inline code otherwise (``torch.*``);
* any other ``:role:`text``` into inline code;
* a ``Parameters`` section that only says ``None`` (a function without parameters) into
  nothing.

The docstrings themselves are not changed (``help()`` and the doctests see the originals).
Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``);
``tests/test_docs_site.py`` tests :func:`rst_to_markdown`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[2]


def public_names() -> frozenset[str]:
    """``fastloss.__all__``, read from the source (nothing is imported or compiled)."""
    tree = ast.parse((ROOT / "fastloss" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return frozenset(ast.literal_eval(node.value))
    return frozenset()


_ROLE = re.compile(r":(?P<role>[a-z]+):`(?P<text>[^`]+)`", re.DOTALL)
_NO_PARAMETERS = re.compile(r"^Parameters\n-+\n[ \t]*None[ \t]*\n(?:[ \t]*\n)*", re.MULTILINE)
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*$")


def _math_blocks(text: str) -> str:
    """``.. math::`` + an indented block -> ``$$`` + the block + ``$$``, at the same indent."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match["indent"]
        i += 1
        body: list[str] = []
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= len(indent):
                break
            body.append(line)
            i += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        margin = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        if out and out[-1].strip():
            out.append("")
        out.append(indent + "$$")
        out += [indent + b[margin:] if b.strip() else "" for b in body]
        out.append(indent + "$$")
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def rst_to_markdown(text: str, public: frozenset[str] | set[str] = frozenset()) -> str:
    """The Markdown that renders ``text``'s reStructuredText math and roles (see the module)."""

    def role(match: re.Match) -> str:
        name, content = match["role"], match["text"]
        if name == "math":
            return "$" + " ".join(content.split()) + "$"
        target = content.removeprefix("~").strip()
        short = target.removeprefix("fastloss.")
        if name in ("func", "class", "obj", "meth") and short in public:
            return f"[`{short}`][fastloss.{short}]"
        return f"`{target}`"

    return _ROLE.sub(role, _math_blocks(_NO_PARAMETERS.sub("", text)))


class RstToMarkdown(griffe.Extension):
    """Rewrites every docstring of the loaded objects with :func:`rst_to_markdown`."""

    def __init__(self) -> None:
        super().__init__()
        self.public = public_names()

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value, self.public)
