"""Runtime safety: many Python threads, fork, every threading layer, and a side-effect-free import;
thread-count control; a kernel cache with nowhere to write.

Each subprocess is bounded by a timeout, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numba
import numpy as np
import pytest

import fastloss as fl

pytestmark = pytest.mark.slow

TIMEOUT = 240
MAX_THREADS = numba.config.NUMBA_NUM_THREADS
needs_two_threads = pytest.mark.skipif(MAX_THREADS < 2, reason="Numba launches 1 thread here")
# A forked child's first call must return within this (it must neither hang nor compile).
FORK_FIRST_CALL_SECONDS = 5.0


def _run_python(code: str, env_extra: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=cwd,
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


# The parent uses both twins of one signature (a large and a small call), as a process that
# has served a few batches has: a child then finds every kernel it may run already compiled,
# whether it may launch threads (workqueue, tbb) or must stay serial (child of an omp parent).
_PARENT_BEFORE_FORK = f"""
    import os, select, time, numpy as np, fastloss as fl
    bound = {FORK_FIRST_CALL_SECONDS}
    x = np.random.default_rng(0).standard_normal((512, 1000)).astype(np.float32)
    t = np.random.default_rng(1).integers(0, 1000, 512)
    ref = fl.cross_entropy_with_grad(x, t)[1]
    fl.cross_entropy_with_grad(x[:4], t[:4])

    def first_call():
        start = time.perf_counter()
        same = np.array_equal(fl.cross_entropy_with_grad(x, t)[1], ref)
        return same, time.perf_counter() - start
    """

_OS_FORK = """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        same, seconds = first_call()
        os.write(write_end, f"{int(same)} {seconds:.3f}".encode())
        os._exit(0)
    ready, _, _ = select.select([read_end], [], [], bound)
    if not ready:
        os.kill(pid, 9)
    same, seconds = os.read(read_end, 64).decode().split() if ready else ("-", "timeout")
    _, status = os.waitpid(pid, 0)
    assert np.array_equal(fl.cross_entropy_with_grad(x, t)[1], ref)  # the parent still works
    print("child", os.waitstatus_to_exitcode(status), same, seconds)
    """

_POOL_FORK = """
    import multiprocessing
    if __name__ == "__main__":
        with multiprocessing.get_context("fork").Pool(2) as pool:
            deadline = time.monotonic() + bound
            pending = [pool.apply_async(first_call) for _ in range(2)]
            # Raises multiprocessing.TimeoutError past the deadline (pool exit kills workers).
            results = [p.get(timeout=max(0.0, deadline - time.monotonic())) for p in pending]
        print(all(same for same, _ in results), max(seconds for _, seconds in results))
    """


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_forked_child_first_call_is_prompt_and_parent_keeps_working(layer):
    result = _run_python(_PARENT_BEFORE_FORK + _OS_FORK, {"NUMBA_THREADING_LAYER": layer})
    assert result.returncode == 0, result.stderr
    status, same, seconds = result.stdout.split()[1:]
    assert seconds != "timeout", f"the child's first call took over {FORK_FIRST_CALL_SECONDS} s"
    assert (status, same) == ("0", "1"), result.stdout + result.stderr


def test_multiprocessing_fork_workers_first_call_is_prompt():
    result = _run_python(_PARENT_BEFORE_FORK + _POOL_FORK)
    assert result.returncode == 0, result.stderr
    same, seconds = result.stdout.split()
    assert same == "True", result.stdout
    assert float(seconds) < FORK_FIRST_CALL_SECONDS


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


def test_a_kernel_loaded_from_the_cache_gives_the_bits_it_gave_when_compiled(tmp_path):
    # A helper is optimized in its own library and again in every caller it is linked into,
    # and a process that loads a kernel from the cache runs the caller's copy. With
    # reassociating sums the two copies rounded differently (~7600 of the 512 x 1000
    # log_softmax elements differed in their last bit); fixed-order sums (_math.lane_sum_of)
    # round the same in both. Every kind of row sum, in the serial and the parallel twins.
    code = """
        import hashlib, sys, numpy as np, fastloss as fl
        rng = np.random.default_rng(0)
        digest = hashlib.sha1()
        for rows in (8, 512):
            x = rng.standard_normal((rows, 1000)).astype(np.float32)
            t = rng.integers(0, 1000, rows)
            p = rng.random((rows, 1000)).astype(np.float32)
            w = rng.random(1000).astype(np.float32)
            for result in (
                fl.log_softmax(x, 1),
                fl.softmax_backward(p, x, 1),
                *fl.cross_entropy_with_grad(x, t, weight=w, label_smoothing=0.1),
                *fl.cross_entropy_with_grad(x, t, softcap=5.0),
                *fl.cross_entropy_with_grad(x, p),
            ):
                digest.update(np.ascontiguousarray(result).tobytes())
        sys.stdout.write(digest.hexdigest())
        """
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "FASTLOSS_CACHE": "1"}
    compiled = _run_python(code, env)
    assert compiled.returncode == 0, compiled.stderr
    loaded = _run_python(code, env)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == compiled.stdout


# ---------------------------------------------------------------------------------------------
# Thread count: fastloss.set_num_threads / get_num_threads / num_threads, FASTLOSS_NUM_THREADS


@needs_two_threads
def test_one_and_two_threads_agree_bitwise_and_numba_setting_is_untouched():
    calls = _mixed_calls(np.random.default_rng(2))
    before = numba.get_num_threads()
    with fl.num_threads(1):
        one = [f(*args) for f, args in calls]
    with fl.num_threads(2):
        two = [f(*args) for f, args in calls]
    assert numba.get_num_threads() == before
    for (f, _), a, b in zip(calls, one, two, strict=True):
        assert _same(a, b), f.__name__


@needs_two_threads
def test_parallel_launch_sees_the_count_only_while_it_runs(monkeypatch):
    from fastloss import _kernels_softmax as K

    launched = []
    parallel = K.softmax_rows.parallel

    def spy(*args):
        launched.append(numba.get_num_threads())  # Numba's count for this launch
        return parallel(*args)

    monkeypatch.setattr(K.softmax_rows, "parallel", spy)
    x = np.random.default_rng(3).standard_normal((256, 1000)).astype(np.float32)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)  # this thread's own Numba setting, which fastloss must restore
    try:
        with fl.num_threads(2):
            fl.softmax(x, dim=1)
        assert numba.get_num_threads() == 1
        fl.softmax(x, dim=1)  # no fastloss setting: Numba's count for this thread
        with fl.num_threads(1):
            fl.softmax(x, dim=1)  # one thread: the serial twin, no launch
    finally:
        numba.set_num_threads(previous)
    assert launched == [2, 1]


def test_num_threads_block_is_invisible_to_other_threads():
    default = fl.get_num_threads()
    seen = {}

    def other():
        seen["other"] = fl.get_num_threads()
        with fl.num_threads(1):
            seen["other block"] = fl.get_num_threads()

    with fl.num_threads(1):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(TIMEOUT)
        seen["main block"] = fl.get_num_threads()
    assert seen == {"other": default, "other block": 1, "main block": 1}
    assert fl.get_num_threads() == default


def test_set_num_threads_is_the_process_default_under_any_block():
    default = fl.get_num_threads()
    seen = []
    try:
        fl.set_num_threads(1)
        thread = threading.Thread(target=lambda: seen.append(fl.get_num_threads()))
        thread.start()
        thread.join(TIMEOUT)
        with fl.num_threads(MAX_THREADS):  # a block wins over the process default
            seen.append(fl.get_num_threads())
        seen.append(fl.get_num_threads())
    finally:
        fl.set_num_threads(None)
    assert seen == [1, MAX_THREADS, 1]
    assert fl.get_num_threads() == default


def test_num_threads_restores_on_exception_and_nests():
    default = fl.get_num_threads()
    with pytest.raises(ZeroDivisionError):
        with fl.num_threads(1):
            raise ZeroDivisionError
    assert fl.get_num_threads() == default
    with fl.num_threads(MAX_THREADS) as outer:
        with fl.num_threads(1) as inner:
            assert (outer, inner, fl.get_num_threads()) == (MAX_THREADS, 1, 1)
        assert fl.get_num_threads() == MAX_THREADS
    assert fl.get_num_threads() == default


@pytest.mark.parametrize("setter", [fl.set_num_threads, fl.num_threads])
@pytest.mark.parametrize("n", [0, -1, MAX_THREADS + 1])
def test_thread_count_out_of_range_names_value_and_maximum(setter, n):
    with pytest.raises(ValueError, match=rf"n={n} is not between 1 and {MAX_THREADS}"):
        setter(n)
    assert fl.get_num_threads() <= MAX_THREADS


@pytest.mark.parametrize("setter", [fl.set_num_threads, fl.num_threads])
@pytest.mark.parametrize("n", [1.0, "2", True])
def test_thread_count_must_be_an_integer(setter, n):
    with pytest.raises(TypeError, match="must be an integer number of threads"):
        setter(n)


@pytest.mark.parametrize(
    "value, expected",
    [("1", 1), ("abc", None), ("0", None), (str(MAX_THREADS + 1), None)],
    ids=["valid", "text", "zero", "above-max"],
)
def test_environment_variable_sets_default_or_warns(value, expected):
    result = _run_python(
        """
        import json, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fastloss as fl
        import numba, numpy as np
        x = np.random.default_rng(0).standard_normal((256, 1000)).astype(np.float32)
        fl.log_softmax(x, dim=1)
        print(json.dumps([fl.get_num_threads(), numba.get_num_threads(),
                          [str(w.message) for w in caught]]))
        """,
        {"FASTLOSS_NUM_THREADS": value},
    )
    assert result.returncode == 0, result.stderr
    threads, numba_threads, messages = json.loads(result.stdout)
    assert numba_threads == MAX_THREADS  # Numba's own setting is never changed
    if expected is None:  # warned, and fell back to Numba's count
        assert threads == MAX_THREADS
        assert len(messages) == 1 and f"FASTLOSS_NUM_THREADS={value!r}" in messages[0]
    else:
        assert (threads, messages) == (expected, [])


# ---------------------------------------------------------------------------------------------
# Kernel cache locations that cannot be written


def _package_copy(tmp_path: Path) -> Path:
    """A copy of the package (without its kernel cache) under tmp_path/site."""
    site = tmp_path / "site"
    shutil.copytree(
        Path(fl.__file__).parent, site / "fastloss", ignore=shutil.ignore_patterns("__pycache__")
    )
    return site


_CACHE_REPORT = """
    import json, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import fastloss as fl
    from fastloss._cli import cache_status
    report = {"file": fl.__file__, "cache": fl._config.CACHE, "status": cache_status(),
              "warnings": [str(w.message) for w in caught]}
    if %s:
        import numpy as np
        from fastloss import reference
        x = np.random.default_rng(0).standard_normal((32, 10)).astype(np.float32)
        t = np.arange(32) %% 10
        got = fl.cross_entropy(x, t)
        report["close"] = bool(np.allclose(got, reference.cross_entropy(x.astype(float), t)))
    print(json.dumps(report))
    """


def test_no_writable_cache_location_warns_and_still_computes(tmp_path):
    """Package directory, HOME and NUMBA_CACHE_DIR all unusable: warn, compile in memory.

    Each location is blocked by a regular file where a directory must be, which holds
    whoever runs the test (root ignores permission bits, so chmod would prove nothing).
    """
    site = _package_copy(tmp_path)
    (site / "fastloss" / "__pycache__").write_text("")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    env = {
        "PYTHONPATH": str(site),
        "HOME": str(blocker / "home"),
        "XDG_CACHE_HOME": str(blocker / "xdg"),
        "NUMBA_CACHE_DIR": str(blocker / "numba"),
        "FASTLOSS_CACHE": "1",
    }
    # cwd: `python -c` looks in the working directory first, which may hold the original.
    result = _run_python(_CACHE_REPORT % True, env, cwd=tmp_path)  # compiles one kernel
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["file"].startswith(str(site))
    assert report["cache"] is False and report["status"].startswith("off")
    (message,) = report["warnings"]
    assert "no writable Numba cache directory" in message and "NUMBA_CACHE_DIR" in message
    assert report["close"]


def test_unusable_numba_cache_dir_falls_back_to_the_package_directory(tmp_path):
    """Numba skips an unusable NUMBA_CACHE_DIR silently and caches next to the package."""
    site = _package_copy(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    env = {
        "PYTHONPATH": str(site),
        "NUMBA_CACHE_DIR": str(blocker / "numba"),
        "FASTLOSS_CACHE": "1",
    }
    result = _run_python(_CACHE_REPORT % False, env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cache"] is True and report["warnings"] == []
    assert str(site / "fastloss" / "__pycache__") in report["status"]
