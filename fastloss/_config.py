"""Every Numba option fastloss uses lives here, and nowhere else.

Kernels are written once with ``prange`` and compiled twice: a serial twin for small inputs
(where launching threads costs more than the work) and a parallel twin for large ones.
Compilation is lazy (no signatures), so ``import fastloss`` compiles nothing.
"""

from __future__ import annotations

import hashlib
import os
import types
import warnings
from pathlib import Path

import numba

from ._threads import parallel_slot, requested_threads, scoped_numba_threads

# Function-wide fastmath is "nsz" alone: never "nnan"/"ninf" (-inf-masked logits, all -inf
# rows and NaN propagation are core behaviour), and not "reassoc", "contract" or "arcp" either:
# each lets LLVM rearrange arithmetic differently in the serial and the parallel twin, in a
# loop's vector body and its scalar remainder (taken when out aliases an input), or in a
# helper's own library and its copy linked into a caller (what a process loading the kernel
# from the cache runs), so the same element would round differently from call to call. Sums
# vectorize through explicit running sums instead (_math.lane_sum_of), and the polynomials use
# explicit fused multiply-adds (_math.fma).
FASTMATH = frozenset({"nsz"})

# Vector width (bits) the kernels ask LLVM for; see _math.wide_vectors. 256 suits CPUs whose
# 512-bit units run at reduced clocks.
VECTOR_WIDTH = int(os.environ.get("FASTLOSS_VECTOR_WIDTH", "512"))

# Below this many elements a parallel launch costs more than it saves (measured for the omp
# and tbb layers in ../shared/reference/kernel-notes.md section 3, and by
# benchmarks/test_threshold.py on this package's own kernels).
PARALLEL_MIN_ELEMENTS = 32768


def _cache_wanted() -> bool:
    return os.environ.get("FASTLOSS_CACHE", "1").lower() not in ("0", "false", "no", "off")


def _cache_usable() -> bool:
    """Numba raises at decoration time when it finds no writable cache location; probe once."""
    if not _cache_wanted():
        return False
    try:
        numba.njit(cache=True)(_cache_probe)
    except RuntimeError:
        warnings.warn(
            "fastloss: no writable Numba cache directory (package directory, $HOME/.cache and "
            "NUMBA_CACHE_DIR all unusable); kernels will be recompiled in every process. "
            "Set NUMBA_CACHE_DIR to a writable directory to fix this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def _cache_probe():  # pragma: no cover - only decorated, never called
    return 0


CACHE = _cache_usable()


def _build_tag() -> str:
    """A digest of everything compiled code depends on beyond a function's own bytecode.

    Numba's cache keys an entry by the function's name, line and bytecode only: not by the
    options it was compiled with, nor by the helpers it inlined from other files. Putting
    this digest into every cached function's name makes a changed option or a changed helper
    (an upgrade, an edited file) compile afresh instead of loading stale machine code.
    """
    digest = hashlib.sha1(repr((sorted(FASTMATH), VECTOR_WIDTH)).encode())
    package = Path(__file__).parent
    # What compiled code is made of: these options, the math helpers and the kernels. (The
    # Python layer, the CLI and the reference can change without recompiling anything.)
    for source in [package / "_config.py", package / "_math.py",
                   *sorted(package.glob("_kernels_*.py"))]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:10]


BUILD_TAG = _build_tag()

_OPTIONS = dict(fastmath=set(FASTMATH), cache=CACHE, error_model="numpy", nogil=True)


def jit(func):
    """A serial helper (inlined into the kernels by LLVM when it judges the call cheap)."""
    return numba.njit(**_OPTIONS)(_renamed(func, "jit"))


def inline(func):
    """A helper inlined into its callers by Numba itself, whatever its size: an elementwise
    formula too large for LLVM's inliner would otherwise stay a call in the loop, and the
    loop would not vectorize."""
    return numba.njit(inline="always", **_OPTIONS)(_renamed(func, "inline"))


class Kernel:
    """A ``prange`` kernel compiled as a serial and as a parallel twin, chosen per call.

    Calling it as ``kernel(work_elements, work_items, *args)`` runs the serial twin for small
    work, and otherwise the parallel twin when ``_threads.parallel_slot`` grants one (it
    refuses in a forked child of an OpenMP process, and while another thread holds the
    workqueue layer, which aborts the process on concurrent use). The parallel twin runs on
    fastloss's thread count (``fastloss.num_threads``), applied to Numba's per-thread
    setting for that launch only.
    """

    def __init__(self, func):
        self.serial = numba.njit(parallel=False, **_OPTIONS)(_renamed(func, "serial"))
        self.parallel = numba.njit(parallel=True, **_OPTIONS)(_renamed(func, "parallel"))
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__

    def __call__(self, work_elements: int, work_items: int, *args):
        if work_items < 2 or work_elements < PARALLEL_MIN_ELEMENTS:
            return self.serial(*args)
        return self.run_parallel(*args)

    def run_parallel(self, *args):
        threads = requested_threads()
        if threads == 1:
            return self.serial(*args)  # the same bits, without a thread launch
        with parallel_slot() as granted:
            if not granted:
                return self.serial(*args)
            if threads is None:  # no fastloss setting: Numba's count for this thread
                return self.parallel(*args)
            with scoped_numba_threads(threads):
                return self.parallel(*args)


def _renamed(func, variant: str):
    """A copy of ``func`` whose qualified name names its variant and the build tag.

    Numba's on-disk cache keys a function by its qualified name, source line and bytecode,
    not by the ``parallel`` flag: without distinct names the serial twin would load the
    parallel twin's machine code from the cache (and launch threads in a forked child).
    """
    copy = types.FunctionType(
        func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    copy.__qualname__ = f"{func.__qualname__}__{variant}_{BUILD_TAG}"
    copy.__module__ = func.__module__
    copy.__doc__ = func.__doc__
    return copy


def kernel(func) -> Kernel:
    return Kernel(func)
