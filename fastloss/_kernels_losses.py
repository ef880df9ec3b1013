"""Fused kernels of the elementwise losses (kl_div, binary cross-entropy with and without
logits, mse) and of multi_margin_loss: value and gradient in one pass over memory.

Elementwise kernels see flat C-contiguous arrays of one length n, every operand already
broadcast to the loss shape by the Python layer. The work is cut into fixed chunks of
``CHUNK`` elements; each chunk's loss sum is accumulated in float64 into ``partials[chunk]``,
and the Python layer adds the partials in a fixed order, so 'mean' and 'sum' are bitwise the
same for any thread count. Within a chunk, one loop computes each element's loss and
derivative once (``_<loss>_element``), stores the gradient, and stores the loss into a float64
scratch array, which ``lane_sum`` then adds in an order fixed by the code itself (explicit
running sums, _math.lane_sum_of), never by the compiler.

Optional operands and outputs are ``None`` or an array. Numba compiles one specialisation per
combination and prunes every ``is None`` branch at compile time, so each inner loop holds only
the arithmetic its call needs, and vectorizes:

* ``loss``: per-element losses ('none'), or None;
* ``grad``: the gradient, or None (forward only);
* ``g_array``: one upstream value per element ('none'); when None, every element uses the
  scalar ``g_scale`` (1 for 'sum', 1 / denominator for 'mean', times a scalar grad_output);
* ``weight`` / ``pos_weight``: per-element factors, or None.

multi_margin_loss works on rows ``(N, C)`` with int64 targets already checked to lie in
[0, C): its per-row loss goes to a float64 array, reduced by the Python layer like the
partials.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import inline, jit, kernel
from ._kernels_softmax import _sigmoid
from ._math import (
    const,
    exp_any,
    exp_fine,
    fmax,
    load,
    loaded_sum,
    log1m_unit,
    log1p_unit,
    log_any,
    store,
    wide_vectors,
)

CHUNK = 8192


def chunk_count(n: int) -> int:
    return -(-n // CHUNK)


@jit
def lane_sum(values, n):
    """sum(values[:n]) in the fixed order of _math.lane_sum_of, for a call from Python (or
    a short signature)."""
    return loaded_sum((values[:n],), n, const(values, 0.0))


# ---------------------------------------------------------------------------------------------
# kl_div: t (log t - x), or exp(t) (t - x) with log_target


@inline
def _kl_element(xv, tv, zero):
    # xlogy(t, t) - t x: 0 at t = 0, NaN for t < 0; t = 0 with x = -inf gives 0 - (0 * -inf)
    # = NaN, as torch.
    t_log_t = zero if tv == zero else tv * log_any(tv)
    return t_log_t - tv * xv, -tv


@inline
def _kl_log_element(xv, tv):
    et = exp_any(tv)
    return et * (tv - xv), -et  # t = -inf: 0 * inf = NaN, as torch


@kernel
def kl_div_flat(x, t, log_target, g_scale, g_array, loss, partials, grad):
    wide_vectors()
    n = x.shape[0]
    for c in prange(partials.shape[0]):
        wide_vectors()
        # Loops index slices from 0: an index Numba cannot prove non-negative gets a
        # wraparound select, and LLVM then gathers instead of loading vectors.
        start, stop = c * CHUNK, min((c + 1) * CHUNK, n)
        xs, ts = x[start:stop], t[start:stop]
        gs = None if g_array is None else g_array[start:stop]
        grs = None if grad is None else grad[start:stop]
        # The losses ('none'), or a float64 scratch copy of them for the chunk's sum.
        ls = None if loss is None else loss[start:stop]
        values = np.empty(xs.shape[0] if loss is None else 0, dtype=np.float64)
        g = const(x, g_scale)
        zero = const(x, 0.0)
        if log_target:
            for j in range(xs.shape[0]):
                value, d = _kl_log_element(load(xs[j]), load(ts[j]))
                if ls is None:
                    values[j] = value
                else:
                    ls[j] = store(value, loss)
                if grs is not None:
                    grs[j] = store(d * (g if gs is None else load(gs[j])), grad)
        else:
            for j in range(xs.shape[0]):
                value, d = _kl_element(load(xs[j]), load(ts[j]), zero)
                if ls is None:
                    values[j] = value
                else:
                    ls[j] = store(value, loss)
                if grs is not None:
                    grs[j] = store(d * (g if gs is None else load(gs[j])), grad)
        partials[c] = lane_sum(values, values.shape[0])


# ---------------------------------------------------------------------------------------------
# binary_cross_entropy on probabilities


@inline
def _bce_element(xv, yv, zero, one, floor, eps):
    """-(y max(log x, -100) + (1 - y) max(log(1 - x), -100)), and its derivative
    (x - y) / max(x (1 - x), eps) (torch's eps is the float32 1e-12, also for float64)."""
    log_x = fmax(log_any(xv), floor)
    log_1mx = fmax(log1m_unit(xv), floor)
    return (yv - one) * log_1mx - yv * log_x, (xv - yv) / fmax((one - xv) * xv, eps)


@kernel
def binary_cross_entropy_flat(x, y, weight, g_scale, g_array, loss, partials, invalid, grad):
    """Values outside [0, 1] (and NaN) are counted per chunk in ``invalid[c] = (inputs,
    targets)``; the Python layer raises when any is found and discards the outputs, which
    are fresh arrays whenever this check runs (a caller's ``out`` is validated beforehand).
    """
    wide_vectors()
    n = x.shape[0]
    for c in prange(partials.shape[0]):
        wide_vectors()
        start, stop = c * CHUNK, min((c + 1) * CHUNK, n)
        xs, ys = x[start:stop], y[start:stop]
        ws = None if weight is None else weight[start:stop]
        gs = None if g_array is None else g_array[start:stop]
        grs = None if grad is None else grad[start:stop]
        ls = None if loss is None else loss[start:stop]
        values = np.empty(xs.shape[0] if loss is None else 0, dtype=np.float64)
        g = const(x, g_scale)
        zero, one = const(x, 0.0), const(x, 1.0)
        floor = const(x, -100.0)
        eps = const(x, np.float32(1e-12))
        bad_x = 0
        bad_y = 0
        for j in range(xs.shape[0]):
            xv, yv = load(xs[j]), load(ys[j])
            bad_x += 0 if (xv >= zero and xv <= one) else 1
            bad_y += 0 if (yv >= zero and yv <= one) else 1
            value, d = _bce_element(xv, yv, zero, one, floor, eps)
            w = one if ws is None else load(ws[j])
            if ls is None:
                values[j] = value * w
            else:
                ls[j] = store(value * w, loss)
            if grs is not None:
                grs[j] = store((g if gs is None else load(gs[j])) * d * w, grad)
        partials[c] = lane_sum(values, values.shape[0])
        invalid[c, 0] = bad_x
        invalid[c, 1] = bad_y


@kernel
def count_outside_unit(x, y, invalid):
    """Only the [0, 1] checks of binary_cross_entropy_flat, for calls that write into ``out``."""
    wide_vectors()
    n = x.shape[0]
    for c in prange(invalid.shape[0]):
        wide_vectors()
        start, stop = c * CHUNK, min((c + 1) * CHUNK, n)
        xs, ys = x[start:stop], y[start:stop]
        zero, one = const(x, 0.0), const(x, 1.0)
        bad_x = 0
        bad_y = 0
        for j in range(xs.shape[0]):
            xv, yv = load(xs[j]), load(ys[j])
            bad_x += 0 if (xv >= zero and xv <= one) else 1
            bad_y += 0 if (yv >= zero and yv <= one) else 1
        invalid[c, 0] = bad_x
        invalid[c, 1] = bad_y


# ---------------------------------------------------------------------------------------------
# binary_cross_entropy_with_logits


@inline
def _bce_logits_element(xv, yv, zero, one):
    """(1 - y) x - log sigmoid(x), torch's formulation (log sigmoid(x) = min(x, 0) -
    log1p(exp(-|x|)) never overflows), and its derivative sigmoid(x) - y."""
    log_sig = min(xv, zero) - log1p_unit(exp_fine(-abs(xv)))
    return (one - yv) * xv - log_sig, _sigmoid(xv, one) - yv


@inline
def _bce_logits_pw_element(xv, yv, pw, zero, one):
    """(1 - y) x - (1 + (pw - 1) y) log sigmoid(x), and (pw y + 1 - y) sigmoid(x) - pw y."""
    log_sig = min(xv, zero) - log1p_unit(exp_fine(-abs(xv)))
    pw_y = pw * yv
    value = (one - yv) * xv - ((pw - one) * yv + one) * log_sig
    return value, (pw_y + one - yv) * _sigmoid(xv, one) - pw_y


@kernel
def binary_cross_entropy_with_logits_flat(
    x, y, weight, pos_weight, g_scale, g_array, loss, partials, grad
):
    """w ((1 - y) x - (1 + (pw - 1) y) log sigmoid(x)); see _bce_logits_pw_element."""
    wide_vectors()
    n = x.shape[0]
    for c in prange(partials.shape[0]):
        wide_vectors()
        start, stop = c * CHUNK, min((c + 1) * CHUNK, n)
        xs, ys = x[start:stop], y[start:stop]
        ws = None if weight is None else weight[start:stop]
        pws = None if pos_weight is None else pos_weight[start:stop]
        gs = None if g_array is None else g_array[start:stop]
        grs = None if grad is None else grad[start:stop]
        ls = None if loss is None else loss[start:stop]
        values = np.empty(xs.shape[0] if loss is None else 0, dtype=np.float64)
        g = const(x, g_scale)
        zero, one = const(x, 0.0), const(x, 1.0)
        for j in range(xs.shape[0]):
            if pws is None:
                value, d = _bce_logits_element(load(xs[j]), load(ys[j]), zero, one)
            else:
                value, d = _bce_logits_pw_element(load(xs[j]), load(ys[j]), load(pws[j]), zero, one)
            w = one if ws is None else load(ws[j])
            if ls is None:
                values[j] = value * w
            else:
                ls[j] = store(value * w, loss)
            if grs is not None:
                grs[j] = store(d * (g if gs is None else load(gs[j])) * w, grad)
        partials[c] = lane_sum(values, values.shape[0])


# ---------------------------------------------------------------------------------------------
# mse_loss


@kernel
def mse_flat(x, y, weight, g_scale, g_array, loss, partials, grad):
    """w (x - y)^2, gradient 2 w (x - y)."""
    wide_vectors()
    n = x.shape[0]
    for c in prange(partials.shape[0]):
        wide_vectors()
        start, stop = c * CHUNK, min((c + 1) * CHUNK, n)
        xs, ys = x[start:stop], y[start:stop]
        ws = None if weight is None else weight[start:stop]
        gs = None if g_array is None else g_array[start:stop]
        grs = None if grad is None else grad[start:stop]
        ls = None if loss is None else loss[start:stop]
        values = np.empty(xs.shape[0] if loss is None else 0, dtype=np.float64)
        g = const(x, g_scale)
        one, two = const(x, 1.0), const(x, 2.0)
        for j in range(xs.shape[0]):
            d = load(xs[j]) - load(ys[j])
            w = one if ws is None else load(ws[j])
            if ls is None:
                values[j] = d * d * w
            else:
                ls[j] = store(d * d * w, loss)
            if grs is not None:
                grs[j] = store(two * d * (g if gs is None else load(gs[j])) * w, grad)
        partials[c] = lane_sum(values, values.shape[0])


# ---------------------------------------------------------------------------------------------
# multi_margin_loss on rows


@kernel
def multi_margin_rows(x, target, weight, squared, margin, g_scale, g_array, row_loss, grad):
    """l = (1/C) sum_{j != y} w_y max(0, margin - x_y + x_j)^p, p = 2 when ``squared``.

    Only z_j = margin - x_y + x_j > 0 counts (strictly: a NaN z never does, so a NaN entry
    contributes 0, as in torch). The gradient of x_j is g w_y p z_j^(p-1) / C where z_j > 0,
    and that of x_y is minus their sum. The sums run in a loop that stores nothing (see the
    module docstring); each x_j is read before grad_j is written and x_y before the row, so
    ``grad`` may be ``x`` itself.
    """
    wide_vectors()
    rows, classes = x.shape
    for r in prange(rows):
        wide_vectors()
        y = target[r]
        x_y = load(x[r, y])
        m = const(x, margin)
        zero, two = const(x, 0.0), const(x, 2.0)
        w_y = const(x, 1.0) if weight is None else load(weight[y])
        gi = const(x, g_scale) if g_array is None else load(g_array[r])
        scale = gi * w_y / const(x, classes)
        base = m - x_y
        hinges = np.empty(classes, dtype=np.float64)
        for j in range(classes):
            z = base + load(x[r, j])
            active = z > zero and j != y
            hinges[j] = w_y * (z * z if squared else z) if active else zero
        row_loss[r] = lane_sum(hinges, classes) / classes
        if grad is None:
            continue
        slopes = hinges  # reused: the hinges are summed already
        for j in range(classes):
            z = base + load(x[r, j])
            active = z > zero and j != y
            slope = (two * z * scale if squared else scale) if active else zero
            slopes[j] = slope
            grad[r, j] = store(slope, grad)
        grad[r, y] = store(-lane_sum(slopes, classes), grad)
