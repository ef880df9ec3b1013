"""Shared test configuration: the optional-torch policy, NumPy printing, hypothesis profiles.

torch is optional. Every comparison with torch goes through ``require_torch()`` (or the
``torch`` fixture, which calls it): without torch such a test is skipped, unless the
environment variable ``FASTLOSS_REQUIRE_TORCH=1`` is set (as in CI), in which case it fails,
so that a broken torch install can never silently turn the conformance suite into a no-op.
Tests that use the fixture are marked ``torch`` automatically (``-m "not torch"`` deselects
them).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

REQUIRE_TORCH_ENV = "FASTLOSS_REQUIRE_TORCH"

# Failure messages show every digit that matters, and whole small arrays.
np.set_printoptions(precision=17, floatmode="maxprec", linewidth=120, threshold=200)

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is a test extra
    pass
else:
    # "ci": no per-example deadline (the first call of a kernel compiles it) and a bounded
    # number of examples so that property tests stay cheap. "dev" explores more.
    settings.register_profile(
        "ci",
        deadline=None,
        max_examples=30,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("dev", deadline=None, max_examples=300)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def torch_required() -> bool:
    """True when the environment demands that torch comparisons run (FASTLOSS_REQUIRE_TORCH=1)."""
    return os.environ.get(REQUIRE_TORCH_ENV, "").strip() == "1"


def require_torch():
    """The ``torch`` module; skips the calling test without it (fails if torch is required)."""
    try:
        import torch
    except ImportError as exc:
        message = f"torch is not importable ({exc})"
    else:
        return torch
    if torch_required():
        pytest.fail(
            f"{message}, but {REQUIRE_TORCH_ENV}=1 requires the torch comparisons to run; "
            f"install the pinned torch (pip install 'fastloss[torch]') or unset "
            f"{REQUIRE_TORCH_ENV}",
            pytrace=False,
        )
    pytest.skip(f"{message}; set {REQUIRE_TORCH_ENV}=1 to make this a failure")


@pytest.fixture
def torch():
    """The torch module, through ``require_torch()``."""
    return require_torch()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "torch" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)
