"""``python -m fastloss``: each command in a subprocess, as a user runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastloss import _cli
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
    assert "... logsumexp forward 64x100 float32" in result.stderr  # progress, before each row
    document = json.loads(path.read_text())
    assert document["environment"]["versions"]["numba"]
    (row,) = document["results"]
    assert row["function"] == "logsumexp"
    assert row["shape"] == [64, 100] and row["dtype"] == "float32"
    assert row["elements"] == 6400 and row["bytes"] == 6400 * 4 + 64 * 4
    assert row["seconds"]["fastloss"] > 0 and row["seconds"]["numpy"] > 0
    assert row["vs_numpy"] == pytest.approx(row["seconds"]["numpy"] / row["seconds"]["fastloss"])
    assert row["gbps"] > 0


def test_bench_fused_times_value_and_gradient(tmp_path):
    path = tmp_path / "bench.json"
    result = run_cli(
        "bench", "--functions", "mse_loss", "--shapes", "64x100", "--dtypes", "float32",
        "--repeat", "1", "--fused", "--json", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    functions = [row["function"] for row in json.loads(path.read_text())["results"]]
    assert functions == ["mse_loss", "mse_loss_with_grad"]
    assert "mse_loss_with_grad" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("nonsense",),
        ("bench", "--shapes", "4096by32000"),
        ("bench", "--functions", "no_such_function"),
        ("bench", "--dtypes", "int8"),
        ("bench", "--repeat", "0"),
        ("selfcheck", "--functions", "no_such_function"),
        ("warmup", "--functions", "no_such_function"),
        ("coldstart", "--shape", "4096"),
        ("coldstart", "--repeat", "0"),
    ],
    ids=[
        "command", "shape", "function", "dtype", "repeat", "selfcheck-function",
        "warmup-function", "coldstart-shape", "coldstart-repeat",
    ],
)  # fmt: skip
def test_usage_error_exits_2(args):
    result = run_cli(*args, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage:" in result.stderr


def test_selfcheck_failure_exits_1(monkeypatch, capsys):
    # An impossible tolerance makes every comparison fail: the exit code must say so.
    monkeypatch.setitem(_cli.TOLERANCE, "float32", -1.0)
    monkeypatch.setitem(_cli.TOLERANCE, "float64", -1.0)
    assert _cli.main(["selfcheck", "--functions", "sigmoid"]) == _cli.EXIT_SELFCHECK_FAILED
    out = capsys.readouterr().out
    assert "FAIL" in out and out.rstrip().endswith("selfcheck: FAILED")


def test_warmup_shows_progress_per_case_and_dtype():
    result = run_cli("warmup", "--functions", "sigmoid")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for dtype in ("float32", "float64", "float16"):
        line = next(ln for ln in lines if ln.startswith(f"compiling sigmoid {dtype}..."))
        assert line.endswith(" s") or "skipped" in line, line  # the time it took
    assert lines[-1].startswith("warmup: done; ")


def test_coldstart_reports_every_figure(tmp_path):
    # Compiles one small serial kernel into a temporary cache: seconds, not minutes. Timings
    # are only reported, never asserted (a test on a shared machine cannot prove speed).
    path = tmp_path / "coldstart.json"
    result = run_cli(
        "coldstart", "--shape", "32x10", "--repeat", "1", "--json", str(path), timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    steps = ["cold run 1/1", "warm run 1/1", "numba_setup run 1/1"]
    labels = {
        "import numba": None,
        "import fastloss": "target <= 0.15 s",
        "first call, cold cache (compiles)": None,
        "first call, warm cache": "target <= 0.50 s",
        "of which Numba's one-time setup": None,
    }
    keys = {
        "import_numba", "import_fastloss", "cold_first_call", "warm_first_call", "numba_setup",
        "warm_first_call_without_scipy",
    }  # fmt: skip
    scipy_installed = importlib.util.find_spec("scipy") is not None
    if scipy_installed:  # then also measured as with fastloss's own dependencies only
        steps.append("warm_without_scipy run 1/1")
        labels["first call, warm cache, SciPy hidden"] = "target <= 0.50 s"
    for step in steps:
        assert f"... {step}" in result.stderr  # progress, before each fresh process
    lines = result.stdout.splitlines()
    for label, target in labels.items():
        line = next(ln for ln in lines if ln.strip().startswith(label))
        value = line.split(label, 1)[1].split()[0]  # "<label>  0.123 s ..."
        if not (value == "n/a" and "Numba" in label):  # timed via Numba's internals: may be n/a
            assert float(value) > 0, line
        assert target is None or target in line, line
    document = json.loads(path.read_text())
    assert document["shape"] == [32, 10] and document["function"] == "cross_entropy"
    seconds = document["seconds"]
    assert set(seconds) == keys
    assert (seconds["warm_first_call_without_scipy"] is not None) == scipy_installed
    if scipy_installed:  # the child really ran without it
        assert not any(run["scipy_imported"] for run in document["runs"]["warm_without_scipy"])
    assert all(value is None or value > 0 for value in seconds.values())
    assert document["targets"] == {
        "import_fastloss": 0.15, "warm_first_call": 0.5, "warm_first_call_without_scipy": 0.5,
    }  # fmt: skip


def test_bench_times_fast_calls_in_batches():
    calls = []
    seconds = _cli._best_time(lambda: calls.append(1), repeat=3, warm_up=True)
    assert 0 < seconds < 1e-3
    assert len(calls) > 4  # a no-op is timed in batches, not one call per sample
    calls.clear()
    # Without a warm-up, the first (sizing) call is a sample: a slow baseline costs no extra.
    _cli._best_time(lambda: calls.append(time.sleep(0.003)), repeat=1, warm_up=False)
    assert len(calls) == 1
