"""Backward kernels that start from a forward's saved output, for the torch autograd bridge.

``fastloss.softmax_backward`` recomputes the softmax from the input (it has nothing else);
an autograd graph already holds the forward's output ``y``, so these kernels read ``y`` and
the upstream gradient ``g`` once each per row, with no exponential of the input:

* softmax:     dx = y * (g - sum(g * y))
* log_softmax: dx = g - exp(y) * sum(g)

Both layouts of ``_kernels_softmax`` are served: rows ``(R, C)`` and strided ``(O, C, I)``
tiles of contiguous positions. Row sums are accumulated per block in the compute type and
across blocks in float64, like every other fastloss reduction.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import jit, kernel
from ._kernels_softmax import BLOCK, _tile_bounds
from ._math import const, exp_out, lane_sum_of, load, loaded_sum, store, wide_vectors


@jit
def _product_term(args, j):
    g, y = args
    return load(g[j]) * load(y[j])


_product_sum = lane_sum_of(_product_term)


@kernel
def softmax_output_backward_rows(g, y, out, log):
    """Gradient of softmax (log=False) or log_softmax (log=True) from the output, rows."""
    wide_vectors()
    n = y.shape[1]
    for r in prange(y.shape[0]):
        wide_vectors()
        total = 0.0
        for b0 in range(0, n, BLOCK):
            yb = y[r, b0 : min(b0 + BLOCK, n)]
            gb = g[r, b0 : min(b0 + BLOCK, n)]
            if log:
                total += loaded_sum((gb,), gb.shape[0], const(y, 0.0))
            else:
                total += _product_sum((gb, yb), yb.shape[0], const(y, 0.0))
        dot = const(y, total)
        yr, gr, dr = y[r], g[r], out[r]
        if log:
            for j in range(n):
                dr[j] = store(load(gr[j]) - exp_out(load(yr[j])) * dot, out)
        else:
            for j in range(n):
                dr[j] = store(load(yr[j]) * (load(gr[j]) - dot), out)


@kernel
def softmax_output_backward_strided(g, y, out, tile, log):
    """As softmax_output_backward_rows over axis 1 of (O, C, I), per tile of positions."""
    wide_vectors()
    outer, channels, inner = y.shape
    ntiles = (inner + tile - 1) // tile
    for w in prange(outer * ntiles):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        total = np.zeros(n, dtype=np.float64)
        for c in range(channels):
            yc, gc = y[o, c, p0 : p0 + n], g[o, c, p0 : p0 + n]
            if log:
                for t in range(n):
                    total[t] += load(gc[t])
            else:
                for t in range(n):
                    total[t] += load(gc[t]) * load(yc[t])
        dot = np.full(n, const(y, 0.0))
        for t in range(n):
            dot[t] = const(y, total[t])
        for c in range(channels):
            yc, gc, dc = y[o, c, p0 : p0 + n], g[o, c, p0 : p0 + n], out[o, c, p0 : p0 + n]
            if log:
                for t in range(n):
                    dc[t] = store(load(gc[t]) - exp_out(load(yc[t])) * dot[t], out)
            else:
                for t in range(n):
                    dc[t] = store(load(yc[t]) * (load(gc[t]) - dot[t]), out)
