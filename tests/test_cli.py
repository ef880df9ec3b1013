"""``python -m fastloss``: each command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastloss._registry import CASES

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "fastloss", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_info_reports_versions_threads_cpu_and_cache():
    result = run_cli("info", timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for word in ("fastloss", "numpy", "numba", "llvmlite", "threads", "SIMD", "cache"):
        assert word in out, out
    assert "layer" in out and "not initialized" not in out


def test_selfcheck_passes_every_case_both_ways():
    # Compiles every kernel when the cache is cold (CI runs `python -m fastloss` first).
    result = run_cli("selfcheck", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "FAIL" not in out
    for name in CASES:
        assert f"compiling {name} float32..." in out
        for dtype in ("float32", "float64"):
            for direction in ("forward", "backward"):
                line = next(
                    (ln for ln in out.splitlines() if ln.split()[:3] == [name, dtype, direction]),
                    None,
                )
                assert line is not None and line.endswith("PASS"), (name, dtype, direction)


def test_bench_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    result = run_cli(
        "bench", "--functions", "logsumexp", "--shapes", "64x100", "--dtypes", "float32",
        "--repeat", "1", "--json", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "logsumexp" in result.stdout and "vs numpy" in result.stdout
    document = json.loads(path.read_text())
    assert document["environment"]["versions"]["numba"]
    (row,) = document["results"]
    assert row["function"] == "logsumexp"
    assert row["shape"] == [64, 100] and row["dtype"] == "float32"
    assert row["elements"] == 6400 and row["bytes"] == 6400 * 4 + 64 * 4
    assert row["seconds"]["fastloss"] > 0 and row["seconds"]["numpy"] > 0
    assert row["vs_numpy"] == pytest.approx(row["seconds"]["numpy"] / row["seconds"]["fastloss"])
    assert row["gbps"] > 0


@pytest.mark.parametrize(
    "args",
    [
        ("nonsense",),
        ("bench", "--shapes", "4096by32000"),
        ("bench", "--functions", "no_such_function"),
        ("bench", "--dtypes", "int8"),
        ("bench", "--repeat", "0"),
    ],
    ids=["command", "shape", "function", "dtype", "repeat"],
)
def test_usage_error_exits_2(args):
    result = run_cli(*args, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage:" in result.stderr
