"""Runtime safety: many Python threads, fork, every threading layer, and a side-effect-free import.

Each subprocess is bounded by a timeout, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastloss as fl

pytestmark = pytest.mark.slow

TIMEOUT = 240


def _run_python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )


def _mixed_calls(rng):
    """(function, args) pairs of mixed functions and shapes, large enough to go parallel."""
    x = rng.standard_normal((256, 1000)).astype(np.float32)
    t = rng.integers(0, 1000, 256)
    s = rng.standard_normal((4, 5, 64, 64))
    st = rng.integers(0, 5, (4, 64, 64))
    return [
        (fl.log_softmax, (x, 1)),
        (fl.logsumexp, (x, 1)),
        (fl.softmax, (s, 1)),
        (fl.cross_entropy, (x, t)),
        (fl.cross_entropy_with_grad, (s, st)),
        (fl.cross_entropy_backward, (1.0, x, t)),
        (fl.sigmoid, (x,)),
    ]


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_same(u, v) for u, v in zip(a, b, strict=True))
    return np.array_equal(a, b, equal_nan=True)


def test_many_threads_give_the_serial_results():
    calls = _mixed_calls(np.random.default_rng(0))
    expected = [f(*args) for f, args in calls]
    failures = []

    def worker(seed):
        order = np.random.default_rng(seed).permutation(len(calls))
        for _ in range(8):
            for i in order:
                f, args = calls[i]
                if not _same(f(*args), expected[i]):
                    failures.append(f.__name__)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert failures == []


@pytest.mark.parametrize("layer", ["workqueue", "omp", "default"])
def test_concurrent_calls_survive_every_threading_layer(layer):
    result = _run_python(
        """
        import threading, numpy as np, fastloss as fl
        x = np.random.default_rng(0).standard_normal((512, 1000)).astype(np.float32)
        ref = fl.log_softmax(x, 1)
        bad = []
        def work():
            for _ in range(20):
                if not np.array_equal(fl.log_softmax(x, 1), ref):
                    bad.append(1)
        ts = [threading.Thread(target=work) for _ in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print("ok" if not bad else "mismatch", fl._threads.threading_layer())
        """,
        {"NUMBA_THREADING_LAYER": layer},
    )
    if result.returncode != 0 and "No threading layer could be loaded" in result.stderr:
        pytest.skip(f"Numba's {layer} layer is not available here")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok"), result.stdout


def test_forked_child_and_parent_keep_working():
    result = _run_python(
        """
        import os, numpy as np, fastloss as fl
        x = np.random.default_rng(0).standard_normal((512, 1000)).astype(np.float32)
        t = np.random.default_rng(1).integers(0, 1000, 512)
        ref = fl.cross_entropy_with_grad(x, t)[1]
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(fl.cross_entropy_with_grad(x, t)[1], ref)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert np.array_equal(fl.cross_entropy_with_grad(x, t)[1], ref)
        print("child", os.waitstatus_to_exitcode(status))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child 0"


def test_import_compiles_nothing_and_leaves_numba_config_alone():
    result = _run_python(
        """
        import numba
        before = (numba.config.THREADING_LAYER, numba.config.NUMBA_NUM_THREADS,
                  numba.config.CACHE_DIR)
        import fastloss
        from fastloss import _kernels_softmax, _kernels_ce
        compiled = [
            name for module in (_kernels_softmax, _kernels_ce)
            for name, value in vars(module).items()
            if hasattr(value, "serial") and (value.serial.signatures or value.parallel.signatures)
        ]
        after = (numba.config.THREADING_LAYER, numba.config.NUMBA_NUM_THREADS,
                 numba.config.CACHE_DIR)
        print(compiled, before == after)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True"


def test_cached_serial_twin_is_really_serial(tmp_path):
    """Numba's cache key ignores parallel=: each twin must have its own cache entry."""
    code = """
        import numpy as np
        from numba.np.ufunc import parallel
        from fastloss import _kernels_softmax as K
        x = np.ones((64, 100), np.float32)
        out = np.empty_like(x)
        if {compile_parallel}:
            K.softmax_rows.parallel(x, out, True)
        K.softmax_rows.serial(x, out, True)
        print(parallel._is_initialized)
        """
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "FASTLOSS_CACHE": "1"}
    first = _run_python(code.format(compile_parallel=True), env)
    assert first.returncode == 0, first.stderr
    second = _run_python(code.format(compile_parallel=False), env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "False", "the serial twin started Numba's thread pool"
