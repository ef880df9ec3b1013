r"""fastloss on dask arrays: logsumexp, softmax and the class-index losses, past one machine.

Arrays may be chunked along the batch axis *and* along the class axis (vocabulary shards):
a row is never rechunked into one block. Every function builds a lazy graph and computes
nothing; the graph runs on any dask scheduler (threads, processes, ``dask.distributed``).

How a row split over class chunks is reduced:

1. each block yields, per row, its logsumexp state :math:`(m, s)`
   (:func:`fastloss.logsumexp_state`, the fastloss kernel) and additive partials: the target
   logit :math:`x_t` and its weight :math:`w_t` from the one block that holds class
   :math:`t` (0 elsewhere), and, with label smoothing, :math:`\sum_c w_c x_c` over the block;
2. the partials of a row's blocks are merged by a dask tree reduction with
   :func:`fastloss.merge_logsumexp_states`' rule (sums for the additive ones), in float64;
3. the merged state gives :math:`\operatorname{lse} = m + \log s`, and
   :math:`\ell = w_t(\operatorname{lse} - x_t)` (plus the smoothing term); softmax,
   log_softmax and the cross-entropy gradient are then computed block by block from the
   row's merged :math:`(m, s)`.

Only a few float64 numbers per row and class chunk travel between workers. Reductions
('sum', 'mean') accumulate per-row float64 terms; special values follow torch (and the
in-memory fastloss functions): rows with a ``+inf``, a NaN, or only ``-inf`` give NaN losses
and softmax rows, ignored rows give 0.

This module is not imported by ``import fastloss``; it needs dask
(``pip install 'fastloss[dask]'``).
"""

from __future__ import annotations

import functools
import string
import warnings

import dask.array as da
import numpy as np

import fastloss as _fl

from ._arrays import FLOAT_DTYPES, UnsupportedDtypeError, normalize_dim, normalize_dims
from ._cross_entropy import _check_ignore_index, _check_label_smoothing
from ._reduction import resolve_reduction
from ._state import merge_states_along

__all__ = [
    "logsumexp",
    "softmax",
    "log_softmax",
    "nll_loss",
    "cross_entropy",
    "cross_entropy_backward",
    "cross_entropy_with_grad",
]

_LETTERS = string.ascii_lowercase[:24]  # blockwise indices of dims; "y", "z" name fields
_FIELDS = "z"


def _index(ndim: int) -> str:
    if ndim > len(_LETTERS):
        raise ValueError(f"fastloss.dask supports at most {len(_LETTERS)} dims, got {ndim}")
    return _LETTERS[:ndim]


def _meta(ndim: int, dtype) -> np.ndarray:
    return np.empty((0,) * ndim, dtype=dtype)


def _as_dask(value, name: str) -> da.Array:
    if isinstance(value, da.Array):
        return value
    try:
        return da.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be a dask array (or array-like), got {type(value).__name__}: {exc}"
        ) from exc


def _floating(x: da.Array, func: str, promote: bool) -> da.Array:
    if x.dtype in FLOAT_DTYPES:
        return x
    if promote and x.dtype.kind in "biu":
        return x.astype(np.float32)  # torch's default float, as fastloss.logsumexp
    raise UnsupportedDtypeError(
        f"{func}: input has dtype {x.dtype}, which it cannot compute in; pass a floating "
        "array (float16, bfloat16, float32 or float64), e.g. input.astype(np.float32)"
    )


def _compute_type(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; float32 and the 16-bit types compute in float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


# ---------------------------------------------------------------------------------------------
# Per-block partials and their tree merge
#
# A partials array has the input's shape with every reduced axis replaced by its number of
# blocks (chunks of 1), and a trailing fields axis. With ``state=True`` fields 0 and 1 are a
# logsumexp state (max, sum) and merge by its rule; all further fields add.


def _state_block(x, axes):
    m, s = _fl.logsumexp_state(x, axes, keepdim=True)
    return np.stack([m, s], axis=-1)


def _block_states(x: da.Array, axes: tuple[int, ...]) -> da.Array:
    ind = _index(x.ndim)
    return da.blockwise(
        _state_block, ind + _FIELDS, x, ind, axes=axes, new_axes={_FIELDS: 2},
        adjust_chunks={ind[a]: 1 for a in axes}, dtype=np.float64,
        meta=_meta(x.ndim + 1, np.float64),
    )


def _keep(p, axis, keepdims):
    return p  # each block is already one entry per reduced axis


def _merge_fields(p, axis, keepdims, state=True):
    with np.errstate(all="ignore"):
        if not state:
            return np.sum(p, axis=axis, keepdims=keepdims)
        m, s = merge_states_along(p[..., 0], p[..., 1], axis, keepdims=keepdims)
        rest = np.sum(p[..., 2:], axis=axis, keepdims=keepdims)
    return np.concatenate([m[..., None], s[..., None], rest], axis=-1)


def _merge(partials: da.Array, axes: tuple[int, ...], state=True, keepdims=False) -> da.Array:
    """Tree-merge the partials along ``axes`` (dask's ``split_every`` sets the fan-in)."""
    merge = functools.partial(_merge_fields, state=state)
    kept = partials.ndim - (0 if keepdims else len(axes))
    return da.reduction(
        partials, _keep, merge, combine=merge, axis=axes, keepdims=keepdims,
        dtype=np.float64, concatenate=True, meta=_meta(kept, np.float64),
        name="fastloss-merge",
    )


# ---------------------------------------------------------------------------------------------
# logsumexp, softmax, log_softmax


def _lse_block(p, out_dtype):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (p[..., 0] + np.log(p[..., 1])).astype(out_dtype)


def logsumexp(input, dim, keepdim=False):
    r"""Logsumexp of a dask array over ``dim``, chunks merged as logsumexp states.

    .. math::

        \operatorname{lse}(x) = M + \log \sum_k s_k e^{m_k - M}, \qquad M = \max_k m_k

    over the blocks :math:`k` a slice is split into, with :math:`(m_k, s_k)` each block's
    :func:`fastloss.logsumexp_state`. No block is rechunked.

    Parameters
    ----------
    input : dask.array.Array
        Any shape and chunking; floating (integers and bools are promoted to float32).
    dim : int or tuple of ints
        The dim or dims to reduce.
    keepdim : bool, default False

    Returns
    -------
    dask.array.Array
        Lazy, shaped like ``fastloss.logsumexp(input, dim, keepdim)``, in the input's dtype.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastloss as fl, fastloss.dask as fld
    >>> x = np.arange(12.0).reshape(2, 6)
    >>> fld.logsumexp(da.from_array(x, chunks=(1, 2)), dim=1).compute()
    array([ 5.45619332, 11.45619332])
    >>> fl.logsumexp(x, dim=1)
    array([ 5.45619332, 11.45619332])
    """
    x = _floating(_as_dask(input, "input"), "logsumexp", promote=True)
    if x.ndim == 0:
        return x.map_blocks(_fl.logsumexp, 0, dtype=x.dtype)
    dims = normalize_dims(dim, x.ndim)
    merged = _merge(_block_states(x, dims), dims, keepdims=keepdim)
    return merged.map_blocks(
        _lse_block, out_dtype=x.dtype, drop_axis=merged.ndim - 1, dtype=x.dtype,
        meta=_meta(merged.ndim - 1, x.dtype),
    )


def _softmax_block(x, merged, dim, log):
    compute = _compute_type(x.dtype)
    m = np.expand_dims(merged[..., 0], dim)
    s = np.expand_dims(merged[..., 1], dim)
    with np.errstate(all="ignore"):
        # Rows with no finite maximum or a NaN sum are NaN, as torch (canonical states make
        # the test this simple: a regular state has a finite max and a sum >= 1).
        regular = np.isfinite(m) & np.isfinite(s)
        # (x - m) - log s, in this order: m + log s would round log s away at large |m|.
        shifted = (x.astype(compute, copy=False) - m.astype(compute)) - np.log(s).astype(compute)
        out = shifted if log else np.exp(shifted)
        out = np.where(regular, out, np.nan)
    return out.astype(x.dtype, copy=False)


def _softmax(func, input, dim, stacklevel, dtype, log):
    x = _as_dask(input, "input")
    if dim is None:
        warnings.warn(
            f"Implicit dimension choice for {func} has been deprecated. "
            "Change the call to include dim=X as an argument.",
            UserWarning,
            stacklevel=stacklevel,
        )
        dim = 0 if x.ndim in (0, 1, 3) else 1
    if dtype is not None:
        x = x.astype(dtype)
    x = _floating(x, func, promote=False)
    if x.ndim == 0:
        x = x.reshape(1)
        return _softmax(func, x, 0, stacklevel, None, log).reshape(())
    d = normalize_dim(dim, x.ndim)
    merged = _merge(_block_states(x, (d,)), (d,))
    ind = _index(x.ndim)
    return da.blockwise(
        _softmax_block, ind, x, ind, merged, ind.replace(ind[d], "") + _FIELDS, dim=d, log=log,
        dtype=x.dtype, concatenate=True, meta=_meta(x.ndim, x.dtype),
    )


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    r"""Softmax of a dask array over ``dim``, which may be split into chunks.

    .. math::

        \operatorname{softmax}(x)_j = e^{(x_j - m) - \log s}

    with :math:`(m, s)` the merged logsumexp state of the slice: one reduction for the
    states, then one blockwise pass that writes each output block from its input block.

    Parameters
    ----------
    input : dask.array.Array
        Any shape and chunking; float16, bfloat16, float32 or float64.
    dim : int, optional
        The dim to normalize over; None applies torch's deprecated implicit choice (warns).
    _stacklevel : int, default 3
        Stack level of that warning.
    dtype : numpy dtype, optional
        Cast the input to this dtype first.

    Returns
    -------
    dask.array.Array
        Lazy, shaped and chunked like ``input``. Slices holding ``+inf``, NaN or only
        ``-inf`` are NaN, as in torch.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastloss.dask as fld
    >>> x = da.from_array(np.array([[1.0, 2.0, 3.0, 4.0]]), chunks=(1, 2))
    >>> fld.softmax(x, dim=1).compute()
    array([[0.0320586 , 0.08714432, 0.23688282, 0.64391426]])
    """
    return _softmax("softmax", input, dim, _stacklevel + 1, dtype, log=False)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    r"""Log-softmax of a dask array over ``dim``, which may be split into chunks.

    .. math::

        \operatorname{log\_softmax}(x)_j = (x_j - m) - \log s

    with :math:`(m, s)` the merged logsumexp state of the slice.

    Parameters
    ----------
    input, dim, _stacklevel, dtype
        As for :func:`softmax`.

    Returns
    -------
    dask.array.Array
        Lazy, shaped and chunked like ``input``.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastloss.dask as fld
    >>> x = da.from_array(np.array([[1.0, 2.0, 3.0, 4.0]]), chunks=(1, 2))
    >>> fld.log_softmax(x, dim=1).compute()
    array([[-3.4401897, -2.4401897, -1.4401897, -0.4401897]])
    """
    return _softmax("log_softmax", input, dim, _stacklevel + 1, dtype, log=True)


# ---------------------------------------------------------------------------------------------
# Class-index losses: validation


class _Problem:
    """A validated nll_loss / cross_entropy call, in the (N, C, d1, ..., dK) layout."""

    __slots__ = ("x", "t", "w", "ignore_index", "eps", "reduction", "unbatched", "cross")

    @property
    def classes(self) -> int:
        return self.x.shape[1]

    @property
    def row_index(self) -> str:
        """Blockwise index of a per-row array: the input's without the class axis."""
        ind = _index(self.x.ndim)
        return ind[0] + ind[2:]


def _prepare(func, cross, input, target, weight, size_average, ignore_index, reduce, reduction,
             label_smoothing):
    problem = _Problem()
    problem.reduction = resolve_reduction(size_average, reduce, reduction, stacklevel=3)
    problem.cross = cross
    problem.ignore_index = _check_ignore_index(ignore_index, func)
    problem.eps = _check_label_smoothing(label_smoothing) if cross else 0.0
    x = _floating(_as_dask(input, "input"), func, promote=False)
    t = _as_dask(target, "target")
    if t.dtype.kind == "f":
        if cross and t.shape == x.shape:
            raise NotImplementedError(
                f"{func}: class-probability targets are not supported on dask arrays; pass "
                f"class indices of shape {x.shape[:1] + x.shape[2:]}, or call "
                "fastloss.cross_entropy on in-memory blocks"
            )
        raise ValueError(
            f"{func}: expected target dtype to be an integer type (class indices), but got "
            f"{t.dtype}"
        )
    if t.dtype.kind not in "iub":
        raise ValueError(f"{func}: target must hold integer class indices, got dtype {t.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{func}: Expected 1 or more dimensions (got 0)")
    problem.unbatched = x.ndim == 1
    if problem.unbatched:
        if t.ndim != 0 and t.shape != (1,):
            raise ValueError(
                f"{func}: input of shape {x.shape} (one unbatched sample) needs a 0-d target, "
                f"got shape {t.shape}"
            )
        x, t = x[None], t.reshape(1)
    expected = (x.shape[0],) + x.shape[2:]
    if t.shape != expected:
        raise ValueError(
            f"{func}: Expected target size {list(expected)}, got {list(t.shape)} (for input "
            f"of shape {list(x.shape)} the target holds one class index per row: "
            "(N, d1, ..., dK))"
        )
    # The target follows the input's row chunks, never the other way round.
    problem.t = t.rechunk((x.chunks[0],) + x.chunks[2:])
    problem.x = x
    problem.w = None
    if weight is not None:
        w = _as_dask(weight, "weight")
        if w.shape != (x.shape[1],):
            raise ValueError(
                f"{func}: weight tensor should be defined either for all {x.shape[1]} classes "
                f"or no classes but got weight tensor of shape: {list(w.shape)} (pass one "
                f"weight per class, shape ({x.shape[1]},))"
            )
        if w.dtype not in FLOAT_DTYPES and w.dtype.kind not in "iub":
            raise TypeError(f"{func}: weight must be a real array, got dtype {w.dtype}")
        # Sliced with the class chunks: each task receives its own classes' weights only.
        problem.w = w.astype(np.float64).rechunk((x.chunks[1],))
    return problem


# ---------------------------------------------------------------------------------------------
# Class-index losses: blocks


def _check_targets(t, classes: int, ignore_index: int) -> None:
    bad = (t != ignore_index) & ((t < 0) | (t >= classes))
    if bad.any():
        value = int(t[bad].flat[0])
        raise IndexError(
            f"Target {value} is out of bounds for {classes} classes (valid targets are "
            f"0..{classes - 1}, or ignore_index={ignore_index})"
        )


def _target_rows(t, start: int, width: int, ignore_index: int):
    """(rows whose target lies in this class block, its index within the block)."""
    local = t - start
    inside = (t != ignore_index) & (local >= 0) & (local < width)
    return inside, np.where(inside, local, 0)


def _partials_block(x, t, classes_here, w=None, *, classes, ignore_index, state, smoothing):
    """One block's fields per row: [max, sum,] x_t, w_t [, sum_c w_c x_c]."""
    t = t.astype(np.int64, copy=False)
    start = int(classes_here[0]) if classes_here.size else 0
    if start == 0:  # one block per row checks the targets
        _check_targets(t, classes, ignore_index)
    width = x.shape[1]
    inside, local = _target_rows(t, start, width, ignore_index)
    fields = []
    with np.errstate(all="ignore"):
        if state:
            fields += list(_fl.logsumexp_state(x, 1))
        if width:
            x_t = np.take_along_axis(x, local[:, None], axis=1)[:, 0].astype(np.float64)
        else:
            x_t = np.zeros(t.shape)
        fields.append(np.where(inside, x_t, 0.0))
        w_t = inside.astype(np.float64) if w is None else np.where(inside, w[local], 0.0)
        fields.append(w_t)
        if smoothing:
            compute = _compute_type(x.dtype)
            xc = x.astype(compute, copy=False)
            if w is None:
                fields.append(np.sum(xc, axis=1, dtype=np.float64))
            else:
                wb = w.astype(compute).reshape((width,) + (1,) * (x.ndim - 2))
                fields.append(np.sum(xc * wb, axis=1, dtype=np.float64))
    return np.stack(fields, axis=-1)[:, None]


def _rows_block(merged, t, weight_sum, *, ignore_index, state, smoothing):
    """Per row: [loss term, smoothing term, the mean's weight w_t] (0 for ignored rows)."""
    t = t.astype(np.int64, copy=False)
    ignored = t == ignore_index
    zero = np.zeros(t.shape)
    with np.errstate(all="ignore"):
        if state:
            m, s, x_t, w_t = (merged[..., k] for k in range(4))
            regular = np.isfinite(m) & np.isfinite(s)
            lse = m + np.log(s)
            loss = np.where(regular, w_t * (lse - x_t), np.nan)
            smooth = zero
            if smoothing:
                smooth = np.where(regular, weight_sum * lse - merged[..., 4], np.nan)
        else:
            x_t, w_t = merged[..., 0], merged[..., 1]
            loss, smooth = -(w_t * x_t), zero
        loss = np.where(ignored, 0.0, loss)
        smooth = np.where(ignored, 0.0, smooth)
    return np.stack([loss, smooth, w_t], axis=-1)


def _none_block(terms, keep, spread, dtype):
    with np.errstate(all="ignore"):
        rows = terms[..., 0] if spread == 0.0 else keep * terms[..., 0] + spread * terms[..., 1]
    return rows.astype(dtype)


def _quiet_sum(x, axis, keepdims):
    with np.errstate(all="ignore"):  # inf and NaN losses are legitimate results
        return np.sum(x, axis=axis, keepdims=keepdims, dtype=np.float64)


def _finish(sums, mean, keep, spread, dtype):
    """'sum' / 'mean' from the summed terms, each term reduced on its own as torch does."""
    total, smooth, denominator = sums
    with np.errstate(all="ignore"):
        if mean:
            total, smooth = total / denominator, smooth / denominator
        if spread:
            total = keep * total + spread * smooth
    return np.asarray(total, dtype=dtype)


def _scale_block(scale, sums, mean):
    with np.errstate(all="ignore"):
        return np.asarray(scale / sums[2] if mean else scale, dtype=np.float64)


def _grad_block(x, t, classes_here, merged, g, weight_sum, w=None, *, classes, ignore_index,
                eps):
    r"""g [(1-eps) w_t (p_c - [c = t]) + (eps/C) (S p_c - w_c)] with p from the merged state."""
    compute = _compute_type(x.dtype)
    t = t.astype(np.int64, copy=False)
    width = x.shape[1]
    start = int(classes_here[0]) if classes_here.size else 0
    m, s, w_t = merged[..., 0], merged[..., 1], merged[..., 3]
    g = np.broadcast_to(g, t.shape)
    keep, spread = 1.0 - eps, eps / classes
    with np.errstate(all="ignore"):
        regular = np.isfinite(m) & np.isfinite(s)
        ignored = t == ignore_index
        # Work with the class axis last (a no-op view for (N, C) blocks).
        xc = np.moveaxis(x, 1, -1).astype(compute)
        grad = np.exp((xc - m[..., None].astype(compute)) - np.log(s)[..., None].astype(compute))
        grad *= (g * (keep * w_t + spread * weight_sum))[..., None].astype(compute)
        if spread:
            wc = np.ones(width, compute) if w is None else w.astype(compute)
            grad -= (g * spread)[..., None].astype(compute) * wc
        inside, local = _target_rows(t, start, width, ignore_index)
        hit = np.nonzero(inside)
        grad[hit + (local[hit],)] -= (g * keep * w_t)[hit].astype(compute)
        # torch: an ignored row's gradient is 0, unless its softmax is NaN (then NaN).
        grad[~regular] = np.nan
        grad[ignored & regular] = 0.0
    return np.ascontiguousarray(np.moveaxis(grad, -1, 1), dtype=x.dtype)


# ---------------------------------------------------------------------------------------------
# Class-index losses: graphs


class _Graph:
    """The lazy pieces of one call: merged per-row fields, per-row terms and their sums."""

    def __init__(self, problem: _Problem):
        self.problem = p = problem
        x, t, w = p.x, p.t, p.w
        ind, rows = _index(x.ndim), p.row_index
        smoothing = p.eps > 0.0
        fields = (2 if p.cross else 0) + 2 + (1 if smoothing else 0)
        classes_here = da.arange(p.classes, chunks=(x.chunks[1],))
        extra = () if w is None else (w, ind[1])
        partials = da.blockwise(
            _partials_block, ind + _FIELDS, x, ind, t, rows, classes_here, ind[1], *extra,
            classes=p.classes, ignore_index=p.ignore_index, state=p.cross, smoothing=smoothing,
            new_axes={_FIELDS: fields}, adjust_chunks={ind[1]: 1}, dtype=np.float64,
            meta=_meta(x.ndim + 1, np.float64),
        )
        self.merged = _merge(partials, (1,), state=p.cross)
        if w is None or not smoothing:
            self.weight_sum = da.asarray(np.float64(p.classes))
        else:
            self.weight_sum = w.sum(dtype=np.float64)
        self.terms = da.blockwise(
            _rows_block, rows + "y", self.merged, rows + _FIELDS, t, rows, self.weight_sum, "",
            ignore_index=p.ignore_index, state=p.cross, smoothing=smoothing,
            new_axes={"y": 3}, concatenate=True, dtype=np.float64,
            meta=_meta(len(rows) + 1, np.float64),
        )
        self.sums = da.reduction(
            self.terms, _quiet_sum, _quiet_sum, axis=tuple(range(len(rows))), dtype=np.float64,
            concatenate=True, meta=_meta(1, np.float64),
        )

    def loss(self) -> da.Array:
        p = self.problem
        keep, spread = 1.0 - p.eps, p.eps / max(p.classes, 1)
        dtype = p.x.dtype
        if p.reduction == "none":
            rows = self.terms.map_blocks(
                _none_block, keep, spread, dtype, drop_axis=self.terms.ndim - 1, dtype=dtype,
                meta=_meta(self.terms.ndim - 1, dtype),
            )
            return rows.reshape(()) if p.unbatched else rows
        return self.sums.map_blocks(
            _finish, p.reduction == "mean", keep, spread, dtype, drop_axis=0, dtype=dtype,
            meta=_meta(0, dtype),
        )

    def upstream(self, grad_output, func: str) -> tuple[da.Array, str]:
        """The upstream factor per row, and its blockwise index ('' for one scalar)."""
        p = self.problem
        rows = p.row_index
        if p.reduction == "none":
            loss_shape = () if p.unbatched else p.t.shape
            if grad_output is None:
                return da.ones(p.t.shape, chunks=p.t.chunks, dtype=np.float64), rows
            g = _as_dask(grad_output, "grad_output")
            if g.shape != loss_shape:
                raise ValueError(
                    f"{func}: grad_output has shape {g.shape}, but reduction='none' gives a "
                    f"loss of shape {loss_shape}; pass a gradient of that shape"
                )
            return g.astype(np.float64).reshape(p.t.shape).rechunk(p.t.chunks), rows
        g = _as_dask(1.0 if grad_output is None else grad_output, "grad_output")
        if g.size != 1:
            raise ValueError(
                f"{func}: grad_output has shape {g.shape}, but reduction='{p.reduction}' "
                "gives a scalar loss; pass a scalar"
            )
        g = g.astype(np.float64).reshape(())
        scale = da.blockwise(
            _scale_block, "", g, "", self.sums, "y", mean=p.reduction == "mean",
            concatenate=True, dtype=np.float64, meta=_meta(0, np.float64),
        )
        return scale, ""

    def grad(self, grad_output, func: str) -> da.Array:
        p = self.problem
        x, ind = p.x, _index(p.x.ndim)
        g, g_index = self.upstream(grad_output, func)
        classes_here = da.arange(p.classes, chunks=(x.chunks[1],))
        extra = () if p.w is None else (p.w, ind[1])
        grad = da.blockwise(
            _grad_block, ind, x, ind, p.t, p.row_index, classes_here, ind[1], self.merged,
            p.row_index + _FIELDS, g, g_index, self.weight_sum, "", *extra,
            classes=p.classes, ignore_index=p.ignore_index, eps=p.eps, concatenate=True,
            dtype=x.dtype, meta=_meta(x.ndim, x.dtype),
        )
        return grad[0] if p.unbatched else grad


# ---------------------------------------------------------------------------------------------
# Class-index losses: public functions


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    r"""Negative log-likelihood of dask log-probabilities, chunked along rows and classes.

    .. math::

        \ell_i = -w_{t_i} x_{i t_i}, \qquad
        \text{mean} = \frac{\sum_i \ell_i}{\sum_{i: t_i \ne \text{ii}} w_{t_i}}

    The block that holds class :math:`t_i` contributes :math:`x_{i t_i}` and
    :math:`w_{t_i}`; the others contribute 0, so only sums cross the class chunks.

    Parameters
    ----------
    input : dask.array.Array
        Log-probabilities, (C,), (N, C) or (N, C, d1, ..., dK); any chunking.
    target : dask.array.Array or array_like of int
        Class indices, (), (N,) or (N, d1, ..., dK); rechunked to the input's row chunks.
        A target out of range raises IndexError when the graph is computed.
    weight : array_like, optional
        Per-class weights, shape (C,) (a dask array or in-memory).
    size_average, ignore_index, reduce, reduction
        As in :func:`fastloss.nll_loss`.

    Returns
    -------
    dask.array.Array
        Lazy: 0-d for 'mean'/'sum', the target's shape for 'none'; in the input's dtype.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastloss as fl, fastloss.dask as fld
    >>> log_probs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]))
    >>> x = da.from_array(log_probs, chunks=(1, 2))
    >>> fld.nll_loss(x, np.array([0, 1])).compute()
    array(0.28990925)
    >>> fl.nll_loss(log_probs, np.array([0, 1]))
    array(0.28990925)
    """
    problem = _prepare("nll_loss", False, input, target, weight, size_average, ignore_index,
                       reduce, reduction, 0.0)
    return _Graph(problem).loss()


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    r"""Cross-entropy of dask logits against class indices, chunked along rows and classes.

    .. math::

        \ell_i = (1-\varepsilon)\, w_{t_i} (\operatorname{lse}_i - x_{i t_i})
                 + \frac{\varepsilon}{C} \Big(S \operatorname{lse}_i - \sum_c w_c x_{ic}\Big),
        \qquad S = \sum_c w_c

    where :math:`\operatorname{lse}_i` comes from the merged logsumexp states of the row's
    class chunks (the rows are never rechunked into one block), and 'mean' divides by
    :math:`\sum_{i: t_i \ne \text{ii}} w_{t_i}`, as torch.

    Parameters
    ----------
    input : dask.array.Array
        Logits, (C,), (N, C) or (N, C, d1, ..., dK); any chunking, float16, bfloat16,
        float32 or float64.
    target : dask.array.Array or array_like of int
        Class indices, (), (N,) or (N, d1, ..., dK); rechunked to the input's row chunks.
        A target out of range raises IndexError when the graph is computed.
    weight : array_like, optional
        Per-class weights, shape (C,).
    size_average, ignore_index, reduce, reduction, label_smoothing
        As in :func:`fastloss.cross_entropy` (class-probability targets are not supported
        here).

    Returns
    -------
    dask.array.Array
        Lazy: 0-d for 'mean'/'sum', the target's shape for 'none'; in the input's dtype.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastloss as fl, fastloss.dask as fld
    >>> logits = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, -1.0, 2.0]])
    >>> target = np.array([3, 0])
    >>> x = da.from_array(logits, chunks=(1, 2))      # split along rows and classes
    >>> fld.cross_entropy(x, target, reduction="none").compute()
    array([0.4401897 , 1.90282656])
    >>> fld.cross_entropy(x, target, label_smoothing=0.1).compute()
    array(1.24650813)
    >>> fl.cross_entropy(logits, target, label_smoothing=0.1)
    array(1.24650813)
    """
    problem = _prepare("cross_entropy", True, input, target, weight, size_average, ignore_index,
                       reduce, reduction, label_smoothing)
    return _Graph(problem).loss()


def cross_entropy_backward(grad_output, input, target, weight=None, size_average=None,
                           ignore_index=-100, reduce=None, reduction="mean",
                           label_smoothing=0.0):
    r"""Gradient of :func:`cross_entropy` with respect to the dask logits.

    .. math::

        \frac{\partial L}{\partial x_{ic}} = g_i \Big[(1-\varepsilon) w_{t_i}
            (p_{ic} - [c = t_i]) + \frac{\varepsilon}{C}\big(S p_{ic} - w_c\big)\Big],
        \qquad p_{ic} = e^{(x_{ic} - m_i) - \log s_i}

    with :math:`(m_i, s_i)` the row's merged logsumexp state, and :math:`g_i` the upstream
    gradient (divided by the mean's denominator for 'mean'). Each gradient block is written
    from its own input block.

    Parameters
    ----------
    grad_output : scalar, array_like or dask.array.Array
        A scalar for 'mean'/'sum'; the loss's shape for 'none'.
    input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As for :func:`cross_entropy`.

    Returns
    -------
    dask.array.Array
        Lazy, shaped, typed and chunked like ``input``.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastloss as fl, fastloss.dask as fld
    >>> logits = np.array([[1.0, 2.0, 3.0]] * 3)
    >>> target = np.array([2, 1, 0])
    >>> x = da.from_array(logits, chunks=(2, 2))
    >>> grad = fld.cross_entropy_backward(1.0, x, target).compute()
    >>> np.allclose(grad, fl.cross_entropy_backward(1.0, logits, target))
    True
    """
    problem = _prepare("cross_entropy", True, input, target, weight, size_average, ignore_index,
                       reduce, reduction, label_smoothing)
    return _Graph(problem).grad(grad_output, "cross_entropy_backward")


def cross_entropy_with_grad(input, target, weight=None, size_average=None, ignore_index=-100,
                            reduce=None, reduction="mean", label_smoothing=0.0,
                            grad_output=None):
    """:func:`cross_entropy` and its gradient as two lazy arrays sharing one graph.

    Compute them together (``dask.compute(loss, grad)``) so that the per-block states are
    computed once for both.

    Parameters
    ----------
    input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As for :func:`cross_entropy`.
    grad_output : scalar, array_like or dask.array.Array, optional
        Upstream gradient; ``None`` means 1 ('mean'/'sum') or ones ('none').

    Returns
    -------
    loss : dask.array.Array
        As :func:`cross_entropy` returns.
    grad : dask.array.Array
        As :func:`cross_entropy_backward` returns.

    Examples
    --------
    >>> import numpy as np, dask, dask.array as da, fastloss.dask as fld
    >>> x = da.from_array(np.array([[1.0, 2.0, 3.0]] * 3), chunks=(3, 2))
    >>> loss, grad = dask.compute(*fld.cross_entropy_with_grad(x, np.array([2, 1, 0])))
    >>> loss, grad.round(4)
    (array(1.40760596), array([[ 0.03  ,  0.0816, -0.1116],
           [ 0.03  , -0.2518,  0.2217],
           [-0.3033,  0.0816,  0.2217]]))
    """
    problem = _prepare("cross_entropy", True, input, target, weight, size_average, ignore_index,
                       reduce, reduction, label_smoothing)
    graph = _Graph(problem)
    return graph.loss(), graph.grad(grad_output, "cross_entropy_with_grad")
