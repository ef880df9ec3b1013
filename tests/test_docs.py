"""Every example in the README and in the public docstrings runs, and prints what it shows."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest

import fastloss

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


@pytest.fixture(autouse=True)
def numpy_default_printing():
    """Examples show NumPy's default printing, whatever other tests configured."""
    with np.printoptions(precision=8, floatmode="maxprec", linewidth=75, threshold=1000):
        yield


@pytest.mark.parametrize("name", fastloss.__all__)
def test_docstring_has_math_and_example_that_runs(name):
    func = getattr(fastloss, name)
    doc = func.__doc__ or ""
    assert "Examples" in doc and ">>>" in doc, f"{name} needs a runnable example"
    if not isinstance(func, type):  # exception classes have no parameters or returns
        assert "Parameters" in doc and "Returns" in doc, f"{name} needs a numpydoc docstring"
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(func, name, globs={"np": np, "fl": fastloss}):
        runner.run(test)
    assert runner.failures == 0, f"the example in {name}'s docstring does not print what it shows"


DOC_FILES = ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", DOC_FILES)
def test_markdown_examples_run(path):
    file = ROOT / path if path == "README.md" else ROOT / "docs" / path
    result = doctest.testfile(str(file), module_relative=False, optionflags=FLAGS)
    assert result.failed == 0
