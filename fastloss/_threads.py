"""Thread count and threading-layer facts for the dispatch layer."""

from __future__ import annotations

import numba


def thread_count() -> int:
    """Threads a parallel kernel launched from this Python thread would use."""
    return numba.get_num_threads()
