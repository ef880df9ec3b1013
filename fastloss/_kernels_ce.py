"""Fused cross-entropy and NLL kernels: loss and gradient in one pass over memory.

Layouts are the canonical ones of ``_kernels_softmax``: rows ``(R, C)`` with targets ``(R,)``,
or strided ``(O, C, I)`` with targets ``(O, I)`` for spatial inputs (class axis 1, positions
contiguous along I, tiled so every inner loop is contiguous).

Every kernel writes the per-row loss into a float64 array ``row_loss`` (the Python layer
reduces it in a fixed order, so 'mean' and 'sum' are deterministic for any thread count) and,
when ``want_grad`` is set, the gradient into ``grad``. No kernel writes an N x C array unless
it is the gradient.

Upstream gradients arrive as ``upstream[r * upstream_step]``: step 0 broadcasts one scalar
('mean'/'sum', already divided by the mean's denominator), step 1 reads one value per row
('none').

Targets were validated by the Python layer; the kernels still treat any target outside
[0, C) as ignored, so no input can make them index memory out of bounds.

Index-target cross-entropy per row, with p = softmax(x), lse = logsumexp(x), S = sum_c w_c:

    loss = (1 - eps) w_t (lse - x_t) + (eps / C) (S lse - sum_c w_c x_c)
    grad_c = g [ p_c ((1 - eps) w_t + eps S / C) - (eps / C) w_c - (1 - eps) w_t [c == t] ]

Probability targets, with y'_c = (1 - eps) y_c + eps / C, A = sum_c w_c y'_c and
B = sum_c w_c y'_c x_c:

    loss = A lse - B,      grad_c = g (A p_c - w_c y'_c)
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import jit, kernel
from ._kernels_softmax import (
    BLOCK,
    _fill_row_nan,
    _is_regular,
    _row_state,
    _tile_log_sums,
    _tile_state,
)
from ._math import const, exp_out, load, log_pos, store, wide_vectors


@jit
def _zero_row(grad, r):
    wide_vectors()
    zero = store(0.0, grad)
    row = grad[r]
    for j in range(row.shape[0]):
        row[j] = zero


@jit
def _weighted_sum_row(x, r, weight):
    """sum_c w_c x[r, c]: compute-type partial sums per block, float64 across blocks."""
    wide_vectors()
    row = x[r]
    classes = row.shape[0]
    total = 0.0
    for b0 in range(0, classes, BLOCK):
        xb = row[b0 : min(b0 + BLOCK, classes)]
        wb = weight[b0 : min(b0 + BLOCK, classes)]
        acc = const(x, 0.0)
        for j in range(xb.shape[0]):
            acc += wb[j] * load(xb[j])
        total += acc
    return total


@jit
def _target_sums_row(x, y, r, weight, keep, uniform):
    """(A, B) = (sum_c w_c y'_c, sum_c w_c y'_c x_c) with y' = keep * y + uniform."""
    wide_vectors()
    xr, yr = x[r], y[r]
    classes = xr.shape[0]
    a = 0.0
    b = 0.0
    for b0 in range(0, classes, BLOCK):
        b1 = min(b0 + BLOCK, classes)
        xb, yb, wb = xr[b0:b1], yr[b0:b1], weight[b0:b1]
        a_acc = const(x, 0.0)
        b_acc = const(x, 0.0)
        for j in range(xb.shape[0]):
            wy = wb[j] * (keep * load(yb[j]) + uniform)
            a_acc += wy
            b_acc += wy * load(xb[j])
        a += a_acc
        b += b_acc
    return a, b


# ---------------------------------------------------------------------------------------------
# Index targets, rows


@kernel
def cross_entropy_rows(
    x, target, weight, weight_sum, ignore_index, eps, upstream, upstream_step, want_grad,
    row_loss, row_smooth, grad,
):
    """Index targets on rows. row_loss gets w_t (lse - x_t), row_smooth S lse - sum w_c x_c
    (when eps > 0): torch reduces the two terms separately, which matters when 'mean' divides
    by a zero weight sum."""
    wide_vectors()
    rows, classes = x.shape
    smoothing = eps > 0.0
    for r in prange(rows):
        wide_vectors()
        t = target[r]
        ignored = t == ignore_index or t < 0 or t >= classes
        if ignored and not want_grad:
            row_loss[r] = 0.0
            if smoothing:
                row_smooth[r] = 0.0
            continue
        m, s = _row_state(x, r, 0, classes)
        if ignored:
            # The loss is 0, but torch's gradient of a row whose softmax is NaN is NaN.
            row_loss[r] = 0.0
            if smoothing:
                row_smooth[r] = 0.0
            if _is_regular(m, s):
                _zero_row(grad, r)
            else:
                _fill_row_nan(grad, r)
            continue
        if not _is_regular(m, s):
            row_loss[r] = np.nan
            if smoothing:
                row_smooth[r] = np.nan
            if want_grad:
                _fill_row_nan(grad, r)
            continue
        log_s = log_pos(s)
        lse = np.float64(m) + log_s
        w_t = np.float64(weight[t])
        row_loss[r] = w_t * (lse - np.float64(load(x[r, t])))
        if smoothing:
            row_smooth[r] = weight_sum * lse - _weighted_sum_row(x, r, weight)
        if not want_grad:
            continue
        g = np.float64(load(upstream[r * upstream_step]))
        scale = const(x, g * ((1.0 - eps) * w_t + eps * weight_sum / classes))
        log_s_c = const(x, log_s)
        xr, gr = x[r], grad[r]
        if smoothing:
            per_class = const(x, g * eps / classes)
            for j in range(classes):
                p = exp_out((load(xr[j]) - m) - log_s_c)
                gr[j] = store(scale * p - per_class * weight[j], grad)
        else:
            for j in range(classes):
                p = exp_out((load(xr[j]) - m) - log_s_c)
                gr[j] = store(scale * p, grad)
        gr[t] = store(load(gr[t]) - const(x, g * (1.0 - eps) * w_t), grad)


@kernel
def nll_rows(x, target, weight, ignore_index, upstream, upstream_step, want_grad, row_loss, grad):
    wide_vectors()
    rows, classes = x.shape
    for r in prange(rows):
        wide_vectors()
        t = target[r]
        if want_grad:
            _zero_row(grad, r)
        if t == ignore_index or t < 0 or t >= classes:
            row_loss[r] = 0.0
            continue
        w_t = np.float64(weight[t])
        row_loss[r] = -w_t * np.float64(load(x[r, t]))
        if want_grad:
            g = np.float64(load(upstream[r * upstream_step]))
            grad[r, t] = store(-g * w_t, grad)


# ---------------------------------------------------------------------------------------------
# Probability targets, rows


@kernel
def cross_entropy_prob_rows(x, y, weight, eps, upstream, upstream_step, want_grad, row_loss, grad):
    wide_vectors()
    rows, classes = x.shape
    uniform = eps / classes
    keep = 1.0 - eps
    for r in prange(rows):
        wide_vectors()
        m, s = _row_state(x, r, 0, classes)
        xr, yr = x[r], y[r]
        keep_c, uniform_c = const(x, keep), const(x, uniform)
        a, b = _target_sums_row(x, y, r, weight, keep_c, uniform_c)
        if _is_regular(m, s):
            log_s = log_pos(s)
            row_loss[r] = a * (np.float64(m) + log_s) - b
        else:
            row_loss[r] = np.nan
            if want_grad:
                _fill_row_nan(grad, r)
            continue
        if not want_grad:
            continue
        g = np.float64(load(upstream[r * upstream_step]))
        ga, gc = const(x, g * a), const(x, g)
        log_s_c = const(x, log_s)
        gr = grad[r]
        for j in range(classes):
            p = exp_out((load(xr[j]) - m) - log_s_c)
            wy = weight[j] * (keep_c * load(yr[j]) + uniform_c)
            gr[j] = store(ga * p - gc * wy, grad)


# ---------------------------------------------------------------------------------------------
# Spatial (strided) layout


@jit
def _tile_bounds(w, ntiles, tile, inner):
    o = w // ntiles
    p0 = (w % ntiles) * tile
    return o, p0, min(tile, inner - p0)


@kernel
def cross_entropy_strided(
    x, target, weight, weight_sum, ignore_index, eps, upstream, upstream_step, want_grad,
    row_loss, row_smooth, grad, tile,
):
    """Index targets on (O, C, I); see cross_entropy_rows. Per-position outputs are (O * I,)
    in (o, i) order."""
    wide_vectors()
    outer, classes, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    smoothing = eps > 0.0
    for w in prange(outer * ntiles):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        m, s = _tile_state(x, o, p0, n)
        log_s, _ = _tile_log_sums(x, m, s)
        smooth = np.zeros(n, dtype=np.float64)
        if smoothing:
            for c in range(classes):
                xc = x[o, c, p0 : p0 + n]
                wc = weight[c]
                for t in range(n):
                    smooth[t] += wc * load(xc[t])
        scale = np.zeros(n, dtype=m.dtype)
        per_class = np.zeros(n, dtype=m.dtype)
        tt = target[o, p0 : p0 + n]
        for t in range(n):
            k = o * inner + p0 + t
            c_t = tt[t]
            if c_t == ignore_index or c_t < 0 or c_t >= classes:
                row_loss[k] = 0.0
                if smoothing:
                    row_smooth[k] = 0.0
                continue
            if not _is_regular(m[t], s[t]):
                row_loss[k] = np.nan
                if smoothing:
                    row_smooth[k] = np.nan
                continue
            lse = np.float64(m[t]) + np.float64(log_s[t])
            w_t = np.float64(weight[c_t])
            row_loss[k] = w_t * (lse - np.float64(load(x[o, c_t, p0 + t])))
            if smoothing:
                row_smooth[k] = weight_sum * lse - smooth[t]
            g = np.float64(load(upstream[k * upstream_step]))
            scale[t] = const(x, g * ((1.0 - eps) * w_t + eps * weight_sum / classes))
            per_class[t] = const(x, g * eps / classes)
        if not want_grad:
            continue
        for c in range(classes):
            xc, gc = x[o, c, p0 : p0 + n], grad[o, c, p0 : p0 + n]
            wc = weight[c]
            for t in range(n):
                p = exp_out((load(xc[t]) - m[t]) - log_s[t])
                gc[t] = store(scale[t] * p - per_class[t] * wc, grad)
        for t in range(n):
            k = o * inner + p0 + t
            c_t = tt[t]
            if not _is_regular(m[t], s[t]):
                # NaN whether ignored or not: torch's gradient of a NaN softmax.
                column = grad[o, :, p0 + t]
                for c in range(classes):
                    column[c] = store(np.nan, grad)
                continue
            if c_t == ignore_index or c_t < 0 or c_t >= classes:
                continue  # scale and per_class are 0: the column is already 0
            g = np.float64(load(upstream[k * upstream_step]))
            w_t = np.float64(weight[c_t])
            grad[o, c_t, p0 + t] = store(
                load(grad[o, c_t, p0 + t]) - const(x, g * (1.0 - eps) * w_t), grad
            )


@kernel
def nll_strided(
    x, target, weight, ignore_index, upstream, upstream_step, want_grad, row_loss, grad, tile
):
    wide_vectors()
    outer, classes, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    for w in prange(outer * ntiles):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        if want_grad:
            zero = store(0.0, grad)
            for c in range(classes):
                gc = grad[o, c, p0 : p0 + n]
                for t in range(n):
                    gc[t] = zero
        tt = target[o, p0 : p0 + n]
        for t in range(n):
            k = o * inner + p0 + t
            c_t = tt[t]
            if c_t == ignore_index or c_t < 0 or c_t >= classes:
                row_loss[k] = 0.0
                continue
            w_t = np.float64(weight[c_t])
            row_loss[k] = -w_t * np.float64(load(x[o, c_t, p0 + t]))
            if want_grad:
                g = np.float64(load(upstream[k * upstream_step]))
                grad[o, c_t, p0 + t] = store(-g * w_t, grad)


@kernel
def cross_entropy_prob_strided(
    x, y, weight, eps, upstream, upstream_step, want_grad, row_loss, grad, tile
):
    wide_vectors()
    outer, classes, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    keep_c, uniform_c = const(x, 1.0 - eps), const(x, eps / classes)
    for w in prange(outer * ntiles):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        m, s = _tile_state(x, o, p0, n)
        log_s, _ = _tile_log_sums(x, m, s)
        a = np.zeros(n, dtype=np.float64)
        b = np.zeros(n, dtype=np.float64)
        for c in range(classes):
            xc, yc = x[o, c, p0 : p0 + n], y[o, c, p0 : p0 + n]
            wc = weight[c]
            for t in range(n):
                wy = wc * (keep_c * load(yc[t]) + uniform_c)
                a[t] += wy
                b[t] += wy * load(xc[t])
        ga = np.zeros(n, dtype=m.dtype)
        gs = np.zeros(n, dtype=m.dtype)
        for t in range(n):
            k = o * inner + p0 + t
            if _is_regular(m[t], s[t]):
                row_loss[k] = a[t] * (np.float64(m[t]) + np.float64(log_s[t])) - b[t]
            else:
                row_loss[k] = np.nan
            g = np.float64(load(upstream[k * upstream_step]))
            ga[t] = const(x, g * a[t])
            gs[t] = const(x, g)
        if not want_grad:
            continue
        for c in range(classes):
            xc, yc, gc = x[o, c, p0 : p0 + n], y[o, c, p0 : p0 + n], grad[o, c, p0 : p0 + n]
            wc = weight[c]
            for t in range(n):
                p = exp_out((load(xc[t]) - m[t]) - log_s[t])
                wy = wc * (keep_c * load(yc[t]) + uniform_c)
                gc[t] = store(ga[t] * p - gs[t] * wy, grad)
        for t in range(n):
            if not _is_regular(m[t], s[t]):
                column = grad[o, :, p0 + t]
                for c in range(classes):
                    column[c] = store(np.nan, grad)
