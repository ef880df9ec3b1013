"""Fixtures and pytest-benchmark hooks shared by the benchmark modules.

The hooks add what ``benchmarks/report.py`` needs for its footer to the JSON written by
``--benchmark-json``: the CPU model and core count, the library versions, the Numba thread
count and threading layer, and the exact pytest command.
"""

from __future__ import annotations

import importlib
import os
import platform
import shlex
import sys

import numba
import numpy as np
import pytest

from fastloss._threads import get_num_threads, threading_layer


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(module_name: str) -> str | None:
    try:
        return importlib.import_module(module_name).__version__
    except ImportError:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastloss"] = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "numba_threads": get_num_threads(),  # fastloss's count (FASTLOSS_NUM_THREADS)
        "threading_layer": threading_layer(),
        "versions": {
            "python": platform.python_version(),
            "fastloss": _version("fastloss"),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "llvmlite": _version("llvmlite"),
            # Only reported when a benchmark already imported them (never imported here).
            "torch": sys.modules["torch"].__version__ if "torch" in sys.modules else None,
            "scipy": _version("scipy") if "scipy" in sys.modules else None,
        },
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    args = shlex.join(config.invocation_params.args)
    output_json["fastloss_command"] = f"python -m pytest {args}".rstrip()


@pytest.fixture(scope="session")
def torch_module():
    """torch with as many intra-op threads as Numba uses (a fair comparison), or a skip."""
    try:
        import torch
    except ImportError:
        if os.environ.get("FASTLOSS_REQUIRE_TORCH") == "1":
            pytest.fail("FASTLOSS_REQUIRE_TORCH=1 but torch is not importable")
        pytest.skip("torch is not installed")
    torch.set_num_threads(get_num_threads())
    return torch


@pytest.fixture(scope="session")
def scipy_special():
    return pytest.importorskip("scipy.special")
