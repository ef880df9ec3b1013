"""Kernels of the mergeable logsumexp state: (max, float64 sum of exp(x - max)) per slice.

They run the softmax family's own online recurrence (``_row_state`` on rows, ``_tile_state``
on strided tiles) and write the state instead of finishing it into a logsumexp. A slice whose
state is not regular (its maximum is not finite, or its sum is NaN) is rescanned, as the
logsumexp kernels do, and written in the canonical special form the merge rule relies on:

* only ``-inf`` (or nothing): ``(-inf, 0)``;
* a ``+inf`` and no NaN:       ``(+inf, 1)``;
* any NaN:                      ``(nan, nan)``.

The raw recurrence cannot tell the last two apart (``exp(inf - inf)`` is NaN in both), and a
merge needs to: a ``+inf`` shard must make the whole row ``+inf``, a NaN shard must make it NaN.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import jit, kernel
from ._kernels_softmax import (
    _is_regular,
    _row_state,
    _special_lse_column,
    _special_lse_row,
    _tile_bounds,
    _tile_state,
)
from ._math import wide_vectors


@jit
def _canonical_special(lse):
    """The special state of a slice whose logsumexp is ``lse`` (-inf, +inf or NaN)."""
    if lse != lse:
        return np.nan, np.nan
    if lse > 0.0:
        return np.inf, 1.0
    return -np.inf, 0.0


@kernel
def state_rows(x, out_max, out_sum):
    """(out_max[r], out_sum[r]) = the state of x[r, :]."""
    wide_vectors()
    for r in prange(x.shape[0]):
        wide_vectors()
        m, s = _row_state(x, r, 0, x.shape[1])
        if _is_regular(m, s):
            out_max[r] = np.float64(m)
            out_sum[r] = s
        else:
            out_max[r], out_sum[r] = _canonical_special(_special_lse_row(x, r))


@kernel
def state_strided(x, out_max, out_sum, tile):
    """(out_max[o, i], out_sum[o, i]) = the state of x[o, :, i]."""
    wide_vectors()
    outer, _, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    for w in prange(outer * ntiles):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        m, s = _tile_state(x, o, p0, n)
        om, os_ = out_max[o, p0 : p0 + n], out_sum[o, p0 : p0 + n]
        for t in range(n):
            om[t] = np.float64(m[t])
            os_[t] = s[t]
        for t in range(n):
            if not _is_regular(m[t], s[t]):
                om[t], os_[t] = _canonical_special(_special_lse_column(x, o, p0 + t))
