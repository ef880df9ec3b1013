"""Public cross-entropy and NLL: validation, canonical views, and the fused kernels."""

from __future__ import annotations

import math
import operator

import numpy as np

from . import _kernels_ce as K
from ._arrays import (
    FLOAT_DTYPES,
    as_array,
    check_out,
    deliver,
    require_float,
    storage,
    tile_for,
    writable_target,
)
from ._config import PARALLEL_MIN_ELEMENTS
from ._kernels_losses import lane_sum
from ._reduction import resolve_reduction, upstream_per_element, upstream_scalar

__all__ = [
    "nll_loss",
    "nll_loss_backward",
    "nll_loss_with_grad",
    "cross_entropy",
    "cross_entropy_backward",
    "cross_entropy_with_grad",
]

_ONE = np.ones(1, dtype=np.float64)


class _Problem:
    """A validated call: canonical views and everything the kernels and reductions need."""

    __slots__ = (
        "x3", "target", "probabilities", "weight", "weight_sum", "ignore_index", "eps",
        "reduction", "loss_shape", "dtype", "grad_dtype", "input_shape", "denominator_cache",
        "weight64", "extras",
    )

    def denominator(self) -> float:
        """What 'mean' divides by: sum of w[t] over non-ignored targets, or the row count."""
        if self.denominator_cache is None:
            if self.probabilities:
                total = float(self.target.size // max(self.x3.shape[1], 1))
            else:
                valid = self.target != self.ignore_index
                if self.weight64 is None:
                    total = float(np.count_nonzero(valid))
                else:
                    total = float(np.sum(self.weight64[self.target[valid]]))
            self.denominator_cache = total
        return self.denominator_cache

    @property
    def rows(self) -> int:
        outer, _, inner = self.x3.shape
        return outer * inner


# ---------------------------------------------------------------------------------------------
# Validation


def _check_ignore_index(ignore_index, func: str) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(
            f"{func}(): argument 'ignore_index' must be int, not "
            f"{type(ignore_index).__name__} ({ignore_index!r})"
        )
    return operator.index(ignore_index)


def _check_label_smoothing(label_smoothing) -> float:
    eps = float(label_smoothing)
    if eps > 1.0:
        raise ValueError(
            f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing} "
            "(pass a value in [0, 1])"
        )
    # torch silently treats negative values and NaN as no smoothing.
    return eps if eps > 0.0 else 0.0


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _class_weight(weight, classes: int, dtype: np.dtype, spatial: bool):
    """(per-class weights in the compute dtype, their float64 sum, the float64 weights)."""
    compute = _compute_dtype(dtype)
    if weight is None:
        return np.ones(classes, compute), float(classes), None
    w = as_array(weight, "weight")
    if w.shape != (classes,):
        detail = "" if spatial else f" {classes}"
        raise ValueError(
            f"weight tensor should be defined either for all{detail} classes or no classes "
            f"but got weight tensor of shape: {list(w.shape)} (pass one weight per class, "
            f"shape ({classes},))"
        )
    if w.dtype not in FLOAT_DTYPES and w.dtype.kind not in "iub":
        raise TypeError(f"weight must be a real array, got dtype {w.dtype}")
    w64 = w.astype(np.float64)
    return np.ascontiguousarray(w, dtype=compute), float(w64.sum()), w64


def _check_index_target(x: np.ndarray, t: np.ndarray) -> tuple[int, ...]:
    """torch's shape rules for class-index targets; returns the 'none' output shape."""
    if x.ndim == 1:
        if t.ndim == 0 or t.shape == (1,):
            return ()
        if t.ndim == 1:
            raise ValueError(
                f"For 1D input, 1D target must have size 1, but got target size: {t.shape[0]}"
            )
        raise ValueError(
            f"input of shape {x.shape} (one unbatched sample) needs a 0-d target, got shape "
            f"{t.shape}"
        )
    if x.ndim == 2:
        if t.ndim > 1:
            raise ValueError(
                "0D or 1D target tensor expected, multi-target not supported "
                f"(input {x.shape}, target {t.shape}: pass class indices of shape "
                f"({x.shape[0]},), or class probabilities of shape {x.shape})"
            )
        batch = t.shape[0] if t.ndim == 1 else 0
        if batch != x.shape[0]:
            raise ValueError(
                f"Expected input batch_size ({x.shape[0]}) to match target batch_size "
                f"({batch})."
            )
        return t.shape
    expected = (x.shape[0],) + x.shape[2:]
    if t.shape != expected:
        raise ValueError(
            f"Expected target size {list(expected)}, got {list(t.shape)} (for input of shape "
            f"{list(x.shape)} the target holds one class index per position: "
            "(N, d1, ..., dK))"
        )
    return t.shape


def _index_target(t: np.ndarray, classes: int, ignore_index: int) -> np.ndarray:
    """int64 class indices, every one in [0, C) or equal to ignore_index (else IndexError)."""
    if t.dtype.kind not in "iub":
        raise ValueError(
            f"expected target dtype to be an integer type (class indices), but got {t.dtype}; "
            "for class probabilities pass a target of the input's shape"
        )
    if t.size == 0:
        return np.ascontiguousarray(t, dtype=np.int64)
    low, high = t.min(), t.max()
    if t.dtype == np.uint64 and high > np.iinfo(np.int64).max:
        raise IndexError(f"Target {high} is out of bounds for {classes} classes.")
    t64 = np.ascontiguousarray(t, dtype=np.int64)
    if low < 0 or high >= classes:
        bad = (t64 != ignore_index) & ((t64 < 0) | (t64 >= classes))
        if bad.any():
            value = int(t64[bad].flat[0])
            raise IndexError(
                f"Target {value} is out of bounds for {classes} classes (valid targets are "
                f"0..{classes - 1}, or ignore_index={ignore_index})"
            )
    return t64


def _prepare(func, input, target, weight, ignore_index, reduction, label_smoothing, cross):
    x = as_array(input, "input")
    t = as_array(target, "target")
    require_float(x, func)
    ii = _check_ignore_index(ignore_index, func)
    eps = _check_label_smoothing(label_smoothing) if cross else 0.0
    problem = _Problem()
    problem.grad_dtype = x.dtype  # the gradient is typed like the input, even when promoted
    problem.reduction = reduction
    problem.eps = eps
    problem.ignore_index = ii
    problem.denominator_cache = None
    if x.ndim == 0:
        if not cross:
            raise ValueError("Expected 1 or more dimensions (got 0)")
        if t.dtype in FLOAT_DTYPES:
            raise IndexError(
                "Dimension specified as 1 but tensor has no dimensions (a 0-d input has no "
                "class dim: pass logits of shape (C,) or (N, C))"
            )
    probabilities = cross and t.shape == x.shape
    problem.probabilities = probabilities
    if probabilities:
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"Expected floating point type for target with class probabilities, got "
                f"{t.dtype} (class indices have shape {x.shape[:1] + x.shape[2:]})"
            )
        if ii >= 0:
            raise ValueError(
                f"ignore_index is not supported for floating point target (got ignore_index="
                f"{ii}; leave it at its default -100 for class-probability targets)"
            )
        dtype = x.dtype if x.dtype == t.dtype else np.result_type(x.dtype, t.dtype)
        if dtype not in FLOAT_DTYPES:  # e.g. bfloat16 with float16
            dtype = np.dtype(np.float32)
        x = x.astype(dtype, copy=False)
        t = t.astype(dtype, copy=False)
        loss_shape = x.shape[:1] + x.shape[2:] if x.ndim > 1 else ()
    else:
        loss_shape = _check_index_target(x, t)
    dtype = x.dtype
    problem.dtype = dtype
    problem.input_shape = x.shape
    problem.loss_shape = loss_shape
    classes = x.shape[1] if x.ndim > 1 else x.shape[0]
    problem.weight, problem.weight_sum, problem.weight64 = _class_weight(
        weight, classes, dtype, spatial=x.ndim > 2
    )
    # Canonical views: (N, C, prod(d)) with the class axis in the middle, unbatched as N = 1.
    outer = x.shape[0] if x.ndim > 1 else 1
    inner = math.prod(x.shape[2:])
    problem.x3 = np.ascontiguousarray(x).reshape(outer, classes, inner)
    if probabilities:
        problem.target = np.ascontiguousarray(t).reshape(outer, classes, inner)
    else:
        t64 = _index_target(t, classes, ii)
        problem.target = t64.reshape(outer, inner)
    return problem


class _Extras:
    """cross_entropy's options beyond torch: z-loss, softcapping, returned lse and accuracy."""

    __slots__ = ("z_scale", "softcap", "want_lse", "want_correct")

    def __init__(self, z_scale=0.0, softcap=None, want_lse=False, want_correct=False):
        self.z_scale, self.softcap = z_scale, softcap
        self.want_lse, self.want_correct = want_lse, want_correct

    @property
    def returns(self) -> bool:
        return self.want_lse or self.want_correct


_NO_EXTRAS = _Extras()


def _check_extras(lse_square_scale, softcap, return_lse, return_accuracy) -> _Extras:
    z_scale = float(lse_square_scale)
    if not math.isfinite(z_scale):
        raise ValueError(
            f"lse_square_scale must be a finite number, got {lse_square_scale!r} (the z-loss "
            "weight, typically 1e-4)"
        )
    if softcap is not None:
        cap = float(softcap)
        if not (math.isfinite(cap) and cap > 0.0):
            raise ValueError(
                f"softcap must be a positive finite number or None, got {softcap!r} (Gemma 2 "
                "uses softcap=30.0)"
            )
        softcap = cap
    return _Extras(z_scale, softcap, bool(return_lse), bool(return_accuracy))


# ---------------------------------------------------------------------------------------------
# The small-call fast path

_INT64 = np.dtype(np.int64).num


def _fixed_sum(values: np.ndarray) -> np.float64:
    """The float64 sum of per-row terms in one fixed order, whatever the thread count (and
    without NumPy's warnings: inf - inf = NaN is a legitimate loss here, as in torch)."""
    return np.float64(lane_sum(values, values.shape[0]))


def _plain_options(weight, size_average, reduce, label_smoothing, lse_square_scale, softcap,
                   return_lse, return_accuracy) -> bool:
    """cross_entropy's options are all at their defaults (the fast path's precondition)."""
    return (weight is None and size_average is None and reduce is None and softcap is None
            and type(label_smoothing) in (float, int) and label_smoothing == 0
            and type(lse_square_scale) in (float, int) and lse_square_scale == 0
            and return_lse is False and return_accuracy is False)


def _plain_rows(cross: bool, input, target, ignore_index, reduction, want_loss, want_grad,
                grad_output=None):
    """The commonest call, computed without the general path's bookkeeping, or None.

    Takes (N, C) C-contiguous float32/float64 logits with N >= 1, C >= 1, int64 class indices
    of shape (N,), no weight, no smoothing, no extras, and at least one counted target; every
    other call (and every call that must raise) returns None and takes the general path, which
    gives the same bits on this one: the same kernel, the same arguments and the same
    fixed-order float64 sum. ``grad_output`` is validated by the general path's helpers. A
    small call then costs a few microseconds of Python, not tens.
    """
    if not (type(input) is np.ndarray and type(target) is np.ndarray and input.ndim == 2
            and target.ndim == 1 and input.dtype.char in "fd" and target.dtype.num == _INT64
            and input.flags.c_contiguous and target.flags.c_contiguous
            and type(ignore_index) is int and type(reduction) is str):
        return None
    rows, classes = input.shape
    if rows == 0 or classes == 0 or target.shape[0] != rows or reduction not in _REDUCTIONS:
        return None
    ignored, out_of_range = K.count_row_targets(target, classes, ignore_index)
    counted = rows - ignored
    if out_of_range or counted == 0:
        return None
    row_loss = np.empty(rows, dtype=np.float64)
    upstream, step = _ONE, 0
    if want_grad:
        grad = np.empty_like(input)
        func = "cross_entropy" if cross else "nll_loss"
        if reduction == "none":
            upstream, step = np.ones(rows), 1
            if grad_output is not None:
                g = upstream_per_element(grad_output, (rows,), func)
                upstream = np.ascontiguousarray(g, dtype=np.float64).reshape(rows)
        else:
            scale = upstream_scalar(grad_output, reduction, func)
            if reduction == "mean":
                scale = np.float64(scale) / np.float64(counted)
            if scale != 1.0:
                upstream = np.array([scale], dtype=np.float64)
    else:
        grad = _NO_GRAD[input.dtype.char]
    args = (input, target, ignore_index, upstream, step, want_grad, row_loss, grad)
    if rows < 2 or input.size < PARALLEL_MIN_ELEMENTS:  # the Kernel's own serial choice
        (K.cross_entropy_rows_plain if cross else K.nll_rows_plain)(*args)
    elif cross:
        weight = np.ones(classes, input.dtype)
        K.cross_entropy_rows(
            input.size, rows, input, target, weight, float(classes), ignore_index, 0.0,
            upstream, step, want_grad, row_loss, _NO_ROWS, grad, None, 0.0, _NO_ROWS,
            _NO_ROWS, _NO_ROWS,
        )
    else:
        weight = np.ones(classes, input.dtype)
        K.nll_rows(
            input.size, rows, input, target, weight, ignore_index, upstream, step, want_grad,
            row_loss, grad,
        )
    if not want_loss:
        return grad
    if reduction == "none":
        loss = row_loss.astype(input.dtype)
    else:
        total = _fixed_sum(row_loss)
        if reduction == "mean":
            total = total / np.float64(counted)
        loss = np.asarray(total, dtype=input.dtype)
    return (loss, grad) if want_grad else loss


_REDUCTIONS = ("mean", "sum", "none")
_NO_ROWS = np.empty(0, dtype=np.float64)
_NO_GRAD = {"f": np.empty((0, 0), np.float32), "d": np.empty((0, 0), np.float64)}


# ---------------------------------------------------------------------------------------------
# Kernel runs


def _upstream(problem: _Problem, grad_output, func: str) -> tuple[np.ndarray, int]:
    """(upstream factors as float64, step): one scalar or one value per row."""
    if problem.reduction == "none":
        if grad_output is None:
            return np.ones(max(problem.rows, 1)), 1
        g = upstream_per_element(grad_output, problem.loss_shape, func)
        return np.ascontiguousarray(g, dtype=np.float64).reshape(-1), 1
    scale = upstream_scalar(grad_output, problem.reduction, func)
    if problem.reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.float64(scale) / np.float64(problem.denominator())
    return np.array([scale], dtype=np.float64), 0


def _run(problem: _Problem, want_grad: bool, upstream, step, grad3, cross: bool):
    """-> (per-row loss, smoothing (or None), z-loss, lse, correctness) terms, float64.

    The last three are empty unless ``problem.extras`` asks for them.
    """
    x3 = problem.x3
    outer, classes, inner = x3.shape
    row_loss = np.empty(outer * inner, dtype=np.float64)
    index_smoothing = cross and not problem.probabilities and problem.eps > 0.0
    row_smooth = np.empty(outer * inner if index_smoothing else 0, dtype=np.float64)
    extras = problem.extras
    rows = outer * inner
    row_z = np.empty(rows if extras.z_scale != 0.0 else 0, dtype=np.float64)
    row_lse = np.empty(rows if extras.want_lse else 0, dtype=np.float64)
    row_correct = np.empty(rows if extras.want_correct else 0, dtype=np.float64)
    terms = (row_loss, row_smooth if index_smoothing else None, row_z, row_lse, row_correct)
    if row_loss.size == 0:
        return terms
    if classes == 0:  # only probability targets get here: -sum over no classes
        row_loss[:] = -0.0
        row_z[:] = np.inf  # lse = -inf
        row_lse[:] = -np.inf
        row_correct[:] = 0.0
        return terms
    more = (extras.softcap, extras.z_scale, row_z, row_lse, row_correct)
    xs = storage(x3)
    gs = storage(grad3) if want_grad else np.empty((0, 0, 0), xs.dtype)
    work = x3.size
    if inner == 1:
        x2, g2 = xs.reshape(outer, classes), gs.reshape(gs.shape[0], gs.shape[1])
        if problem.probabilities:
            y2 = storage(problem.target).reshape(outer, classes)
            K.cross_entropy_prob_rows(
                work, outer, x2, y2, problem.weight, problem.eps, upstream, step, want_grad,
                row_loss, g2, *more,
            )
        elif cross:
            capped = extras.softcap is not None
            rows_kernel = K.cross_entropy_capped_rows if capped else K.cross_entropy_rows
            rows_kernel(
                work, outer, x2, problem.target.reshape(outer), problem.weight,
                problem.weight_sum, problem.ignore_index, problem.eps, upstream, step,
                want_grad, row_loss, row_smooth, g2, *more,
            )
        else:
            K.nll_rows(
                work, outer, x2, problem.target.reshape(outer), problem.weight,
                problem.ignore_index, upstream, step, want_grad, row_loss, g2,
            )
        return terms
    tile = tile_for(classes, x3.dtype, inner)
    items = outer * (-(-inner // tile))
    if problem.probabilities:
        K.cross_entropy_prob_strided(
            work, items, xs, storage(problem.target), problem.weight, problem.eps, upstream,
            step, want_grad, row_loss, gs, tile, *more,
        )
    elif cross:
        K.cross_entropy_strided(
            work, items, xs, problem.target, problem.weight, problem.weight_sum,
            problem.ignore_index, problem.eps, upstream, step, want_grad, row_loss, row_smooth,
            gs, tile, *more,
        )
    else:
        K.nll_strided(
            work, items, xs, problem.target, problem.weight, problem.ignore_index, upstream,
            step, want_grad, row_loss, gs, tile,
        )
    return terms


def _reduce(problem: _Problem, terms) -> np.ndarray:
    """Per-row terms -> the forward result, summed in float64 in a fixed order.

    With label smoothing the loss is (1 - eps) * nll + (eps / C) * smooth, each term reduced
    on its own as torch does (so a zero 'mean' denominator gives NaN, not inf).
    """
    row_loss, row_smooth, row_z = terms[:3]
    classes = problem.x3.shape[1]
    keep, spread = 1.0 - problem.eps, problem.eps / max(classes, 1)
    # inf and NaN losses are legitimate results here (torch computes them silently).
    with np.errstate(all="ignore"):
        if problem.reduction == "none":
            if row_smooth is not None:
                row_loss = keep * row_loss + spread * row_smooth
            if row_z.size:
                row_loss = row_loss + row_z
            return row_loss.astype(problem.dtype).reshape(problem.loss_shape)
        # torch negates a sum for probability targets, so their empty sum is -0.0.
        total = -_fixed_sum(-row_loss) if problem.probabilities else _fixed_sum(row_loss)
        smooth = None if row_smooth is None else _fixed_sum(row_smooth)
        z_loss = _fixed_sum(row_z) if row_z.size else None
        if problem.reduction == "mean":
            denominator = np.float64(problem.denominator())
            total = total / denominator
            smooth = None if smooth is None else smooth / denominator
            z_loss = None if z_loss is None else z_loss / denominator
        if smooth is not None:
            total = keep * total + spread * smooth
        if z_loss is not None:
            total = total + z_loss
        return np.asarray(total, dtype=problem.dtype)


def _extra_outputs(problem: _Problem, terms) -> tuple:
    """The per-row lse and correctness that ``return_lse`` / ``return_accuracy`` ask for."""
    row_lse, row_correct = terms[3:]
    outputs = ()
    if problem.extras.want_lse:
        outputs += (row_lse.astype(problem.dtype).reshape(problem.loss_shape),)
    if problem.extras.want_correct:
        outputs += (row_correct.astype(problem.dtype).reshape(problem.loss_shape),)
    return outputs


def _forward(func, cross, input, target, weight, size_average, ignore_index, reduce,
             reduction, label_smoothing, extras=_NO_EXTRAS):
    reduction = resolve_reduction(size_average, reduce, reduction, stacklevel=3)
    problem = _prepare(func, input, target, weight, ignore_index, reduction, label_smoothing,
                       cross)
    problem.extras = extras
    empty_grad = np.empty((0, 0, 0), problem.x3.dtype)
    terms = _run(problem, False, _ONE, 0, empty_grad, cross)
    loss = _reduce(problem, terms)
    return (loss, *_extra_outputs(problem, terms)) if extras.returns else loss


def _value_and_grad(func, cross, want_loss, grad_output, out, input, target, weight,
                    size_average, ignore_index, reduce, reduction, label_smoothing,
                    extras=_NO_EXTRAS):
    reduction = resolve_reduction(size_average, reduce, reduction, stacklevel=3)
    problem = _prepare(func, input, target, weight, ignore_index, reduction, label_smoothing,
                       cross)
    problem.extras = extras
    if out is not None:
        check_out(out, problem.input_shape, problem.grad_dtype)
    upstream, step = _upstream(problem, grad_output, func)
    direct = out if problem.grad_dtype == problem.dtype else None
    grad = writable_target(direct, problem.input_shape, problem.dtype, problem.x3, problem.target)
    terms = _run(problem, True, upstream, step, grad.reshape(problem.x3.shape), cross)
    if grad.dtype != problem.grad_dtype:  # input promoted by a wider probability target
        grad = grad.astype(problem.grad_dtype)
    grad = deliver(grad, out)
    result = (_reduce(problem, terms), grad) if want_loss else (grad,)
    result += _extra_outputs(problem, terms)
    return result if len(result) > 1 else result[0]


# ---------------------------------------------------------------------------------------------
# Public functions


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    r"""Negative log-likelihood loss of log-probabilities ``input`` at class-index targets.

    .. math::

        \ell_i = -w_{t_i}\, x_{i, t_i}, \qquad
        \text{mean} = \frac{\sum_{i: t_i \ne \text{ii}} \ell_i}
                           {\sum_{i: t_i \ne \text{ii}} w_{t_i}}

    Rows whose target equals ``ignore_index`` contribute 0 to the sum and nothing to the
    denominator.

    Parameters
    ----------
    input : array_like
        Log-probabilities (any floats are accepted), shape (C,), (N, C) or
        (N, C, d1, ..., dK); float16, bfloat16, float32 or float64.
    target : array_like of int
        Class indices in [0, C) (or ``ignore_index``), shape (), (N,) or (N, d1, ..., dK).
        Any integer dtype.
    weight : array_like, optional
        Per-class weights, shape (C,).
    size_average, reduce : bool, optional
        Deprecated torch arguments; when either is given it overrides ``reduction`` (with
        torch's warning).
    ignore_index : int, default -100
        Target value that is skipped (any int, including a valid class).
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Returns
    -------
    numpy.ndarray
        0-d for 'mean'/'sum', the target's shape for 'none'; in the input's dtype.

    Raises
    ------
    IndexError
        A target outside [0, C) that is not ``ignore_index``.
    ValueError
        Mismatched shapes, a bad weight or reduction.

    See Also
    --------
    torch.nn.functional.nll_loss

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> log_probs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]))
    >>> fl.nll_loss(log_probs, np.array([0, 1]))
    array(0.28990925)
    """
    if weight is None and size_average is None and reduce is None:
        loss = _plain_rows(False, input, target, ignore_index, reduction, True, False)
        if loss is not None:
            return loss
    return _forward("nll_loss", False, input, target, weight, size_average, ignore_index,
                    reduce, reduction, 0.0)


def nll_loss_backward(grad_output, input, target, weight=None, size_average=None,
                      ignore_index=-100, reduce=None, reduction="mean", *, out=None):
    r"""Gradient of :func:`nll_loss` with respect to ``input``.

    .. math::

        \frac{\partial L}{\partial x_{ic}} = -g_i\, w_{t_i} [c = t_i]

    with :math:`g_i` the upstream gradient (divided by the mean's denominator for 'mean').

    Parameters
    ----------
    grad_output : array_like
        Scalar for 'mean'/'sum', the loss's shape for 'none'.
    input, target, weight, size_average, ignore_index, reduce, reduction
        As for :func:`nll_loss`.
    out : numpy.ndarray, optional
        Array shaped and typed like ``input`` to write into (may be ``input``).

    Returns
    -------
    numpy.ndarray
        Shaped and typed like ``input``.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.nll_loss_backward(1.0, np.zeros((2, 3)), np.array([0, 2]))
    array([[-0.5,  0. ,  0. ],
           [ 0. ,  0. , -0.5]])
    """
    if weight is None and size_average is None and reduce is None and out is None:
        grad = _plain_rows(False, input, target, ignore_index, reduction, False, True,
                           grad_output)
        if grad is not None:
            return grad
    return _value_and_grad("nll_loss", False, False, grad_output, out, input, target, weight,
                           size_average, ignore_index, reduce, reduction, 0.0)


def nll_loss_with_grad(input, target, weight=None, size_average=None, ignore_index=-100,
                       reduce=None, reduction="mean", grad_output=None, out=None):
    """:func:`nll_loss` and its gradient in one call.

    Parameters
    ----------
    input, target, weight, size_average, ignore_index, reduce, reduction
        As for :func:`nll_loss`.
    grad_output : array_like, optional
        Upstream gradient; ``None`` means 1 ('mean'/'sum') or ones ('none').
    out : numpy.ndarray, optional
        Where to write the gradient (may be ``input``).

    Returns
    -------
    loss : numpy.ndarray
        As :func:`nll_loss` returns.
    grad : numpy.ndarray
        As :func:`nll_loss_backward` returns.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> loss, grad = fl.nll_loss_with_grad(np.log(np.full((1, 2), 0.5)), np.array([1]))
    >>> loss, grad
    (array(0.69314718), array([[ 0., -1.]]))
    """
    if weight is None and size_average is None and reduce is None and out is None:
        result = _plain_rows(False, input, target, ignore_index, reduction, True, True,
                             grad_output)
        if result is not None:
            return result
    return _value_and_grad("nll_loss", False, True, grad_output, out, input, target, weight,
                           size_average, ignore_index, reduce, reduction, 0.0)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0, *, lse_square_scale=0.0,
                  softcap=None, return_lse=False, return_accuracy=False):
    r"""Cross-entropy of logits ``input`` against class indices or class probabilities.

    Computed without forming log_softmax: for class-index targets, with
    :math:`\operatorname{lse}_i = \log\sum_c e^{x_{ic}}` and smoothing :math:`\varepsilon`,

    .. math::

        \ell_i = (1-\varepsilon)\, w_{t_i} (\operatorname{lse}_i - x_{i t_i})
                 + \frac{\varepsilon}{C} \sum_c w_c (\operatorname{lse}_i - x_{ic})

    and 'mean' divides by :math:`\sum_{i: t_i \ne \text{ii}} w_{t_i}`. For probability
    targets :math:`y` (same shape as ``input``), with :math:`y' = (1-\varepsilon) y +
    \varepsilon / C`, :math:`\ell_i = -\sum_c w_c y'_{ic} \log p_{ic}` and 'mean' divides by
    the number of rows :math:`N d_1 \cdots d_K`.

    Parameters
    ----------
    input : array_like
        Logits, shape (C,), (N, C) or (N, C, d1, ..., dK); class axis 1 (0 unbatched).
    target : array_like
        Class indices (any integer dtype), shape (), (N,) or (N, d1, ..., dK); or class
        probabilities shaped like ``input`` (floating).
    weight : array_like, optional
        Per-class weights, shape (C,).
    size_average, reduce : bool, optional
        Deprecated torch arguments, as in :func:`nll_loss`.
    ignore_index : int, default -100
        Skipped target value (class-index targets only).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    label_smoothing : float, default 0.0
        In [0, 1]; values below 0 (and NaN) mean 0, as in torch.
    lse_square_scale : float, default 0.0
        Keyword only, beyond torch. The z-loss of PaLM: :math:`\lambda
        \operatorname{lse}_i^2` is added to every counted row's loss (unweighted; 'mean'
        divides it by the same denominator), with gradient :math:`2 \lambda
        \operatorname{lse}_i\, p_{ic}`.
    softcap : float, optional
        Keyword only, beyond torch. Gemma 2's logit softcapping: the logits become
        :math:`c \tanh(x / c)` before everything else, and the gradient carries the factor
        :math:`1 - \tanh^2(x / c)`.
    return_lse : bool, default False
        Keyword only: also return each row's :math:`\operatorname{lse}_i` (of the capped
        logits), in the loss's 'none' shape.
    return_accuracy : bool, default False
        Keyword only: also return each row's correctness, 1.0 where the argmax of the
        logits (torch.argmax: the first maximum, NaN counting as the maximum) is the target
        (the target's argmax for probability targets), 0.0 where not, NaN for ignored rows;
        ``np.nanmean`` of it is the token accuracy.

    Returns
    -------
    numpy.ndarray
        0-d for 'mean'/'sum'; for 'none', the target's shape (index targets) or the input's
        shape without the class axis (probability targets). With ``return_lse`` and/or
        ``return_accuracy``, a tuple ``(loss, lse, correct)`` of the requested arrays.

    Raises
    ------
    IndexError
        A class index outside [0, C) that is not ``ignore_index``.
    ValueError
        Mismatched shapes, bad weight, label_smoothing > 1, ignore_index >= 0 with
        probability targets, or a bad reduction.

    Notes
    -----
    Per-row losses are accumulated in float64 and reduced in a fixed order, so 'mean' and
    'sum' are bitwise identical for any thread count and more accurate than torch's float32
    accumulation. Spatial inputs are computed on their own layout, with no transposed copy.

    See Also
    --------
    torch.nn.functional.cross_entropy, cross_entropy_with_grad

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> logits = np.array([[1.0, 2.0, 3.0]] * 3)
    >>> fl.cross_entropy(logits, np.array([2, 1, 0]))
    array(1.40760596)
    """
    if _plain_options(weight, size_average, reduce, label_smoothing, lse_square_scale, softcap,
                      return_lse, return_accuracy):
        loss = _plain_rows(True, input, target, ignore_index, reduction, True, False)
        if loss is not None:
            return loss
    extras = _check_extras(lse_square_scale, softcap, return_lse, return_accuracy)
    return _forward("cross_entropy", True, input, target, weight, size_average, ignore_index,
                    reduce, reduction, label_smoothing, extras)


def cross_entropy_backward(grad_output, input, target, weight=None, size_average=None,
                           ignore_index=-100, reduce=None, reduction="mean",
                           label_smoothing=0.0, *, out=None, lse_square_scale=0.0,
                           softcap=None, return_lse=False, return_accuracy=False):
    r"""Gradient of :func:`cross_entropy` with respect to the logits.

    .. math::

        \frac{\partial L}{\partial x_{ic}} = g_i \Big[(1-\varepsilon) w_{t_i}
            (p_{ic} - [c = t_i]) + \frac{\varepsilon}{C}\big(S p_{ic} - w_c\big)\Big],
        \qquad S = \sum_c w_c

    (for probability targets :math:`g_i (A_i p_{ic} - w_c y'_{ic})`, :math:`A_i = \sum_c
    w_c y'_{ic}`), with :math:`p = \operatorname{softmax}(x)` and :math:`g_i` the upstream
    gradient divided by the mean's denominator for 'mean'.

    Parameters
    ----------
    grad_output : array_like
        Scalar for 'mean'/'sum', the loss's shape for 'none'.
    input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As for :func:`cross_entropy`.
    out : numpy.ndarray, optional
        Array shaped and typed like ``input`` to write into (may be ``input``).
    lse_square_scale, softcap, return_lse, return_accuracy
        :func:`cross_entropy`'s extras (keyword only).

    Returns
    -------
    numpy.ndarray
        Shaped and typed like ``input``; followed by the per-row lse and correctness when
        ``return_lse`` / ``return_accuracy`` ask for them.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> logits = np.array([[1.0, 2.0, 3.0]] * 3)
    >>> fl.cross_entropy_backward(1.0, logits, np.array([2, 1, 0])).round(4)
    array([[ 0.03  ,  0.0816, -0.1116],
           [ 0.03  , -0.2518,  0.2217],
           [-0.3033,  0.0816,  0.2217]])
    """
    if out is None and _plain_options(weight, size_average, reduce, label_smoothing,
                                      lse_square_scale, softcap, return_lse, return_accuracy):
        grad = _plain_rows(True, input, target, ignore_index, reduction, False, True,
                           grad_output)
        if grad is not None:
            return grad
    extras = _check_extras(lse_square_scale, softcap, return_lse, return_accuracy)
    return _value_and_grad("cross_entropy", True, False, grad_output, out, input, target,
                           weight, size_average, ignore_index, reduce, reduction,
                           label_smoothing, extras)


def cross_entropy_with_grad(input, target, weight=None, size_average=None, ignore_index=-100,
                            reduce=None, reduction="mean", label_smoothing=0.0,
                            grad_output=None, out=None, *, lse_square_scale=0.0, softcap=None,
                            return_lse=False, return_accuracy=False):
    """:func:`cross_entropy` and its gradient, fused: the fast path for training.

    One pass over the logits computes each row's max and sum of exponentials (online,
    blockwise), the loss, and the gradient written once (into ``out`` when given, which may
    be ``input`` itself); no log_softmax is ever formed.

    Parameters
    ----------
    input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As for :func:`cross_entropy`.
    grad_output : array_like, optional
        Upstream gradient; ``None`` means 1 ('mean'/'sum') or ones ('none').
    out : numpy.ndarray, optional
        Where to write the gradient (shaped and typed like ``input``; may be ``input``).
    lse_square_scale, softcap, return_lse, return_accuracy
        :func:`cross_entropy`'s extras (keyword only), fused into the same pass.

    Returns
    -------
    loss : numpy.ndarray
        As :func:`cross_entropy` returns.
    grad : numpy.ndarray
        As :func:`cross_entropy_backward` returns.
    lse, correct : numpy.ndarray
        Only when ``return_lse`` / ``return_accuracy`` are set.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> logits = np.array([[1.0, 2.0, 3.0]] * 3)
    >>> loss, grad = fl.cross_entropy_with_grad(logits, np.array([2, 1, 0]))
    >>> round(float(loss), 4), bool(np.allclose(grad.sum(axis=1), 0))
    (1.4076, True)
    >>> loss, grad, lse, correct = fl.cross_entropy_with_grad(
    ...     logits, np.array([2, 1, 0]), lse_square_scale=1e-4, softcap=30.0,
    ...     return_lse=True, return_accuracy=True)
    >>> lse.round(4), correct
    (array([3.4002, 3.4002, 3.4002]), array([1., 0., 0.]))
    """
    if out is None and _plain_options(weight, size_average, reduce, label_smoothing,
                                      lse_square_scale, softcap, return_lse, return_accuracy):
        result = _plain_rows(True, input, target, ignore_index, reduction, True, True,
                             grad_output)
        if result is not None:
            return result
    extras = _check_extras(lse_square_scale, softcap, return_lse, return_accuracy)
    return _value_and_grad("cross_entropy", True, True, grad_output, out, input, target,
                           weight, size_average, ignore_index, reduce, reduction,
                           label_smoothing, extras)
