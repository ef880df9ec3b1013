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

Index-target cross-entropy per row, with p = softmax(x), lse = logsumexp(x) = m + log s,
S = sum_c w_c:

    loss = (1 - eps) w_t (lse - x_t) + (eps / C) sum_c w_c (lse - x_c)
    grad_c = g [ p_c ((1 - eps) w_t + eps S / C) - (eps / C) w_c - (1 - eps) w_t [c == t] ]

Probability targets, with y'_c = (1 - eps) y_c + eps / C, A = sum_c w_c y'_c and
B = sum_c w_c y'_c (m - x_c):

    loss = B + A log s,      grad_c = g (A p_c - w_c y'_c)

Every lse - x is formed as (m - x) + log s, never (m + log s) - x, which would round log s
away when |m| is large.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import inline, jit, kernel
from ._kernels_softmax import (
    BLOCK,
    CHANNEL_BLOCK,
    _fill_row_nan,
    _fill_special_columns_nan,
    _fold_partials,
    _is_regular,
    _row_state,
    _special_lse_column,
    _special_lse_row,
    _tile_bounds,
    _tile_log_sums,
    _tile_max,
    _tile_scratch,
    _tile_sums,
)
from ._math import (
    add_exact,
    cap_into,
    cap_slope,
    capped_row,
    capped_tile,
    choose,
    compute_empty,
    const,
    exp_normal,
    exp_out,
    fmax,
    lane_pair_sum_of,
    lane_sum_of,
    load,
    log_pos,
    log_prob,
    store,
    sub_exact,
    wide_vectors,
)


@jit
def _zero_row(grad, r):
    wide_vectors()
    zero = store(0.0, grad)
    row = grad[r]
    for j in range(row.shape[0]):
        row[j] = zero


@jit
def _weighted_gap_term(args, j):
    x, w, m = args
    return w[j] * (m - load(x[j]))


_weighted_gap_sum = lane_sum_of(_weighted_gap_term)


@jit
def _weighted_gap_row(x, r, weight, m):
    """sum_c w_c (m - x[r, c]): every term >= 0, so nothing cancels even at huge logits.

    Compute-type partial sums per block, float64 across blocks.
    """
    wide_vectors()
    row = x[r]
    classes = row.shape[0]
    total = 0.0
    for b0 in range(0, classes, BLOCK):
        xb = row[b0 : min(b0 + BLOCK, classes)]
        wb = weight[b0 : min(b0 + BLOCK, classes)]
        total += _weighted_gap_sum((xb, wb, m), xb.shape[0], const(x, 0.0))
    return total


@inline
def _nll_term(m, x_t, log_s):
    """lse - x_t as (m - x_t) + log s in float64: m + log s would round log s away."""
    return add_exact(sub_exact(np.float64(m), np.float64(x_t)), log_s)


@jit
def _target_sums_term(args, j):
    x, y, w, keep, uniform, m = args
    wy = w[j] * (keep * load(y[j]) + uniform)
    return wy, wy * (m - load(x[j]))


_target_sums = lane_pair_sum_of(_target_sums_term)


@jit
def _target_sums_row(x, rx, y, ry, weight, keep, uniform, m):
    """(A, B) = (sum_c w_c y'_c, sum_c w_c y'_c (m - x_c)) with y' = keep * y + uniform, over
    row rx of x and row ry of y.

    The loss is then B + A log s, with no cancellation at large logits.
    """
    wide_vectors()
    xr, yr = x[rx], y[ry]
    classes = xr.shape[0]
    a = 0.0
    b = 0.0
    for b0 in range(0, classes, BLOCK):
        b1 = min(b0 + BLOCK, classes)
        xb, yb, wb = xr[b0:b1], yr[b0:b1], weight[b0:b1]
        a_block, b_block = _target_sums((xb, yb, wb, keep, uniform, m), xb.shape[0], const(x, 0.0))
        a += a_block
        b += b_block
    return a, b


@inline
def _target_entry(others, scale, p_t, per_class, w_t, nll_coef, z_coef, slope_t, softcap):
    """The gradient at the target class.

    Uncapped, each gradient row sums to z_coef (softmax sums to 1; z_coef is the z-loss
    term's 2 g lambda lse), so the entry is z_coef minus the others' sum: no cancellation
    when p_t is close to 1, unlike scale * p_t - g w_t. When that sum is not finite (a 'mean'
    over a zero weight sum makes g infinite), the direct formula gives torch's inf - inf =
    NaN. With a softcap the others carry their own slopes, so the direct formula (torch's
    own) is used, times the target's slope.
    """
    direct = scale * p_t - per_class * w_t - nll_coef
    return _target_entry_from(others, direct, z_coef, slope_t, softcap)


@jit
def _target_entry_from(others, direct, z_coef, slope_t, softcap):
    """_target_entry given its direct formula's value."""
    if softcap is not None:
        return direct * slope_t
    if abs(others) < np.inf:
        return z_coef - others
    return direct


@inline
def _overlap(a, b):
    """Whether the memory of 1-d views a and b overlaps."""
    a0, b0 = a.ctypes.data, b.ctypes.data
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


@inline
def _gradient_block(xb, gb, wb, m, log_s, scale, per_class, softcap, grad):
    """gb = (scale * p - per_class * w) * slope over one block, p = exp(x - m - log s)."""
    wide_vectors()
    if per_class != 0.0:
        for j in range(xb.shape[0]):
            v = load(xb[j])
            p = exp_out(log_prob(v, m, log_s))
            gb[j] = store((scale * p - per_class * wb[j]) * cap_slope(v, softcap), grad)
    else:
        for j in range(xb.shape[0]):
            v = load(xb[j])
            p = exp_out(log_prob(v, m, log_s))
            gb[j] = store(scale * p * cap_slope(v, softcap), grad)


@jit
def _others_term(args, j):
    """g[j] except at j = t (the target's entry, outside the block when t < 0 or >= len)."""
    g, t, zero = args
    return choose(np.int64(j) != t, load(g[j]), zero)


_others_sum = lane_sum_of(_others_term)


@jit
def _write_gradient_row(x, r, m, log_s, scale, per_class, weight, t, grad, g_row, softcap):
    """grad[g_row, c] = (scale * p_c - per_class * w_c) * slope_c for every c, from row r of
    x, which holds the capped logits when there is a softcap (slope 1 without one); returns
    the float64 sum over c != t (blockwise partial sums, so a large target entry never
    swamps the others)."""
    wide_vectors()
    xr, gr = x[r], grad[g_row]
    classes = xr.shape[0]
    zero = const(x, 0.0)
    others = 0.0
    # When grad is x itself (in-place use), a loop that reads x and writes grad fails LLVM's
    # runtime overlap check and runs its scalar version, three times slower: each block is
    # then first copied (from L1) into a buffer of its own. Otherwise the buffer is empty
    # (still one small allocation per row: hoisting it out of the prange body is left to do).
    aliased = _overlap(xr, gr)
    block = np.full(min(BLOCK, classes) if aliased else 0, zero)  # the compute type
    for b0 in range(0, classes, BLOCK):
        b1 = min(b0 + BLOCK, classes)
        xb, gb, wb = xr[b0:b1], gr[b0:b1], weight[b0:b1]
        if aliased:
            vb = block[: b1 - b0]
            for j in range(xb.shape[0]):
                vb[j] = load(xb[j])
            _gradient_block(vb, gb, wb, m, log_s, scale, per_class, softcap, grad)
        else:
            _gradient_block(xb, gb, wb, m, log_s, scale, per_class, softcap, grad)
        # Summed from the values as stored (read back from L1, in grad's storage type), so
        # the target's entry balances what the row actually holds.
        others += _others_sum((gb, t - b0, zero), gb.shape[0], zero)
    return others


@jit
def _argmax(values, m, regular):
    """torch.argmax of a 1-d view (a row, or a strided column): the first maximum; a NaN
    counts as the maximum (the first NaN wins); all -inf gives 0. ``regular`` says the
    maximum is ``m`` and there is no NaN (the row's state is regular)."""
    wide_vectors()
    if regular:
        # Blocks are tested by their maximum (a vectorized reduction, 1.3x faster than counting
        # the hits) before one is scanned element by element.
        for b0 in range(0, values.shape[0], BLOCK):
            block = values[b0 : min(b0 + BLOCK, values.shape[0])]
            bm = const(values, -np.inf)
            for j in range(block.shape[0]):
                bm = fmax(bm, load(block[j]))
            if bm == m:
                for j in range(block.shape[0]):
                    if load(block[j]) == m:
                        return b0 + j
    best = 0
    best_value = load(values[0])
    for j in range(values.shape[0]):
        v = load(values[j])
        if v != v:
            return j
        if v > best_value:
            best, best_value = j, v
    return best


@inline
def _set_row_terms(r, value, row_loss, row_smooth, row_z, smoothing, want_z):
    """Row r's loss terms all ``value``: 0 for a row that counts for nothing (an ignored
    target), NaN for a row whose softmax is NaN."""
    row_loss[r] = value
    if smoothing:
        row_smooth[r] = value
    if want_z:
        row_z[r] = value


@jit
def count_row_targets(target, classes, ignore_index):
    """(how many targets equal ignore_index, whether any other is outside [0, classes)): the
    validation of the small-call fast path, in one pass and one dispatch."""
    ignored = 0
    out_of_range = False
    for r in range(target.shape[0]):
        t = target[r]
        if t == ignore_index:
            ignored += 1
        elif t < 0 or t >= classes:
            out_of_range = True
    return ignored, out_of_range


# ---------------------------------------------------------------------------------------------
# Index targets, rows


@kernel
def cross_entropy_rows(
    x, target, weight, weight_sum, ignore_index, eps, upstream, upstream_step, want_grad,
    row_loss, row_smooth, grad, softcap, z_scale, row_z, row_lse, row_correct,
):
    """Index targets on rows. row_loss gets w_t (lse - x_t), row_smooth S lse - sum w_c x_c
    (when eps > 0): torch reduces the two terms separately, which matters when 'mean' divides
    by a zero weight sum.

    Extras (each array is empty when not wanted): row_z the z-loss z_scale lse^2 of counted
    rows, row_lse every row's lse, row_correct 1 / 0 whether the argmax is the target (NaN
    for ignored rows). ``softcap`` (None or a float) caps the logits first.
    """
    wide_vectors()
    rows, classes = x.shape
    smoothing = eps > 0.0
    want_z = row_z.shape[0] > 0
    want_lse = row_lse.shape[0] > 0
    want_correct = row_correct.shape[0] > 0
    for r in prange(rows):
        wide_vectors()
        t = target[r]
        ignored = t == ignore_index or t < 0 or t >= classes
        if want_correct and ignored:
            row_correct[r] = np.nan
        if ignored and not want_grad and not want_lse:
            _set_row_terms(r, 0.0, row_loss, row_smooth, row_z, smoothing, want_z)
            continue
        xs, rs = capped_row(x, r, softcap)  # x itself, or the row capped once into a copy
        m, s = _row_state(xs, rs, 0, classes)
        regular = _is_regular(m, s)
        if want_lse:
            row_lse[r] = np.float64(m) + log_pos(s) if regular else _special_lse_row(xs, rs)
        if want_correct and not ignored:
            row_correct[r] = 1.0 if _argmax(xs[rs], m, regular) == t else 0.0
        if ignored:
            # The loss is 0, but torch's gradient of a row whose softmax is NaN is NaN.
            _set_row_terms(r, 0.0, row_loss, row_smooth, row_z, smoothing, want_z)
            if want_grad:
                if regular:
                    _zero_row(grad, r)
                else:
                    _fill_row_nan(grad, r)
            continue
        if not regular:
            _set_row_terms(r, np.nan, row_loss, row_smooth, row_z, smoothing, want_z)
            if want_grad:
                _fill_row_nan(grad, r)
            continue
        log_s = log_pos(s)
        lse = np.float64(m) + log_s
        w_t = np.float64(weight[t])
        # Read before the gradient is written: out may be the input.
        x_t = load(xs[rs, t])
        slope_t = cap_slope(x_t, softcap)
        row_loss[r] = w_t * _nll_term(m, x_t, log_s)
        if smoothing:
            row_smooth[r] = _weighted_gap_row(xs, rs, weight, m) + weight_sum * log_s
        if want_z:
            row_z[r] = z_scale * lse * lse
        if not want_grad:
            continue
        g = np.float64(load(upstream[r * upstream_step]))
        z_coef = 2.0 * g * z_scale * lse if want_z else 0.0
        scale = const(x, g * ((1.0 - eps) * w_t + eps * weight_sum / classes) + z_coef)
        log_s_c = const(x, log_s)
        # Not g * 0 without smoothing: an infinite g (zero weight sum) must not make it NaN.
        per_class = const(x, g * eps / classes if smoothing else 0.0)
        others = _write_gradient_row(
            xs, rs, m, log_s_c, scale, per_class, weight, t, grad, r, softcap
        )
        p_t = exp_out(log_prob(x_t, m, log_s_c))
        nll_coef = const(x, g * (1.0 - eps) * w_t)
        entry = _target_entry(
            others, scale, p_t, per_class, weight[t], nll_coef, z_coef, slope_t, softcap
        )
        grad[r, t] = store(entry, grad)


# Rows per work item of cross_entropy_capped_rows: each item allocates its scratch once.
CAPPED_CHUNK = 64


@jit
def _capped_exp_term(args, j):
    """e = exp(v - m) of capped logit v, stored times the cap's slope; the sum takes e."""
    values, exps, m, softcap = args
    v = values[j]
    e = exp_out(v - m)  # all NaN: m = -inf, and NaN - -inf stays NaN
    exps[j] = e * cap_slope(v, softcap)
    return e


@jit
def _capped_exp_term_fixed(args, j):
    """As _capped_exp_term with the fixed shift c: capped - c >= -2c, whose exp is normal
    (that is what fixed means), so no clamp."""
    values, exps, c, softcap = args
    v = values[j]
    e = exp_normal(v - c)
    exps[j] = e * cap_slope(v, softcap)
    return e


_capped_exp_sum = lane_sum_of(_capped_exp_term)
_capped_exp_sum_fixed = lane_sum_of(_capped_exp_term_fixed)


@jit
def _cap_block(x, r, b0, b1, scratch, softcap, fixed, want_max):
    """Caps x[r, b0:b1] into scratch[0, b0:b1] and, with the fixed shift c (see _capped_pass),
    stores e = exp(capped - c) times the slope of the cap (the gradient's chain-rule factor)
    into scratch[1, b0:b1]; -> (block max, block sum of e). The max is -inf unless wanted or
    needed (no fixed shift): a loop of its own, from L1."""
    wide_vectors()
    xb, vb, eb = x[r, b0:b1], scratch[0, b0:b1], scratch[1, b0:b1]
    c = const(x, softcap)
    cap_into(xb, vb, softcap)
    bm = const(x, -np.inf)
    if want_max or not fixed:
        for j in range(vb.shape[0]):
            bm = fmax(bm, vb[j])
    zero = const(x, 0.0)
    if fixed:
        # A loop of its own: fused into the capping, LLVM vectorizes it worse (1.25x slower).
        return bm, _capped_exp_sum_fixed((vb, eb, c, softcap), vb.shape[0], zero)
    return bm, zero


@jit
def _write_capped_gradient_block(cur, b0, b1, scale_s, per_class, weight, grad, r, softcap):
    """grad[r, b0:b1] = (scale_s * e - per_class * w) * slope from the capped logits and the
    exponentials times their slopes of row r in cur (scale_s already divided by the sum)."""
    wide_vectors()
    vb, eb, gb, wb = cur[0, b0:b1], cur[1, b0:b1], grad[r, b0:b1], weight[b0:b1]
    if per_class != const(cur, 0.0):
        for j in range(vb.shape[0]):
            d = scale_s * eb[j] - per_class * wb[j] * cap_slope(vb[j], softcap)
            gb[j] = store(d, grad)
    else:
        for j in range(vb.shape[0]):
            gb[j] = store(scale_s * eb[j], grad)


@jit
def _capped_pass(x, r_next, softcap, nxt, cur, scale_s, per_class, weight, grad, r, want_max):
    """One pass over the columns that writes the gradient of row r (r >= 0) from cur and
    caps row r_next of x (r_next >= 0) into nxt; -> r_next's (max, shift, float64 sum of
    exp(capped - shift), first block holding the max). The max and its block are there when
    ``want_max`` asks for them (for the argmax), or when the shift is the max.

    Capped logits lie in [-c, c], so shift = c needs no running max: while exp(-2c) is a
    normal number (c <= 43 in float32) no term underflows, the gradient reads p = e / s from
    scratch instead of evaluating a second exp, and the capping, the exponentials and the
    sum take one pass over the row. Larger caps shift by the max in a second pass.

    Both at once, block by block, because the gradient is bound by memory (its stores) and
    the capping by arithmetic: interleaved, each hides the other. The input row r is not
    read, so grad may be the input (in-place use); every state comes from this one function,
    so a row's bits do not depend on whether it was capped alongside another row's gradient.
    """
    wide_vectors()
    classes = x.shape[1]
    c = const(x, softcap)
    neg_inf = const(x, -np.inf)
    fixed = exp_out(-(c + c)) > const(x, 0.0)
    m = neg_inf
    m_block = 0
    s = 0.0
    for b0 in range(0, classes, BLOCK):
        b1 = min(b0 + BLOCK, classes)
        if r >= 0:
            _write_capped_gradient_block(cur, b0, b1, scale_s, per_class, weight, grad, r, softcap)
        if r_next >= 0:
            bm, acc = _cap_block(x, r_next, b0, b1, nxt, softcap, fixed, want_max)
            s += acc
            if bm > m:
                m, m_block = bm, b0
    if fixed or r_next < 0:
        return m, c, s, m_block
    values, exps = nxt[0], nxt[1]
    for b0 in range(0, classes, BLOCK):
        b1 = min(b0 + BLOCK, classes)
        vb, eb = values[b0:b1], exps[b0:b1]
        s += _capped_exp_sum((vb, eb, m, softcap), vb.shape[0], const(x, 0.0))
    return m, m, s, m_block


@kernel
def cross_entropy_capped_rows(
    x, target, weight, weight_sum, ignore_index, eps, upstream, upstream_step, want_grad,
    row_loss, row_smooth, grad, softcap, z_scale, row_z, row_lse, row_correct,
):
    """cross_entropy_rows with a softcap (a float): the same arguments and results.

    Work items are CAPPED_CHUNK rows sharing one scratch allocation: two rows of capped
    logits and their exponentials times their slopes, so the next row is capped while this
    row's gradient is written (_capped_pass). The target's gradient entry is torch's direct
    formula times its slope, so no pass sums the others.
    """
    wide_vectors()
    rows, classes = x.shape
    smoothing = eps > 0.0
    want_z = row_z.shape[0] > 0
    want_lse = row_lse.shape[0] > 0
    want_correct = row_correct.shape[0] > 0
    chunk = min(CAPPED_CHUNK, max(1, rows // 16))
    zero = const(x, 0.0)
    for w in prange((rows + chunk - 1) // chunk):
        wide_vectors()
        scratch = compute_empty(x, 4, classes).reshape((2, 2, classes))  # written before read
        end = min(w * chunk + chunk, rows)
        cur = 0
        ready = -1  # the row whose state is in scratch[cur] already
        m, shift, s, m_block = zero, zero, 0.0, 0
        for r in range(w * chunk, end):
            t = target[r]
            ignored = t == ignore_index or t < 0 or t >= classes
            if want_correct and ignored:
                row_correct[r] = np.nan
            if ignored and not want_grad and not want_lse:
                _set_row_terms(r, 0.0, row_loss, row_smooth, row_z, smoothing, want_z)
                continue
            here = scratch[cur]
            if ready != r:
                m, shift, s, m_block = _capped_pass(
                    x, r, softcap, here, here, zero, zero, weight, grad, -1, want_correct
                )
            # No NaN: every capped logit is finite, and s >= exp(min(m - shift, -2c)) > 0.
            regular = s == s and s > 0.0
            log_s = log_pos(s) if regular else 0.0
            lse = np.float64(shift) + log_s
            if want_lse:
                row_lse[r] = lse if regular else _special_lse_row(here, 0)
            if want_correct and not ignored:
                if regular:
                    # The first maximum is in the block where the running max last rose.
                    block = here[0, m_block : min(m_block + BLOCK, classes)]
                    predicted = m_block + _argmax(block, m, True)
                else:
                    predicted = _argmax(here[0], m, False)
                row_correct[r] = 1.0 if predicted == t else 0.0
            if ignored or not regular:
                value = 0.0 if ignored else np.nan
                _set_row_terms(r, value, row_loss, row_smooth, row_z, smoothing, want_z)
                if want_grad:
                    if regular:
                        _zero_row(grad, r)
                    else:
                        _fill_row_nan(grad, r)
                continue
            w_t = np.float64(weight[t])
            v_t = here[0, t]
            row_loss[r] = w_t * _nll_term(shift, v_t, log_s)
            if smoothing:
                row_smooth[r] = _weighted_gap_row(here, 0, weight, shift) + weight_sum * log_s
            if want_z:
                row_z[r] = z_scale * lse * lse
            if not want_grad:
                continue
            g = np.float64(load(upstream[r * upstream_step]))
            z_coef = 2.0 * g * z_scale * lse if want_z else 0.0
            scale = g * ((1.0 - eps) * w_t + eps * weight_sum / classes) + z_coef
            scale_s = const(x, scale / s)
            # Not g * 0 without smoothing: an infinite g (zero weight sum) must not make it NaN.
            per_class = const(x, g * eps / classes if smoothing else 0.0)
            # With a gradient, every later row needs its state: cap the next one meanwhile.
            r_next = r + 1 if r + 1 < end else -1
            nxt = scratch[1 - cur]
            state = _capped_pass(
                x, r_next, softcap, nxt, here, scale_s, per_class, weight, grad, r, want_correct
            )
            nll_coef = const(x, g * (1.0 - eps) * w_t)
            slope_t = cap_slope(v_t, softcap)
            entry = scale_s * here[1, t] - (per_class * weight[t] + nll_coef) * slope_t
            grad[r, t] = store(entry, grad)
            if r_next >= 0:
                m, shift, s, m_block = state
                cur = 1 - cur
                ready = r_next


@kernel
def nll_rows(x, target, weight, ignore_index, upstream, upstream_step, want_grad, row_loss, grad):
    wide_vectors()
    rows, classes = x.shape
    for r in prange(rows):
        wide_vectors()
        t = target[r]
        ignored = t == ignore_index or t < 0 or t >= classes
        # Read the logit before zeroing the gradient row: out may be the input itself.
        row_loss[r] = 0.0 if ignored else -np.float64(weight[t]) * np.float64(load(x[r, t]))
        if want_grad:
            _zero_row(grad, r)
        if ignored:
            continue
        w_t = np.float64(weight[t])
        if want_grad:
            g = np.float64(load(upstream[r * upstream_step]))
            grad[r, t] = store(-g * w_t, grad)


# ---------------------------------------------------------------------------------------------
# Probability targets, rows


@kernel
def cross_entropy_prob_rows(
    x, y, weight, eps, upstream, upstream_step, want_grad, row_loss, grad, softcap, z_scale,
    row_z, row_lse, row_correct,
):
    """Probability targets on rows; the extras as in cross_entropy_rows (every row counts,
    and a row is correct when the argmax of x is the argmax of y)."""
    wide_vectors()
    rows, classes = x.shape
    uniform = eps / classes
    keep = 1.0 - eps
    want_z = row_z.shape[0] > 0
    want_lse = row_lse.shape[0] > 0
    want_correct = row_correct.shape[0] > 0
    for r in prange(rows):
        wide_vectors()
        xs, rs = capped_row(x, r, softcap)
        m, s = _row_state(xs, rs, 0, classes)
        regular = _is_regular(m, s)
        xr, yr = xs[rs], y[r]
        keep_c, uniform_c = const(x, keep), const(x, uniform)
        a, b = _target_sums_row(xs, rs, y, r, weight, keep_c, uniform_c, m)
        if want_lse:
            row_lse[r] = np.float64(m) + log_pos(s) if regular else _special_lse_row(xs, rs)
        if want_correct:
            predicted = _argmax(xs[rs], m, regular)
            row_correct[r] = 1.0 if predicted == _argmax(y[r], keep_c, False) else 0.0
        if regular:
            log_s = log_pos(s)
            lse = np.float64(m) + log_s
            row_loss[r] = b + a * log_s
            if want_z:
                row_z[r] = z_scale * lse * lse
        else:
            row_loss[r] = np.nan
            if want_z:
                row_z[r] = np.nan
            if want_grad:
                _fill_row_nan(grad, r)
            continue
        if not want_grad:
            continue
        g = np.float64(load(upstream[r * upstream_step]))
        z_coef = 2.0 * g * z_scale * lse if want_z else 0.0
        ga, gc = const(x, g * a + z_coef), const(x, g)
        log_s_c = const(x, log_s)
        gr = grad[r]
        for j in range(classes):
            # x_j and y_j are read before grad_j is written: out may be either input.
            v = load(xr[j])
            p = exp_out(log_prob(v, m, log_s_c))
            wy = weight[j] * (keep_c * load(yr[j]) + uniform_c)
            gr[j] = store((ga * p - gc * wy) * cap_slope(v, softcap), grad)


# ---------------------------------------------------------------------------------------------
# Spatial (strided) layout


@jit
def _tile_max_pick(x, o, p0, n, m, labels, picked):
    """_tile_max, also picking picked[t] = x[o, labels[t], p0 + t] (0 where labels[t] < 0).

    Picking by a select in the pass that streams the tile from memory costs nothing; a
    gather of one logit per position (rows 4 KiB apart in the tile, all in one L1 set)
    costs about a third as much as the whole pass.
    """
    wide_vectors()
    neg_inf, zero = const(x, -np.inf), const(x, 0.0)
    for t in range(n):
        m[t] = neg_inf
        picked[t] = zero
    for c in range(x.shape[1]):
        xc, label = x[o, c, p0 : p0 + n], np.int32(c)
        for t in range(n):
            v = load(xc[t])
            m[t] = fmax(m[t], v)
            picked[t] = choose(labels[t] == label, v, picked[t])


@kernel
def cross_entropy_strided(
    x, target, weight, weight_sum, ignore_index, eps, upstream, upstream_step, want_grad,
    row_loss, row_smooth, grad, tile, softcap, z_scale, row_z, row_lse, row_correct,
):
    """Index targets on (O, C, I); see cross_entropy_rows. Per-position outputs are (O * I,)
    in (o, i) order.

    The per-position work runs as loops over the tile's positions without branches, so it
    vectorizes like the passes over the classes (a scalar loop per position costs as much as
    the exponentials); only the extras and special columns take per-position branches.
    """
    wide_vectors()
    outer, classes, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    items = outer * ntiles
    smoothing = eps > 0.0
    want_z = row_z.shape[0] > 0
    want_lse = row_lse.shape[0] > 0
    want_correct = row_correct.shape[0] > 0
    extras = smoothing or want_z or want_lse or want_correct
    keep = 1.0 - eps
    spread = eps * weight_sum / classes
    zero = const(x, 0.0)
    for w in prange(items):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        # The tile itself, or its logits capped once into a copy (positions ps .. ps + n of
        # slab os_ of xs); the gradient is written at (o, p0) of grad either way.
        xs, os_, ps = capped_tile(x, o, p0, n, softcap)
        state = _tile_scratch(x, 9, n)
        m, acc, log_s, x_t, w_t = state[0], state[1], state[2], state[3], state[4]
        coef, per_class, entry = state[5], state[6], state[7]
        wide = np.empty((5, n), dtype=np.float64)
        s, g, z_coef, others, smooth = wide[0], wide[1], wide[2], wide[3], wide[4]
        # The target class, or -1 when ignored; int32 compares 16 lanes at a time.
        labels = np.empty(n, dtype=np.int32)
        live = np.empty(n, dtype=np.bool_)  # counted, with a regular column
        # With the gradient wanted, the exponentials are kept for the gradient pass.
        e = _tile_scratch(x, classes if want_grad else 0, n)
        tt = target[o, p0 : p0 + n]
        for t in range(n):
            c_t = tt[t]
            counted = (c_t != ignore_index) & (c_t >= 0) & (c_t < classes)
            labels[t] = np.int32(choose(counted, c_t, -1))
        # x_t is read before the gradient overwrites it (grad may be x).
        _tile_max_pick(xs, os_, ps, n, m, labels, x_t)
        _tile_sums(xs, os_, ps, n, m, s, acc, e)
        any_special = _tile_log_sums(x, m, s, log_s)
        base = o * inner + p0
        # The per-position work runs as short loops, each writing one or two arrays with
        # selects (choose) instead of branches: LLVM vectorizes a loop only when it needs at
        # most 8 runtime overlap checks and its arms can be flattened; a loop writing many
        # per-position arrays with branches ran scalar and cost as much as the exponentials.
        for t in range(n):
            w_t[t] = weight[max(labels[t], 0)]
        for t in range(n):
            live[t] = (labels[t] >= 0) & _is_regular(m[t], s[t])
        lt = row_loss[base : base + n]
        for t in range(n):
            loss = np.float64(w_t[t]) * _nll_term(m[t], x_t[t], np.float64(log_s[t]))
            loss = choose(_is_regular(m[t], s[t]), loss, np.nan)
            lt[t] = choose(labels[t] >= 0, loss, 0.0)
        if smoothing:
            for t in range(n):
                smooth[t] = 0.0
            for c in range(classes):
                xc = xs[os_, c, ps : ps + n]
                wc = weight[c]
                for t in range(n):
                    smooth[t] += wc * (m[t] - load(xc[t]))
        if extras:
            for t in range(n):
                k = base + t
                c_t = labels[t]
                regular = _is_regular(m[t], s[t])
                log_s_t = np.float64(log_s[t])
                lse = np.float64(m[t]) + log_s_t
                if want_lse:
                    row_lse[k] = lse if regular else _special_lse_column(xs, os_, ps + t)
                if want_correct:
                    if c_t < 0:
                        row_correct[k] = np.nan
                    else:
                        predicted = _argmax(xs[os_, :, ps + t], m[t], regular)
                        row_correct[k] = 1.0 if predicted == c_t else 0.0
                if smoothing:
                    smoothed = smooth[t] + weight_sum * log_s_t if regular else np.nan
                    row_smooth[k] = smoothed if c_t >= 0 else 0.0
                if want_z:
                    z = z_scale * lse * lse if regular else np.nan
                    row_z[k] = z if c_t >= 0 else 0.0
        if not want_grad:
            continue
        if upstream_step == 0:
            for t in range(n):
                g[t] = np.float64(load(upstream[0]))
        else:
            ut = upstream[base : base + n]
            for t in range(n):
                g[t] = np.float64(load(ut[t]))
        # Ignored and special positions get zero coefficients (special columns are NaN-filled
        # last): their gradient columns come out 0.
        for t in range(n):
            lse = np.float64(m[t]) + np.float64(log_s[t])
            z_coef[t] = choose(want_z and live[t], 2.0 * g[t] * z_scale * lse, 0.0)
        for t in range(n):
            scale = g[t] * (keep * np.float64(w_t[t]) + spread) + z_coef[t]
            coef[t] = const(x, choose(live[t], scale / s[t], 0.0))
        for t in range(n):
            per_class[t] = const(x, choose(smoothing and live[t], g[t] * eps / classes, 0.0))
        for c0 in range(0, classes, CHANNEL_BLOCK):
            for t in range(n):
                acc[t] = zero
            for c in range(c0, min(c0 + CHANNEL_BLOCK, classes)):
                xc, ec, gc = xs[os_, c, ps : ps + n], e[c], grad[o, c, p0 : p0 + n]
                wc, label = weight[c], np.int32(c)
                if not smoothing and softcap is None:
                    # Few enough arrays for one vectorized loop (see above): the others' sum
                    # is accumulated as the gradient is written.
                    for t in range(n):
                        d = coef[t] * ec[t]
                        gc[t] = store(d, grad)
                        acc[t] = acc[t] + choose(labels[t] != label, d, zero)
                    continue
                # ec = exp(x - m) becomes the gradient entry, kept for the sum below.
                if smoothing:
                    for t in range(n):
                        d = (coef[t] * ec[t] - per_class[t] * wc) * cap_slope(load(xc[t]), softcap)
                        ec[t] = d
                        gc[t] = store(d, grad)
                else:
                    for t in range(n):
                        d = coef[t] * ec[t] * cap_slope(load(xc[t]), softcap)
                        ec[t] = d
                        gc[t] = store(d, grad)
                for t in range(n):
                    acc[t] = acc[t] + choose(labels[t] != label, ec[t], zero)
            # The others' sum in the compute type per block of classes, in float64 across.
            _fold_partials(others, acc, n, c0 == 0)
        # The target entries, _target_entry in steps (one loop would need too many overlap
        # checks): the direct formula scale * p_t - per_class * w_t - nll_coef first.
        for t in range(n):
            scale = g[t] * (keep * np.float64(w_t[t]) + spread) + z_coef[t]
            p_t = exp_out(log_prob(x_t[t], m[t], log_s[t]))
            entry[t] = const(x, choose(live[t], scale, 0.0)) * p_t
        for t in range(n):
            nll_coef = const(x, choose(live[t], g[t] * keep * np.float64(w_t[t]), 0.0))
            entry[t] = entry[t] - per_class[t] * w_t[t] - nll_coef
        for t in range(n):
            entry[t] = _target_entry_from(
                others[t], entry[t], z_coef[t], cap_slope(x_t[t], softcap), softcap
            )
        for t in range(n):
            c_t = labels[t]
            if c_t >= 0:
                grad[o, c_t, p0 + t] = store(entry[t], grad)
        if any_special:
            # NaN whether ignored or not: torch's gradient of a NaN softmax.
            _fill_special_columns_nan(grad, o, p0, m, s)


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
        tt = target[o, p0 : p0 + n]
        # Read the target logits before zeroing the gradient: out may be the input itself.
        for t in range(n):
            k = o * inner + p0 + t
            c_t = tt[t]
            if c_t == ignore_index or c_t < 0 or c_t >= classes:
                row_loss[k] = 0.0
            else:
                row_loss[k] = -np.float64(weight[c_t]) * np.float64(load(x[o, c_t, p0 + t]))
        if not want_grad:
            continue
        zero = store(0.0, grad)
        for c in range(classes):
            gc = grad[o, c, p0 : p0 + n]
            for t in range(n):
                gc[t] = zero
        for t in range(n):
            k = o * inner + p0 + t
            c_t = tt[t]
            if c_t == ignore_index or c_t < 0 or c_t >= classes:
                continue
            g = np.float64(load(upstream[k * upstream_step]))
            grad[o, c_t, p0 + t] = store(-g * np.float64(weight[c_t]), grad)


@kernel
def cross_entropy_prob_strided(
    x, y, weight, eps, upstream, upstream_step, want_grad, row_loss, grad, tile, softcap,
    z_scale, row_z, row_lse, row_correct,
):
    wide_vectors()
    outer, classes, inner = x.shape
    ntiles = (inner + tile - 1) // tile
    keep_c, uniform_c = const(x, 1.0 - eps), const(x, eps / classes)
    want_z = row_z.shape[0] > 0
    want_lse = row_lse.shape[0] > 0
    want_correct = row_correct.shape[0] > 0
    items = outer * ntiles
    no_e = _tile_scratch(x, 0, 0)
    for w in prange(items):
        wide_vectors()
        o, p0, n = _tile_bounds(w, ntiles, tile, inner)
        xs, os_, ps = capped_tile(x, o, p0, n, softcap)
        state = _tile_scratch(x, 3, n)
        m, acc, log_s = state[0], state[1], state[2]
        s = np.empty(n, dtype=np.float64)
        _tile_max(xs, os_, ps, n, m)
        _tile_sums(xs, os_, ps, n, m, s, acc, no_e)
        any_special = _tile_log_sums(x, m, s, log_s)
        a = np.zeros(n, dtype=np.float64)
        b = np.zeros(n, dtype=np.float64)
        for c in range(classes):
            xc, yc = xs[os_, c, ps : ps + n], y[o, c, p0 : p0 + n]
            wc = weight[c]
            for t in range(n):
                wy = wc * (keep_c * load(yc[t]) + uniform_c)
                a[t] += wy
                b[t] += wy * (m[t] - load(xc[t]))
        ga = np.zeros(n, dtype=m.dtype)
        gs = np.zeros(n, dtype=m.dtype)
        for t in range(n):
            k = o * inner + p0 + t
            regular = _is_regular(m[t], s[t])
            lse = np.float64(m[t]) + np.float64(log_s[t])
            if want_lse:
                row_lse[k] = lse if regular else _special_lse_column(xs, os_, ps + t)
            if want_correct:
                predicted = _argmax(xs[os_, :, ps + t], m[t], regular)
                wanted = _argmax(y[o, :, p0 + t], m[t], False)
                row_correct[k] = 1.0 if predicted == wanted else 0.0
            if regular:
                row_loss[k] = b[t] + a[t] * np.float64(log_s[t])
                if want_z:
                    row_z[k] = z_scale * lse * lse
            else:
                row_loss[k] = np.nan
                if want_z:
                    row_z[k] = np.nan
            g = np.float64(load(upstream[k * upstream_step]))
            z_coef = 2.0 * g * z_scale * lse if want_z and regular else 0.0
            ga[t] = const(x, g * a[t] + z_coef)
            gs[t] = const(x, g)
        if not want_grad:
            continue
        for c in range(classes):
            xc, yc = xs[os_, c, ps : ps + n], y[o, c, p0 : p0 + n]
            gc = grad[o, c, p0 : p0 + n]
            wc = weight[c]
            for t in range(n):
                v = load(xc[t])
                p = exp_out(log_prob(v, m[t], log_s[t]))
                wy = wc * (keep_c * load(yc[t]) + uniform_c)
                gc[t] = store((ga[t] * p - gs[t] * wy) * cap_slope(v, softcap), grad)
        if any_special:
            _fill_special_columns_nan(grad, o, p0, m, s)


# ---------------------------------------------------------------------------------------------
# Small calls: the serial row kernels behind one short signature. A Numba call costs about
# 0.14 us per argument, and cross_entropy_rows takes 17: for a (32, 10) batch that was as much
# as the work. These take the arguments that vary and make the rest here.

_cross_entropy_rows_serial = cross_entropy_rows.serial
_nll_rows_serial = nll_rows.serial


@jit
def cross_entropy_rows_plain(x, target, ignore_index, upstream, upstream_step, want_grad,
                             row_loss, grad):
    """cross_entropy_rows with unit weights and no smoothing or extras, serially."""
    classes = x.shape[1]
    no_rows = np.empty(0, dtype=np.float64)
    _cross_entropy_rows_serial(
        x, target, np.ones(classes, dtype=x.dtype), float(classes), ignore_index, 0.0,
        upstream, upstream_step, want_grad, row_loss, no_rows, grad, None, 0.0, no_rows,
        no_rows, no_rows,
    )


@jit
def nll_rows_plain(x, target, ignore_index, upstream, upstream_step, want_grad, row_loss,
                   grad):
    """nll_rows with unit weights, serially."""
    _nll_rows_serial(
        x, target, np.ones(x.shape[1], dtype=x.dtype), ignore_index, upstream, upstream_step,
        want_grad, row_loss, grad,
    )
