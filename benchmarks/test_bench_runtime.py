"""Many Python threads at once: 8 concurrent callers against one caller doing the same calls.

A service calls fastloss from a pool of Python threads. Group ``runtime|8 threads x N calls``
runs one mixed plan of calls (several functions; serial-sized, parallel-sized and spatial
inputs; float32 and float64) two ways:

* ``serial``: one Python thread makes all 8 x N calls, one after the other;
* ``concurrent``: 8 Python threads make N calls each, at the same time.

Before anything is timed, each way runs once checked: every result must equal, bitwise, the
same call made alone in the main thread, and no call may raise (0 failures). The throughput
ratio concurrent / serial is time(serial) / time(concurrent); ``benchmarks/report.py`` prints
it. Above 1, the threads overlap (kernels release the GIL); below 1, concurrency costs
throughput. It depends on the threading layer: under ``omp`` every caller launches its own
team of threads, under ``workqueue`` one caller at a time gets the parallel kernel
(``fastloss._threads.parallel_slot``) and the others run the serial one.

    python -m pytest benchmarks/test_bench_runtime.py --benchmark-enable --benchmark-json=rt.json
    python benchmarks/report.py rt.json
    NUMBA_THREADING_LAYER=workqueue python -m pytest benchmarks/test_bench_runtime.py ...

With ``--benchmark-disable`` (the default) it is a smoke test: 2 calls per thread, checked.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastloss as fl
from fastloss._threads import threading_layer

THREADS = 8
CALLS_PER_THREAD = 24
SMOKE_CALLS_PER_THREAD = 2
JOIN_TIMEOUT = 300  # seconds: a hang fails the benchmark instead of stalling it


def mixed_calls() -> list[tuple[str, object, tuple]]:
    """(label, function, args): what a service's threads might ask for."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 1000)).astype(np.float32)  # parallel-sized: 256K elements
    t = rng.integers(0, 1000, 256)
    small = rng.standard_normal((32, 10)).astype(np.float32)  # serial-sized
    small_t = rng.integers(0, 10, 32)
    spatial = rng.standard_normal((4, 5, 64, 64))  # float64, class dim 1
    spatial_t = rng.integers(0, 5, (4, 64, 64))
    return [
        ("log_softmax", fl.log_softmax, (x, 1)),
        ("logsumexp", fl.logsumexp, (x, 1)),
        ("sigmoid", fl.sigmoid, (x,)),
        ("cross_entropy", fl.cross_entropy, (x, t)),
        ("cross_entropy_backward", fl.cross_entropy_backward, (1.0, x, t)),
        ("cross_entropy small", fl.cross_entropy, (small, small_t)),
        ("log_softmax small", fl.log_softmax, (small, 1)),
        ("softmax spatial", fl.softmax, (spatial, 1)),
        ("cross_entropy_with_grad spatial", fl.cross_entropy_with_grad, (spatial, spatial_t)),
    ]


def plans(count: int, calls_per_thread: int) -> list[list[int]]:
    """One list of call indices per thread, each in its own shuffled order."""
    return [
        [int(i) for i in np.resize(np.random.default_rng(k).permutation(count), calls_per_thread)]
        for k in range(THREADS)
    ]


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_same(u, v) for u, v in zip(a, b, strict=True))
    return np.array_equal(a, b, equal_nan=True)


def run_plan(calls, plan, expected, failures) -> None:
    for i in plan:
        label, function, args = calls[i]
        try:
            result = function(*args)
        except Exception as exc:  # noqa: BLE001 - counted and reported as a failure
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        if expected is not None and not _same(result, expected[i]):
            failures.append(f"{label}: result differs from the same call made alone")


def run(mode: str, calls, thread_plans, expected=None) -> list[str]:
    """Every plan, one after the other (serial) or in 8 threads at once; -> failures."""
    failures: list[str] = []
    if mode == "serial":
        for plan in thread_plans:
            run_plan(calls, plan, expected, failures)
        return failures
    start = threading.Barrier(len(thread_plans))

    def worker(plan):
        start.wait()
        run_plan(calls, plan, expected, failures)

    threads = [threading.Thread(target=worker, args=(plan,)) for plan in thread_plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    if any(thread.is_alive() for thread in threads):
        failures.append(f"a thread did not finish within {JOIN_TIMEOUT} s")
    return failures


@pytest.fixture(scope="module")
def workload():
    calls = mixed_calls()
    expected = [function(*args) for _, function, args in calls]  # also compiles everything
    return calls, expected


@pytest.mark.parametrize("mode", ["serial", "concurrent"])
def test_runtime_stress(benchmark, workload, mode):
    calls, expected = workload
    per_thread = SMOKE_CALLS_PER_THREAD if benchmark.disabled else CALLS_PER_THREAD
    thread_plans = plans(len(calls), per_thread)

    failures = run(mode, calls, thread_plans, expected)
    assert failures == [], failures[:5]

    benchmark.group = f"runtime|{THREADS} threads x {per_thread} calls"
    benchmark.extra_info.update(
        table="concurrency",
        implementation=mode,
        calls=THREADS * per_thread,
        python_threads=THREADS if mode == "concurrent" else 1,
        threads=fl.get_num_threads(),
        threading_layer=threading_layer(),
        failures=len(failures),
    )
    benchmark(run, mode, calls, thread_plans)
