"""Where a parallel launch starts to pay: the evidence for ``PARALLEL_MIN_ELEMENTS``.

Times the serial and the parallel twin of ``fastloss._kernels_softmax.lse_rows`` on
(rows, C) arrays of 1K..256K elements. Below the crossover the parallel twin loses (thread
launch and join cost more than the work saved); ``fastloss._config.Kernel.pick`` should switch
at about the size where it starts to win. Groups are ``"lse_rows|<elements>|C=<C>|<dtype>"``
with implementations ``serial`` and ``parallel``; ``benchmarks/report.py`` prints them as a
second table with the measured crossover next to the configured threshold.

    python -m pytest benchmarks/test_threshold.py --benchmark-enable --benchmark-json=t.json
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fastloss import _kernels_softmax as K
from fastloss._config import PARALLEL_MIN_ELEMENTS
from fastloss._threads import threading_layer

SIZES = [1024 << k for k in range(9)]  # 1K .. 256K elements
CLASSES = (128, 1024)
DTYPES = ("float32", "float64")
TWINS = ("serial", "parallel")


# Microsecond calls: 0.2 s of rounds per benchmark is thousands of rounds, plenty for a min.
pytestmark = pytest.mark.benchmark(max_time=0.2)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", CLASSES, ids=lambda c: f"C{c}")
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n // 1024}K")
def test_lse_rows_threshold(benchmark, size, classes, dtype, twin):
    rows = max(1, size // classes)
    x = (np.random.default_rng(size).standard_normal((rows, classes)) * 3).astype(dtype)
    out = np.empty(rows, dtype)
    function = getattr(K.lse_rows, twin)

    benchmark.group = f"lse_rows|{x.size}|C={classes}|{dtype}"
    benchmark.extra_info.update(
        table="threshold",
        function="lse_rows",
        elements=int(x.size),
        classes=classes,
        dtype=dtype,
        implementation=twin,
        bytes=int(x.nbytes + out.nbytes),
        threads=numba.get_num_threads(),
        parallel_min_elements=PARALLEL_MIN_ELEMENTS,
    )
    if not benchmark.disabled:
        function(x, out)  # compile before timing
    benchmark(function, x, out)
    benchmark.extra_info["threading_layer"] = threading_layer()

    if benchmark.disabled:  # smoke mode: both twins compute the same thing
        m = x.astype(np.float64).max(axis=1, keepdims=True)
        expected = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
        rtol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(out, expected, rtol=rtol)
