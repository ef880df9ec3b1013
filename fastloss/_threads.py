"""Thread count, and when a parallel kernel may be launched safely.

Numba picks its threading layer at the first parallel launch and fastloss never changes that
choice. Two layers need care, and ``parallel_slot`` gives it:

* ``workqueue`` aborts the whole process when two threads launch parallel kernels at once:
  a non-blocking lock grants the parallel twin to one caller at a time, and the others run
  the serial twin meanwhile (no waiting, no abort).
* ``omp`` (GNU OpenMP) kills a forked child that launches a parallel region after the parent
  used one: in a child process, kernels run serially.

``tbb`` needs neither.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numba

_lock = threading.Lock()
_layer: str | None = None
_child_of_omp_parent = False


def _after_fork_in_child() -> None:
    """A child forked after OpenMP started (by fastloss or anyone) must not launch it again."""
    global _child_of_omp_parent
    from numba.np.ufunc import parallel

    if getattr(parallel, "_threading_layer", None) == "omp":
        _child_of_omp_parent = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def threading_layer() -> str:
    """Numba's threading layer, starting Numba's thread pool if nothing has yet.

    Numba selects the layer when its pool starts (at the first parallel launch, or here,
    which is the same choice made a moment earlier); fastloss never overrides it.
    """
    global _layer
    if _layer is None:
        numba.get_num_threads()  # starts the pool, which fixes the layer
        _layer = numba.threading_layer()
    return _layer


@contextlib.contextmanager
def parallel_slot():
    """Yield True when the caller may launch the parallel twin now, else False."""
    if _child_of_omp_parent:
        yield False
        return
    layer = threading_layer()
    if layer in ("tbb", "omp"):
        yield True
        return
    # workqueue: one parallel launch at a time.
    if not _lock.acquire(blocking=False):
        yield False
        return
    try:
        yield True
    finally:
        _lock.release()
