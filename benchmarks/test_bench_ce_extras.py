"""What cross_entropy's extras cost, and fused linear + cross-entropy.

Group ``cross_entropy_extras|4096x32000|float32`` times ``cross_entropy_with_grad`` (into a
reused ``out``) plain and with each extra: z-loss, softcap, returned lse, returned accuracy,
and all four; the ratio of each to "plain" is the extra's cost (issue target: <= 1.10).

Group ``linear_cross_entropy|8192x1024x32000|float32`` times
``linear_cross_entropy_with_grad`` against torch autograd of
``F.cross_entropy(x @ W.T, t)``; its peak memory is measured by
``benchmarks/linear_cross_entropy.py`` (fresh processes), which a smoke test runs here at a
tiny size.

Run::

    python -m pytest benchmarks/test_bench_ce_extras.py --benchmark-enable \
        --benchmark-columns=min,median --benchmark-sort=name

The group times one variant after another, so a change in the machine's load between them
reads as a cost; ``benchmarks/ce_extras_interleaved.py`` times them interleaved, round by
round, and is the one to quote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ce_extras_interleaved import EXTRAS  # the variants, defined once

import fastloss as fl

SHAPE, SMOKE_SHAPE = (4096, 32000), (8, 32000)
LINEAR, SMOKE_LINEAR = (8192, 1024, 32000), (64, 32, 500)


def _smoke(config) -> bool:
    # pyproject's addopts pass --benchmark-disable, so --benchmark-enable on the command line
    # leaves that option set: the run is timed when either says so (pytest-benchmark's rule).
    return config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")


@pytest.fixture(scope="module")
def logits_and_targets(request):
    smoke = _smoke(request.config)
    rows, classes = SMOKE_SHAPE if smoke else SHAPE
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, classes), dtype=np.float32) * np.float32(3)
    return x, rng.integers(0, classes, rows), np.empty_like(x)


@pytest.mark.parametrize("extra", list(EXTRAS))
def test_extras_cost(benchmark, logits_and_targets, extra):
    x, t, out = logits_and_targets
    kwargs = EXTRAS[extra]
    benchmark.group = "cross_entropy_extras|4096x32000|float32"
    benchmark.extra_info.update(
        table="throughput", function="cross_entropy_with_grad", shape="4096x32000",
        dtype="float32", implementation=f"fastloss-{extra}", bytes=2 * x.nbytes,
        elements=x.size,
    )
    fl.cross_entropy_with_grad(x, t, out=out, **kwargs)  # warm-up (JIT compile)
    result = benchmark(lambda: fl.cross_entropy_with_grad(x, t, out=out, **kwargs))
    plain = fl.cross_entropy(x, t, **{k: v for k, v in kwargs.items() if "return" not in k})
    np.testing.assert_allclose(result[0], plain, rtol=1e-5)


@pytest.fixture(scope="module")
def linear_problem(request):
    smoke = _smoke(request.config)
    rows, hidden, vocab = SMOKE_LINEAR if smoke else LINEAR
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, hidden), dtype=np.float32)
    w = rng.standard_normal((vocab, hidden), dtype=np.float32) / np.float32(hidden**0.5)
    return x, w, rng.integers(0, vocab, rows)


@pytest.mark.parametrize("impl", ["fastloss", "torch"])
def test_linear_cross_entropy(benchmark, request, linear_problem, impl):
    x, w, t = linear_problem
    benchmark.group = "linear_cross_entropy|8192x1024x32000|float32"
    benchmark.extra_info.update(
        table="throughput", function="linear_cross_entropy_with_grad",
        shape="8192x1024x32000", dtype="float32", implementation=impl,
        bytes=x.nbytes + w.nbytes, elements=x.shape[0] * w.shape[0],
    )
    if impl == "fastloss":

        def run():
            loss, gx, gw, _ = fl.linear_cross_entropy_with_grad(x, w, t)
            return loss, gx, gw

    else:
        torch = request.getfixturevalue("torch_module")
        xt, wt, tt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(t)

        def run():
            xi, wi = xt.detach().requires_grad_(True), wt.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(xi @ wi.T, tt)
            loss.backward()
            return loss.detach().numpy(), xi.grad.numpy(), wi.grad.numpy()

    run()  # warm-up
    loss, gx, gw = benchmark(run)
    want, want_gx, want_gw = fl.linear_cross_entropy_with_grad(x, w, t)[:3]
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    np.testing.assert_allclose(gx, want_gx, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(gw, want_gw, rtol=1e-3, atol=1e-7)


def test_linear_memory_script_runs():
    script = Path(__file__).with_name("linear_cross_entropy.py")
    done = subprocess.run(
        [sys.executable, str(script), "--rows", "256", "--hidden", "32", "--vocab", "300",
         "--repeat", "1"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    assert "time ratio torch / fastloss" in done.stdout, done.stdout + done.stderr
    assert "% of logits" in done.stdout


def test_interleaved_extras_script_runs():
    script = Path(__file__).with_name("ce_extras_interleaved.py")
    done = subprocess.run(
        [sys.executable, str(script), "--rounds", "1", "--shape", "8x300", "--threads", "1"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    for name in ("plain (again)", "z-loss", "softcap", "return_lse", "return_accuracy"):
        assert f"  {name} " in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("x plain") == 7
