"""The documentation site: every public name in the API reference, every page in the nav,
the landing page's commands equal to the README's, code blocks that run, the docstring
conversion of docs/_ext/griffe_rst.py, and the vendoring recipe of docs/deployment.md.

(The examples themselves run in tests/test_docs.py; CI builds the site with
``mkdocs build --strict``.)
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastloss

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")

# Code blocks shown but not run, each with the reason (any other python block needs >>>).
NOT_RUN = {
    ("dask.md", "from dask.distributed import Client, LocalCluster"): "needs a cluster",
}


def _fences(text: str):
    """(language, body) of every fenced code block, indented ones included."""
    pattern = r"^[ \t]*```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^[ \t]*```"
    for match in re.finditer(pattern, text, re.MULTILINE | re.DOTALL):
        yield match["lang"], textwrap.dedent(match["body"])


def _nav_pages() -> list[str]:
    """The .md paths of mkdocs.yml's nav (``- Title: page.md`` or ``- page.md`` lines)."""
    nav = MKDOCS.split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w/.-]+\.md)\s*$", nav, re.MULTILINE)


def _site_pages() -> list[str]:
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    return [p for p in pages if not p.startswith("_")]  # docs/_ext is excluded from the site


def test_api_reference_lists_every_public_name_once():
    entries = re.findall(r"^::: fastloss\.(\w+)\s*$", (DOCS / "api.md").read_text(), re.M)
    assert sorted(entries) == sorted(fastloss.__all__)
    assert len(entries) == len(set(entries))


def test_nav_lists_every_page_and_only_existing_ones():
    nav = _nav_pages()
    assert sorted(nav) == _site_pages()
    assert len(nav) == len(set(nav))


def test_migration_table_names_every_public_function():
    text = (DOCS / "migration.md").read_text()
    missing = [name for name in fastloss.__all__ if f"fl.{name}" not in text]
    assert missing == [], f"docs/migration.md does not mention {missing}"


def test_landing_page_has_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up, run, test", 1)[1]
    commands = next(body for lang, body in _fences(setup) if lang == "bash")
    assert commands.strip() in (DOCS / "index.md").read_text()


@pytest.mark.parametrize("page", ["README.md", *_site_pages()])
def test_python_blocks_are_doctests(page):
    """A ``python`` block is an example, and examples run: as a ``>>>`` session (test_docs)."""
    path = ROOT / page if page == "README.md" else DOCS / page
    for lang, body in _fences(path.read_text()):
        if lang not in ("python", "py", "pycon") or ">>>" in body:
            continue
        first = body.strip().splitlines()[0]
        assert (Path(page).name, first) in NOT_RUN, (
            f"{page}: a python block without >>> never runs as a test; make it a doctest or a "
            f"text block: {first!r}"
        )


# ---------------------------------------------------------------------------------------------
# docs/_ext/griffe_rst.py: the docstrings' reStructuredText, as Markdown


@pytest.fixture(scope="module")
def griffe_rst():
    pytest.importorskip("griffe", reason="the docs extra is not installed")
    spec = importlib.util.spec_from_file_location("griffe_rst", DOCS / "_ext" / "griffe_rst.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extension_reads_the_public_names(griffe_rst):
    assert griffe_rst.public_names() == frozenset(fastloss.__all__)


def test_math_roles_and_blocks_become_arithmatex(griffe_rst):
    text = textwrap.dedent(
        r"""
        With :math:`\operatorname{lse}_i =
        \log\sum_c e^{x_{ic}}` per row,

        .. math::

            \ell_i = \operatorname{lse}_i - x_{i t_i}

        and more.

        Parameters
        ----------
        x : array_like
            Scaled by

            .. math::

                2 x
        """
    )
    converted = griffe_rst.rst_to_markdown(text)
    assert r"$\operatorname{lse}_i = \log\sum_c e^{x_{ic}}$ per row" in converted
    assert "\n$$\n\\ell_i = \\operatorname{lse}_i - x_{i t_i}\n$$\n\nand more." in converted
    assert "    Scaled by\n\n    $$\n    2 x\n    $$" in converted
    assert ".. math::" not in converted and ":math:" not in converted


def test_cross_references_link_public_names_only(griffe_rst):
    public = {"nll_loss", "cross_entropy"}
    converted = griffe_rst.rst_to_markdown(
        "As :func:`nll_loss`, see :func:`fastloss.cross_entropy`, "
        ":func:`torch.nn.functional.softmax`, :func:`_private` and :class:`numpy.ndarray`.",
        public,
    )
    assert converted == (
        "As [`nll_loss`][fastloss.nll_loss], see [`cross_entropy`][fastloss.cross_entropy], "
        "`torch.nn.functional.softmax`, `_private` and `numpy.ndarray`."
    )


def test_empty_parameters_section_is_dropped(griffe_rst):
    text = "Summary.\n\nParameters\n----------\nNone\n\nReturns\n-------\nint\n    A count.\n"
    converted = griffe_rst.rst_to_markdown(text)
    assert converted == "Summary.\n\nReturns\n-------\nint\n    A count.\n"


# ---------------------------------------------------------------------------------------------
# docs/deployment.md: vendoring


@pytest.mark.slow
def test_vendored_copy_works_under_another_package_name(tmp_path):
    vendor = tmp_path / "myproject" / "_vendor"
    shutil.copytree(
        ROOT / "fastloss", vendor / "fastloss", ignore=shutil.ignore_patterns("__pycache__")
    )
    for package in (tmp_path / "myproject", vendor):
        (package / "__init__.py").write_text("")
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from myproject._vendor import fastloss as fl
        loss = fl.cross_entropy(np.array([[1.0, 2.0, 3.0]]), np.array([2]))
        print(round(float(loss), 4), "fastloss" in sys.modules)
        """
    )
    env = {**os.environ, "FASTLOSS_CACHE": "0", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.4076", "False"]
