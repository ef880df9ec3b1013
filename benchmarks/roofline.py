"""Memory-bandwidth ceilings, measured in the same run as the kernels they bound.

A softmax-family kernel on a large array cannot run faster than the memory system can stream
its bytes. Three parallel probes measure that limit on the benchmark's own array, with the
package's own Numba options, so "% of roofline" compares numbers taken seconds apart on the
same machine state (this VM's bandwidth varies 2x between runs: kernel-notes.md):

* ``read_probe(x)``: a parallel sum over rows of ``CHUNK`` elements (read bandwidth), the
  ceiling of reductions such as logsumexp;
* ``rw_probe(x)``: a parallel scale-copy ``out = 2 * x`` into a preallocated array (read +
  write bandwidth), the ceiling of kernels that write an array as large as their input;
* ``rw_fresh_probe(x)``: the same copy into a new array each call, the ceiling of a function
  that returns a new array as large as its input (it pays the page faults torch pays too).

Each returns ``(run, nbytes)``: a zero-argument callable for the timer and the bytes one call
moves. "% of roofline" is taken against ``rw_probe``, whose write target is allocated once:
its ceiling excludes the page faults a fresh output costs. fastloss (like torch) pays those
when it returns a new array; ``rw_fresh_probe`` shows how much of the gap they explain.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from fastloss._config import CACHE, FASTMATH
from fastloss._math import const, loaded_sum, wide_vectors

# The package's options (fastloss/_config.py), compiled parallel, and its way of summing:
# explicit running sums (loaded_sum) and wide vectors, as the kernels use. A plain `s += v[i]`
# is a serial chain of additions, half this machine's read bandwidth.
_OPTIONS = dict(parallel=True, fastmath=set(FASTMATH), cache=CACHE, error_model="numpy")

# Elements per prange work item: large enough to stream, small enough to balance 2+ threads.
CHUNK = 1 << 16


@numba.njit(**_OPTIONS)
def _row_sums(v, chunk, out):
    """out[k] = sum(v[k*chunk : (k+1)*chunk]), accumulated in v's own dtype."""
    wide_vectors()
    n = v.shape[0]
    for k in prange(out.shape[0]):
        wide_vectors()
        part = v[k * chunk : min((k + 1) * chunk, n)]
        out[k] = loaded_sum((part,), part.shape[0], const(part, 0.0))


@numba.njit(**_OPTIONS)
def _scale_copy(v, chunk, factor, out):
    """out = factor * v, one contiguous chunk per work item."""
    wide_vectors()
    n = v.shape[0]
    for k in prange((n + chunk - 1) // chunk):
        wide_vectors()
        src, dst = v[k * chunk : min((k + 1) * chunk, n)], out[k * chunk : min((k + 1) * chunk, n)]
        for i in range(src.shape[0]):
            dst[i] = factor * src[i]


def _words(x: np.ndarray) -> np.ndarray:
    """x's bytes as a flat float32/float64 array (Numba cannot type float16/bfloat16).

    A 16-bit array is read as float32 words: the same bytes, which is all bandwidth needs.
    """
    flat = np.ascontiguousarray(x).reshape(-1)
    if flat.dtype in (np.float32, np.float64):
        return flat
    usable = flat.nbytes - flat.nbytes % 4
    return flat.view(np.uint8)[:usable].view(np.float32)


def read_probe(x: np.ndarray):
    """(run, nbytes) of a parallel read of every byte of ``x``."""
    v = _words(x)
    out = np.empty(max(1, -(-v.size // CHUNK)), v.dtype)

    def run():
        _row_sums(v, CHUNK, out)
        return out

    return run, v.nbytes


def rw_probe(x: np.ndarray):
    """(run, nbytes) of a parallel read of ``x`` plus a write of as many bytes."""
    v = _words(x)
    out = np.empty_like(v)
    factor = v.dtype.type(2)

    def run():
        _scale_copy(v, CHUNK, factor, out)
        return out

    return run, 2 * v.nbytes


def rw_fresh_probe(x: np.ndarray):
    """(run, nbytes) of ``rw_probe`` into a freshly allocated output, as a function that
    returns a new array (softmax, a fused gradient) must write: the operating system zeroes
    each new page on its first touch, which on some machines costs as much as the write."""
    v = _words(x)
    factor = v.dtype.type(2)

    def run():
        out = np.empty_like(v)
        _scale_copy(v, CHUNK, factor, out)
        return out

    return run, 2 * v.nbytes


PROBES = {
    "roofline-read": read_probe,
    "roofline-rw": rw_probe,
    "roofline-rw-fresh": rw_fresh_probe,
}
