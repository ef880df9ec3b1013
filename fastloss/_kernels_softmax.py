"""Kernels of the softmax family on the canonical views.

Two layouts reach these kernels, both C-contiguous:

* rows ``(R, C)``: the reduced axis is the last one. Each row is read once from memory by
  the blockwise online (running max, rescaled sum) recurrence; output passes re-read it from
  L1/L2.
* strided ``(O, C, I)`` with I > 1: the reduced axis has stride I. Work items are
  (o, tile of T contiguous positions along I); every pass runs ``for c: for t in tile`` so the
  inner loop is contiguous and vectorizes, with per-position state arrays. There is never a
  transposed copy.

Sums of exponentials are accumulated per block in the compute type and across blocks in
float64, so float32 results are more accurate than torch's (which sums a whole row in float32
lanes). The per-row state is (m, s): m the maximum, s = sum exp(x - m) in float64; two states
merge associatively, which lets a long row be split across threads.

Special rows never take the fast path's formulas: a row whose maximum is not finite, or whose
sum is NaN, is resolved by ``_special_lse`` exactly as torch does (any NaN -> NaN, else any
+inf -> +inf, else -inf), and softmax-type outputs of such rows are all NaN.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import inline, jit, kernel
from ._math import (
    BLOCK,
    add_exact,
    compute_empty,
    const,
    exp_fine,
    exp_out,
    exp_overflows,
    exp_sum,
    fmax,
    lane_sum_of,
    load,
    loaded_sum,
    log1p_unit,
    log_pos,
    log_prob,
    mul_exact,
    store,
    sub_exact,
    wide_vectors,
)

# ---------------------------------------------------------------------------------------------
# Row layout helpers


@jit
def _exp_term(args, j):
    block, m = args
    return exp_sum(load(block[j]) - m)


_exp_block_sum = lane_sum_of(_exp_term)


@jit
def _row_state(x, r, start, stop):
    """(max, float64 sum of exp(x - max)) of x[r, start:stop], reading it from memory once."""
    wide_vectors()
    # Loops index 1-d slices from 0: an index Numba cannot prove non-negative gets a
    # wraparound select, and LLVM then emits gathers instead of contiguous vector loads.
    row = x[r]
    neg_inf = const(x, -np.inf)
    if stop - start <= BLOCK:
        # One block: a plain max pass and sum pass, without the online bookkeeping that costs
        # more than the work on short rows. Rows with no finite maximum take the general path.
        block = row[start:stop]
        m = neg_inf
        for j in range(block.shape[0]):
            m = fmax(m, load(block[j]))
        if m > neg_inf:
            return m, np.float64(_exp_block_sum((block, m), block.shape[0], const(x, 0.0)))
    m = neg_inf
    s = 0.0
    for b0 in range(start, stop, BLOCK):
        block = row[b0 : min(b0 + BLOCK, stop)]
        bm = neg_inf
        for j in range(block.shape[0]):
            bm = fmax(bm, load(block[j]))
        if bm > m:
            if s != 0.0:  # nothing to rescale in the first block, which saves an exp per row
                s *= exp_sum(np.float64(m) - np.float64(bm))
            m = bm
        if m == neg_inf:
            # Nothing finite yet: the block is -inf and NaN, which fmax skips. Record NaN here,
            # because rescaling a later block cannot carry it.
            for j in range(block.shape[0]):
                v = load(block[j])
                if v != v:
                    s = np.nan
            continue
        s += _exp_block_sum((block, m), block.shape[0], const(x, 0.0))
    return m, s


@jit
def _is_regular(m, s):
    """The state describes a row whose lse is finite (no NaN, no +inf, something finite)."""
    return m > -np.inf and m < np.inf and s == s


@jit
def _special_lse_row(x, r):
    """torch's logsumexp of a row whose state is not regular."""
    wide_vectors()
    result = -np.inf
    row = x[r]
    for j in range(row.shape[0]):
        v = np.float64(load(row[j]))
        if v != v:
            return np.nan
        if v == np.inf:
            result = np.inf
    return result


@jit
def _row_lse(x, r):
    m, s = _row_state(x, r, 0, x.shape[1])
    if _is_regular(m, s):
        return np.float64(m) + log_pos(s)
    return _special_lse_row(x, r)


@jit
def _fill_row_nan(out, r):
    wide_vectors()
    nan = store(np.nan, out)
    row = out[r]
    for j in range(row.shape[0]):
        row[j] = nan


@jit
def _row_log_sum(x, m, s):
    """log(s) in the compute type, the shift used as exp((x - m) - log s)."""
    return const(x, log_pos(s))


@jit
def _lse_shift(x, m, s):
    """lse - m as the float64 logsumexp leaves it: log s, unless m + log s rounds to m.

    torch's gradient of logsumexp is exp(x - lse) with lse as computed; when |m| is so large
    that log s vanishes in m + log s, torch (and the float64 reference) get exp(x - m).
    """
    m64 = np.float64(m)
    return const(x, sub_exact(add_exact(m64, log_pos(s)), m64))


@jit
def _weighted_probability_term(args, j):
    g, x, m, log_s = args
    return load(g[j]) * exp_out(log_prob(load(x[j]), m, log_s))


_weighted_probability_sum = lane_sum_of(_weighted_probability_term)


@jit
def _row_dot(g, x, r, m, log_s, with_probabilities):
    """sum_j g[r, j] * p[r, j] (or sum_j g[r, j]), blockwise with a float64 total."""
    wide_vectors()
    n = x.shape[1]
    total = 0.0
    for b0 in range(0, n, BLOCK):
        xb = x[r, b0 : min(b0 + BLOCK, n)]
        gb = g[r, b0 : min(b0 + BLOCK, n)]
        if with_probabilities:
            total += _weighted_probability_sum((gb, xb, m, log_s), xb.shape[0], const(x, 0.0))
        else:
            total += loaded_sum((gb,), gb.shape[0], const(x, 0.0))
    return total


# ---------------------------------------------------------------------------------------------
# Row layout kernels


@kernel
def lse_rows(x, out):
    """out[r] = logsumexp(x[r, :])."""
    wide_vectors()
    for r in prange(x.shape[0]):
        wide_vectors()
        out[r] = store(_row_lse(x, r), out)


# Fewer than SPLIT_MAX_ROWS rows of at least 2 * SPLIT_CHUNK elements are split into chunks
# (whose states merge in a fixed order), so that even one long row keeps every thread busy.
SPLIT_CHUNK = 65536
SPLIT_MAX_ROWS = 8


@kernel
def lse_rows_split(x, out, chunk):
    """logsumexp of few long rows: chunks of each row in parallel, states merged in order."""
    wide_vectors()
    rows, n = x.shape
    chunks = (n + chunk - 1) // chunk
    maxima = np.empty((rows, chunks), dtype=np.float64)
    sums = np.empty((rows, chunks), dtype=np.float64)
    for w in prange(rows * chunks):
        wide_vectors()
        r = w // chunks
        k = w % chunks
        m, s = _row_state(x, r, k * chunk, min((k + 1) * chunk, n))
        maxima[r, k] = m
        sums[r, k] = s
    for r in range(rows):
        m = -np.inf
        for k in range(chunks):
            m = max(m, maxima[r, k])
        s = 0.0
        for k in range(chunks):
            if maxima[r, k] > -np.inf:
                s += sums[r, k] * exp_sum(maxima[r, k] - m)
            else:
                s += sums[r, k]  # 0, or NaN carried from an all -inf/NaN chunk
        if _is_regular(m, s):
            out[r] = store(m + log_pos(s), out)
        else:
            out[r] = store(_special_lse_row(x, r), out)


@kernel
def softmax_rows(x, out, log):
    """out = softmax(x) or log_softmax(x) along rows."""
    wide_vectors()
    n = x.shape[1]
    for r in prange(x.shape[0]):
        wide_vectors()
        m, s = _row_state(x, r, 0, x.shape[1])
        if not _is_regular(m, s):
            _fill_row_nan(out, r)
            continue
        log_s = _row_log_sum(x, m, s)
        xr, yr = x[r], out[r]
        if log:
            for j in range(n):
                yr[j] = store(log_prob(load(xr[j]), m, log_s), out)
        else:
            for j in range(n):
                yr[j] = store(exp_out(log_prob(load(xr[j]), m, log_s)), out)


@kernel
def softmax_backward_rows(g, x, out, log):
    """Gradient of softmax (log=False) or log_softmax (log=True) along rows.

    softmax:     dx = p * (g - sum(g * p))
    log_softmax: dx = g - p * sum(g)
    """
    wide_vectors()
    n = x.shape[1]
    for r in prange(x.shape[0]):
        wide_vectors()
        m, s = _row_state(x, r, 0, x.shape[1])
        if not _is_regular(m, s):
            _fill_row_nan(out, r)
            continue
        log_s = _row_log_sum(x, m, s)
        dot = const(x, _row_dot(g, x, r, m, log_s, not log))
        xr, gr, yr = x[r], g[r], out[r]
        if log:
            for j in range(n):
                p = exp_out(log_prob(load(xr[j]), m, log_s))
                yr[j] = store(load(gr[j]) - p * dot, out)
        else:
            for j in range(n):
                p = exp_out(log_prob(load(xr[j]), m, log_s))
                yr[j] = store(p * (load(gr[j]) - dot), out)


@kernel
def lse_backward_rows(g, x, out):
    """dx[r, j] = g[r] * exp(x[r, j] - lse[r])."""
    wide_vectors()
    n = x.shape[1]
    for r in prange(x.shape[0]):
        wide_vectors()
        m, s = _row_state(x, r, 0, x.shape[1])
        gr = load(g[r])
        xr, yr = x[r], out[r]
        if _is_regular(m, s):
            shift = _lse_shift(x, m, s)
            for j in range(n):
                yr[j] = store(gr * exp_out(log_prob(load(xr[j]), m, shift)), out)
        else:
            # -inf entries get 0, +inf entries NaN, and an all -inf row NaN, as torch.
            lse = const(x, _special_lse_row(x, r))
            for j in range(n):
                yr[j] = store(gr * exp_out(load(xr[j]) - lse), out)


# ---------------------------------------------------------------------------------------------
# Strided layout helpers


@inline
def _fold_partials(total, partial, n, first):
    """total[:n] (float64) = partial[:n] (a block of classes' compute-type sums), or += it."""
    if first:
        for t in range(n):
            total[t] = np.float64(partial[t])
    else:
        for t in range(n):
            total[t] = total[t] + np.float64(partial[t])


@jit
def _tile_bounds(w, ntiles, tile, inner):
    """Work item w -> (slab o, first position p0, positions n) of its tile."""
    o = w // ntiles
    p0 = (w % ntiles) * tile
    return o, p0, min(tile, inner - p0)


# Channels whose exponentials are summed in the compute type before the partial sums join the
# float64 per-position totals: the strided counterpart of BLOCK, a few ulp of float32 per
# partial sum, without a float64 conversion and add for every element.
CHANNEL_BLOCK = 32


@jit
def _tile_scratch(x, rows, n):
    """rows x n uninitialized values in the compute type of x: one allocation for a tile's
    per-position state arrays (every pass writes a row before it reads it)."""
    return compute_empty(x, rows, n)


@jit
def _tile_max(x, o, p0, n, m):
    """m[t] = max over the C axis at position p0 + t of slab o (NaN skipped)."""
    wide_vectors()
    neg_inf = const(x, -np.inf)
    for t in range(n):
        m[t] = neg_inf
    for c in range(x.shape[1]):
        xc = x[o, c, p0 : p0 + n]
        for t in range(n):
            m[t] = fmax(m[t], load(xc[t]))


@jit
def _tile_sums(x, o, p0, n, m, s, acc, e):
    """s[t] = sum_c exp(x[o, c, p0 + t] - m[t]) as float64, summed in the compute type over
    CHANNEL_BLOCK channels at a time (in acc) and across blocks in float64.

    When e has rows, e[c, t] keeps each exponential (exact 0 below the normal range, as
    exp_out), so a later pass multiplies instead of evaluating exp again.
    """
    wide_vectors()
    channels = x.shape[1]
    keep = e.shape[0] > 0
    zero = const(x, 0.0)
    for c0 in range(0, channels, CHANNEL_BLOCK):
        for t in range(n):
            acc[t] = zero
        for c in range(c0, min(c0 + CHANNEL_BLOCK, channels)):
            xc = x[o, c, p0 : p0 + n]
            if keep:
                ec = e[c]
                for t in range(n):
                    v = exp_out(load(xc[t]) - m[t])
                    ec[t] = v
                    acc[t] = acc[t] + v
            else:
                for t in range(n):
                    acc[t] = acc[t] + exp_sum(load(xc[t]) - m[t])
        _fold_partials(s, acc, n, c0 == 0)


@jit
def _tile_state(x, o, p0, n):
    """Per-position (max, float64 sum) over the C axis for positions p0 .. p0+n of slab o."""
    state = _tile_scratch(x, 2, n)
    m, acc = state[0], state[1]
    s = np.empty(n, dtype=np.float64)
    _tile_max(x, o, p0, n, m)
    _tile_sums(x, o, p0, n, m, s, acc, _tile_scratch(x, 0, 0))
    return m, s


@jit
def _tile_log_sums(x, m, s, log_s):
    """log_s[t] = log(s[t]) in the compute type; returns whether any position is special."""
    wide_vectors()
    specials = 0
    for t in range(m.shape[0]):
        log_s[t] = const(x, log_pos(s[t]))
        specials += not _is_regular(m[t], s[t])
    return specials > 0


@jit
def _special_lse_column(x, o, p):
    wide_vectors()
    result = -np.inf
    column = x[o, :, p]
    for c in range(column.shape[0]):
        v = np.float64(load(column[c]))
        if v != v:
            return np.nan
        if v == np.inf:
            result = np.inf
    return result


@jit
def _fill_special_columns_nan(out, o, p0, m, s):
    wide_vectors()
    nan = store(np.nan, out)
    for t in range(m.shape[0]):
        if not _is_regular(m[t], s[t]):
            column = out[o, :, p0 + t]
            for c in range(column.shape[0]):
                column[c] = nan


# ---------------------------------------------------------------------------------------------
# Strided layout kernels


@kernel
def lse_strided(x, out, tile):
    """out[o, i] = logsumexp(x[o, :, i])."""
    wide_vectors()
    outer, _, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    items = outer * ntiles
    no_e = _tile_scratch(x, 0, 0)
    for w in prange(items):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        state = _tile_scratch(x, 2, n)
        m, acc = state[0], state[1]
        s = np.empty(n, dtype=np.float64)
        _tile_max(x, o, p0, n, m)
        _tile_sums(x, o, p0, n, m, s, acc, no_e)
        ot = out[o, p0 : p0 + n]
        specials = 0
        for t in range(n):
            ot[t] = store(np.float64(m[t]) + log_pos(s[t]), out)
            specials += not _is_regular(m[t], s[t])
        if specials:
            for t in range(n):
                if not _is_regular(m[t], s[t]):
                    ot[t] = store(_special_lse_column(x, o, p0 + t), out)


@kernel
def softmax_strided(x, out, tile, log):
    """softmax or log_softmax over axis 1 of (O, C, I)."""
    wide_vectors()
    outer, channels, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    items = outer * ntiles
    for w in prange(items):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        state = _tile_scratch(x, 3, n)
        m, acc, shift = state[0], state[1], state[2]
        s = np.empty(n, dtype=np.float64)
        # softmax keeps the tile's exponentials (C x n) and scales them by 1 / s.
        e = _tile_scratch(x, 0 if log else channels, n)
        _tile_max(x, o, p0, n, m)
        _tile_sums(x, o, p0, n, m, s, acc, e)
        any_special = _tile_log_sums(x, m, s, shift)
        if log:
            for c in range(channels):
                xc, yc = x[o, c, p0 : p0 + n], out[o, c, p0 : p0 + n]
                for t in range(n):
                    yc[t] = store(log_prob(load(xc[t]), m[t], shift[t]), out)
        else:
            for t in range(n):
                shift[t] = const(x, 1.0 / s[t])  # now the reciprocal sum
            for c in range(channels):
                ec, yc = e[c], out[o, c, p0 : p0 + n]
                for t in range(n):
                    yc[t] = store(ec[t] * shift[t], out)
        if any_special:
            _fill_special_columns_nan(out, o, p0, m, s)


@kernel
def softmax_backward_strided(g, x, out, tile, log):
    """Gradient of softmax / log_softmax over axis 1 of (O, C, I); see softmax_backward_rows."""
    wide_vectors()
    outer, channels, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    items = outer * ntiles
    no_e = _tile_scratch(x, 0, 0)
    for w in prange(items):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        state = _tile_scratch(x, 4, n)
        m, acc, log_s, dot_c = state[0], state[1], state[2], state[3]
        s = np.empty(n, dtype=np.float64)
        _tile_max(x, o, p0, n, m)
        _tile_sums(x, o, p0, n, m, s, acc, no_e)
        any_special = _tile_log_sums(x, m, s, log_s)
        dot = np.zeros(n, dtype=np.float64)
        for c in range(channels):
            xc, gc = x[o, c, p0 : p0 + n], g[o, c, p0 : p0 + n]
            if log:
                for t in range(n):
                    dot[t] += load(gc[t])
            else:
                for t in range(n):
                    p = exp_out(log_prob(load(xc[t]), m[t], log_s[t]))
                    dot[t] += load(gc[t]) * p
        for t in range(n):
            dot_c[t] = const(x, dot[t])
        for c in range(channels):
            xc, gc, yc = x[o, c, p0 : p0 + n], g[o, c, p0 : p0 + n], out[o, c, p0 : p0 + n]
            if log:
                for t in range(n):
                    p = exp_out(log_prob(load(xc[t]), m[t], log_s[t]))
                    yc[t] = store(load(gc[t]) - p * dot_c[t], out)
            else:
                for t in range(n):
                    p = exp_out(log_prob(load(xc[t]), m[t], log_s[t]))
                    yc[t] = store(p * (load(gc[t]) - dot_c[t]), out)
        if any_special:
            _fill_special_columns_nan(out, o, p0, m, s)


@kernel
def lse_backward_strided(g, x, out, tile):
    """dx[o, c, i] = g[o, i] * exp(x[o, c, i] - lse[o, i])."""
    wide_vectors()
    outer, channels, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    items = outer * ntiles
    no_e = _tile_scratch(x, 0, 0)
    for w in prange(items):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        state = _tile_scratch(x, 3, n)
        m, acc, log_s = state[0], state[1], state[2]
        s = np.empty(n, dtype=np.float64)
        _tile_max(x, o, p0, n, m)
        _tile_sums(x, o, p0, n, m, s, acc, no_e)
        any_special = _tile_log_sums(x, m, s, log_s)
        for t in range(n):
            log_s[t] = _lse_shift(x, m[t], s[t])
        gt = g[o, p0 : p0 + n]
        for c in range(channels):
            xc, yc = x[o, c, p0 : p0 + n], out[o, c, p0 : p0 + n]
            for t in range(n):
                p = exp_out(log_prob(load(xc[t]), m[t], log_s[t]))
                yc[t] = store(load(gt[t]) * p, out)
        if any_special:
            for t in range(n):
                if not _is_regular(m[t], s[t]):
                    lse = const(x, _special_lse_column(x, o, p0 + t))
                    xcol, ycol = x[o, :, p0 + t], out[o, :, p0 + t]
                    for c in range(channels):
                        ycol[c] = store(load(gt[t]) * exp_out(load(xcol[c]) - lse), out)


# ---------------------------------------------------------------------------------------------
# Elementwise: sigmoid and logsigmoid on flat arrays


@jit
def _sigmoid(v, one):
    """1 / (1 + exp(-v)) from exp(-|v|), which never overflows; 0 where torch's exp(-v)
    overflows, subnormal just above."""
    e = exp_fine(-abs(v))
    if v >= 0:
        return one / (one + e)
    return one - one if exp_overflows(v) else e / (one + e)


@kernel
def sigmoid_flat(x, out):
    wide_vectors()
    one = const(x, 1.0)
    for i in prange(x.shape[0]):
        wide_vectors()
        out[i] = store(_sigmoid(load(x[i]), one), out)


@kernel
def sigmoid_backward_flat(g, x, out):
    wide_vectors()
    one = const(x, 1.0)
    for i in prange(x.shape[0]):
        wide_vectors()
        sig = _sigmoid(load(x[i]), one)
        # Fixed association: reassociated differently in the serial and the parallel twin,
        # g * sig * (1 - sig) rounded differently in each.
        out[i] = store(mul_exact(mul_exact(load(g[i]), sig), sub_exact(one, sig)), out)


@kernel
def logsigmoid_flat(x, out):
    """log sigmoid(x) = min(x, 0) - log1p(exp(-|x|))."""
    wide_vectors()
    zero = const(x, 0.0)
    for i in prange(x.shape[0]):
        wide_vectors()
        v = load(x[i])
        out[i] = store(min(v, zero) - log1p_unit(exp_fine(-abs(v))), out)


@kernel
def logsigmoid_backward_flat(g, x, out):
    """d/dx log sigmoid(x) = sigmoid(-x)."""
    wide_vectors()
    one = const(x, 1.0)
    for i in prange(x.shape[0]):
        wide_vectors()
        v = load(x[i])
        e = exp_fine(-abs(v))
        out[i] = store(load(g[i]) * (e / (one + e) if v >= 0 else one / (one + e)), out)
