"""Thread count, and when a parallel kernel may be launched safely.

Numba picks its threading layer at the first parallel launch and fastloss never changes that
choice. Two layers need care, and ``parallel_slot`` gives it:

* ``workqueue`` aborts the whole process when two threads launch parallel kernels at once:
  a non-blocking lock grants the parallel twin to one caller at a time, and the others run
  the serial twin meanwhile (no waiting, no abort).
* ``omp`` (GNU OpenMP) kills a forked child that launches a parallel region after the parent
  used one: in a child process, kernels run serially.

``tbb`` needs neither.

The thread count (``set_num_threads``, ``num_threads``, ``FASTLOSS_NUM_THREADS``) is fastloss's
own setting: ``scoped_numba_threads`` applies it to Numba's per-thread count around each
parallel launch only, so the rest of the program never sees it.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
import warnings

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


# ---------------------------------------------------------------------------------------------
# Thread count: a per-Python-thread override (num_threads) over a process-wide default
# (set_num_threads, FASTLOSS_NUM_THREADS) over Numba's own per-thread count.

ENV_VAR = "FASTLOSS_NUM_THREADS"


def _checked(n, where: str) -> int:
    """n as an int from 1 to NUMBA_NUM_THREADS, else an error that names the fix."""
    limit = numba.config.NUMBA_NUM_THREADS  # the threads Numba launches: a hard maximum
    try:
        if isinstance(n, bool):
            raise TypeError
        value = operator.index(n)
    except TypeError:
        raise TypeError(
            f"{where}: n must be an integer number of threads, got {n!r} "
            f"({type(n).__name__}); pass an int from 1 to {limit}"
        ) from None
    if not 1 <= value <= limit:
        raise ValueError(
            f"{where}: n={value} is not between 1 and {limit}, the number of threads Numba "
            f"launches (NUMBA_NUM_THREADS={limit}); pass a value from 1 to {limit}, or set "
            "NUMBA_NUM_THREADS higher before the program starts"
        )
    return value


def _from_environment() -> int | None:
    """FASTLOSS_NUM_THREADS, or None (unset or invalid: warn, never break the import)."""
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return None
    try:
        return _checked(int(text), ENV_VAR)
    except (TypeError, ValueError) as exc:
        warnings.warn(
            f"fastloss: ignoring {ENV_VAR}={text!r} ({exc}); using Numba's thread count "
            f"instead. Set {ENV_VAR} to a whole number from 1 to "
            f"{numba.config.NUMBA_NUM_THREADS}, or unset it.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


_ENV_THREADS = _from_environment()
_process_threads: int | None = _ENV_THREADS  # set_num_threads; None: follow Numba
_local = threading.local()  # .threads: the innermost num_threads block of this thread


def requested_threads() -> int | None:
    """The calling thread's fastloss thread count, or None when it follows Numba's."""
    threads = getattr(_local, "threads", None)
    return _process_threads if threads is None else threads


@contextlib.contextmanager
def scoped_numba_threads(n: int):
    """Numba's thread count for this Python thread set to ``n`` in the block, then restored.

    Numba's count is per Python thread, so this never touches another thread's launches.
    """
    previous = numba.get_num_threads()
    if previous == n:
        yield
        return
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def set_num_threads(n):
    """Set the process-wide number of threads a fastloss call may use.

    Which count a call uses, in the Python thread that makes it: the innermost
    ``fastloss.num_threads(n)`` block open in that thread; else the last
    ``set_num_threads(n)`` (from any thread), initially the ``FASTLOSS_NUM_THREADS``
    environment variable read at import; else Numba's count for that thread,
    ``numba.get_num_threads()`` (``NUMBA_NUM_THREADS``, which defaults to the CPU count,
    unless ``numba.set_num_threads`` was called in that thread).

    The setting is fastloss's own: Numba's count is changed only for the duration of each
    parallel kernel launch and restored right after, so other Numba code, and
    ``numba.get_num_threads()``, never see it. With 1 thread, kernels run their serial
    version (no thread launch at all). Results are bitwise identical for any count.

    Parameters
    ----------
    n : int or None
        From 1 to ``numba.config.NUMBA_NUM_THREADS`` (Numba launches that many threads at
        most). ``None`` restores the default: ``FASTLOSS_NUM_THREADS`` if it is set, else
        Numba's count.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If ``n`` is below 1 or above ``numba.config.NUMBA_NUM_THREADS``.
    TypeError
        If ``n`` is not an integer (or None).

    See Also
    --------
    num_threads : the same, for a ``with`` block in one Python thread.
    get_num_threads : the count a call made now, in this thread, would use.

    Examples
    --------
    >>> import fastloss as fl
    >>> fl.set_num_threads(1)      # every Python thread, from now on
    >>> fl.get_num_threads()
    1
    >>> fl.set_num_threads(None)   # back to FASTLOSS_NUM_THREADS, or Numba's count
    """
    global _process_threads
    _process_threads = _ENV_THREADS if n is None else _checked(n, "fastloss.set_num_threads")


def get_num_threads():
    """The number of threads a fastloss call made now, in this Python thread, may use.

    The rule is the one described in ``set_num_threads``: an open ``num_threads`` block of
    this thread, else ``set_num_threads`` / ``FASTLOSS_NUM_THREADS``, else
    ``numba.get_num_threads()``. Inputs too small to pay for a thread launch run on one
    thread whatever this says.

    Parameters
    ----------
    None

    Returns
    -------
    int
        From 1 to ``numba.config.NUMBA_NUM_THREADS``.

    Examples
    --------
    >>> import numba, fastloss as fl
    >>> fl.get_num_threads() <= numba.config.NUMBA_NUM_THREADS
    True
    >>> with fl.num_threads(1):
    ...     fl.get_num_threads()
    1
    """
    threads = requested_threads()
    return numba.get_num_threads() if threads is None else threads


def num_threads(n):
    """Context manager: fastloss calls in this Python thread use ``n`` threads in the block.

    The count applies to the calling Python thread only (other threads keep theirs) and is
    restored when the block exits, also on an exception. Blocks nest; the innermost wins
    over ``set_num_threads`` and ``FASTLOSS_NUM_THREADS``. Numba's own setting is left
    alone (see ``set_num_threads`` for the whole rule). Results are bitwise identical for
    any count.

    Parameters
    ----------
    n : int
        From 1 to ``numba.config.NUMBA_NUM_THREADS``; checked when ``num_threads`` is
        called.

    Returns
    -------
    context manager
        Entering it gives ``n``.

    Raises
    ------
    ValueError
        If ``n`` is below 1 or above ``numba.config.NUMBA_NUM_THREADS``.
    TypeError
        If ``n`` is not an integer.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> x = np.random.default_rng(0).standard_normal((256, 1000)).astype(np.float32)
    >>> with fl.num_threads(1):
    ...     one_thread = fl.log_softmax(x, dim=1)
    >>> np.array_equal(one_thread, fl.log_softmax(x, dim=1))   # the same bits
    True
    """
    return _thread_override(_checked(n, "fastloss.num_threads"))


@contextlib.contextmanager
def _thread_override(n: int):
    previous = getattr(_local, "threads", None)
    _local.threads = n
    try:
        yield n
    finally:
        _local.threads = previous
