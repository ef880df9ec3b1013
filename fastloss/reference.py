"""Plain NumPy reference implementations of every fastloss function.

This module is the test oracle that the Numba kernels are checked against, and the
"NumPy baseline" in the benchmarks. It is written to be obviously correct, not fast:

* Every function is vectorized NumPy (no Python loops over rows), no numba, no torch.
* Each computes in the floating dtype of the ``input`` it receives. There is no upcast
  inside: the tests pass float64 arrays (the oracle), the benchmarks pass float32
  (the baseline). Python scalars (``label_smoothing``, ``margin``, ...) are "weak" under
  NumPy's promotion rules, so they never change the dtype.
* Forward functions have the same signatures as the public ``fastloss`` functions (which
  are those of ``torch.nn.functional``), including the legacy ``size_average`` / ``reduce``
  arguments, which are mapped to a reduction string without any warning.
* ``<name>_backward(grad_output, <forward args>)`` returns d(loss)/d(input) from the
  explicit closed-form formulas in ``shared/reference/torch-semantics.md``; no finite
  differences, no autograd. ``grad_output`` has the shape of the forward's result.
* Special values (inf, nan, empty dims, all-ignored batches, ...) give torch's results.
  Where torch's nan pattern depends on the order of operations (e.g. ``0 * inf``), the
  formulas below group the factors the way torch's backward does; comments say so.
* Input is assumed valid: torch's errors are raised by the public package, not here.
  Class-index targets of any integer dtype are accepted.

Results are NumPy arrays; scalar results are 0-d arrays.
"""

import functools
import math

import numpy as np

__all__ = [
    "logsumexp",
    "softmax",
    "log_softmax",
    "sigmoid",
    "logsigmoid",
    "nll_loss",
    "cross_entropy",
    "kl_div",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "multi_margin_loss",
    "logsumexp_backward",
    "softmax_backward",
    "log_softmax_backward",
    "sigmoid_backward",
    "logsigmoid_backward",
    "nll_loss_backward",
    "cross_entropy_backward",
    "kl_div_backward",
    "binary_cross_entropy_backward",
    "binary_cross_entropy_with_logits_backward",
    "mse_loss_backward",
    "multi_margin_loss_backward",
]

# binary_cross_entropy clamps each log term at -100 so that x = 0 or 1 gives a finite loss.
_BCE_LOG_CLAMP = -100
# binary_cross_entropy's gradient divides by max(x*(1-x), EPS). torch uses the float32
# value of 1e-12 (9.9999999600e-13) even for float64 input. A NumPy float32 scalar keeps
# float32 arithmetic in float32 and is converted exactly in float64 arithmetic.
_BCE_GRAD_EPS = np.float32(1e-12)


# --------------------------------------------------------------------------------------
# Helpers shared by several functions
# --------------------------------------------------------------------------------------


def _numpy_result(func):
    """Silence NumPy's floating-point warnings and return an ndarray (0-d for scalars).

    inf and nan results are intended (they are torch's results), so the warnings are noise.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            result = func(*args, **kwargs)
            if isinstance(result, tuple):  # cross_entropy with return_lse / return_accuracy
                return tuple(np.asarray(r) for r in result)
            return np.asarray(result)

    return wrapper


def _floating(x):
    """``x`` as an array; integer and bool input become float32 (torch's default dtype)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.inexact):
        x = x.astype(np.float32)
    return x


def _weight_array(weight, x):
    """A weight (weight, pos_weight) as an array in the dtype of the input ``x``."""
    return np.asarray(weight).astype(x.dtype)


def _resolve_reduction(size_average, reduce, reduction):
    """torch's rule: if either legacy argument is given, it overrides ``reduction``.

    A legacy argument that is None counts as True.
    """
    if size_average is None and reduce is None:
        return "mean" if reduction == "elementwise_mean" else reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


def _reduce(loss, reduction, denominator):
    """Apply a reduction to an elementwise loss; ``mean`` divides the sum by ``denominator``."""
    if reduction == "none":
        return loss
    total = np.sum(loss)
    if reduction == "sum":
        return total
    return total / denominator  # 0/0 gives nan, e.g. for an empty input


def _upstream(grad_output, reduction, denominator, loss_shape, dtype):
    """The factor g that multiplies d(loss_i)/d(input), broadcast to the elementwise loss shape.

    ``grad_output`` itself for 'none', the scalar ``grad_output`` for 'sum', and the scalar
    ``grad_output / denominator`` for 'mean'.
    """
    g = np.asarray(grad_output, dtype=dtype)
    if reduction == "mean":
        g = g / denominator
    return np.broadcast_to(g, loss_shape)


def _sum_to_shape(grad, shape):
    """Sum a gradient over the axes along which an operand of ``shape`` was broadcast."""
    extra_leading = grad.ndim - len(shape)
    grad = np.sum(grad, axis=tuple(range(extra_leading)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return np.sum(grad, axis=stretched, keepdims=True).reshape(shape)


def _normalize_dims(dim, ndim):
    """An int or a tuple of ints as a tuple of non-negative axes (a 0-d array counts as 1-d)."""
    dims = (dim,) if np.ndim(dim) == 0 else tuple(dim)
    rank = max(ndim, 1)
    return tuple(int(d) % rank for d in dims)


def _at_least_1d(x):
    """0-d input behaves as a vector of one element (torch accepts dim 0 and -1 for it)."""
    return x.reshape(1) if x.ndim == 0 else x


# --------------------------------------------------------------------------------------
# logsumexp, softmax, log_softmax
# --------------------------------------------------------------------------------------


def _minus_max(x, axis):
    """``x`` minus its max along ``axis``: the shift that makes softmax safe from overflow.

    ``initial=-inf`` makes the max of an empty axis -inf instead of an error. A nan in the
    row makes the max nan, so the whole row becomes nan, as in torch.
    """
    return x - np.max(x, axis=axis, keepdims=True, initial=-np.inf)


@_numpy_result
def logsumexp(input, dim, keepdim=False):
    x = _floating(input)
    axes = _normalize_dims(dim, x.ndim)
    x1 = _at_least_1d(x)
    m = np.max(x1, axis=axes, keepdims=True, initial=-np.inf)
    # torch shifts by 0 instead of an infinite max: then a row of all -inf gives
    # log(0) = -inf and any +inf gives +inf (even together with -inf), not nan.
    m = np.where(np.isinf(m), 0, m)
    lse = np.log(np.sum(np.exp(x1 - m), axis=axes, keepdims=True)) + m
    if x.ndim == 0:
        return lse.reshape(())
    return lse if keepdim else np.squeeze(lse, axis=axes)


@_numpy_result
def logsumexp_backward(grad_output, input, dim, keepdim=False):
    x = _floating(input)
    axes = _normalize_dims(dim, x.ndim)
    lse = logsumexp(x, dim, keepdim=True)
    g = np.asarray(grad_output, dtype=x.dtype)
    if not keepdim and x.ndim > 0:
        g = np.expand_dims(g, axes)
    # d lse / dx = softmax = exp(x - lse): 0 at a -inf entry, nan for an all -inf row
    # (-inf - -inf) and at a +inf entry (inf - inf).
    return g * np.exp(x - lse)


def _as_dtype(input, dtype):
    """softmax's ``dtype=`` casts the input before the op (this is how int input works)."""
    x = np.asarray(input)
    return x if dtype is None else x.astype(dtype)


def _softmax_and_log_softmax(x, dim):
    """Both softmax and log_softmax of ``x`` along the int ``dim`` (computed in x's dtype)."""
    x1 = _at_least_1d(x)
    axis = int(dim) % x1.ndim
    shifted = _minus_max(x1, axis)
    exps = np.exp(shifted)
    total = np.sum(exps, axis=axis, keepdims=True)
    # Unlike logsumexp, an infinite max is not replaced: a row with +inf or all -inf
    # gives inf - inf = nan everywhere.
    probs = (exps / total).reshape(x.shape)
    log_probs = (shifted - np.log(total)).reshape(x.shape)
    return probs, log_probs


@_numpy_result
def softmax(input, dim, _stacklevel=3, dtype=None):
    probs, _ = _softmax_and_log_softmax(_as_dtype(input, dtype), dim)
    return probs


@_numpy_result
def log_softmax(input, dim, _stacklevel=3, dtype=None):
    _, log_probs = _softmax_and_log_softmax(_as_dtype(input, dtype), dim)
    return log_probs


def _gradient_dtype(input, computed):
    """The gradient is typed like the input (softmax's ``dtype=`` only affects the output)."""
    input_dtype = np.asarray(input).dtype
    return input_dtype if np.issubdtype(input_dtype, np.inexact) else computed.dtype


@_numpy_result
def softmax_backward(grad_output, input, dim, _stacklevel=3, dtype=None):
    x = _as_dtype(input, dtype)
    s, _ = _softmax_and_log_softmax(x, dim)
    g = np.asarray(grad_output, dtype=s.dtype)
    axis = int(dim) % max(x.ndim, 1)
    g1, s1 = _at_least_1d(g), _at_least_1d(s)
    grad = s1 * (g1 - np.sum(g1 * s1, axis=axis, keepdims=True))
    return grad.reshape(x.shape).astype(_gradient_dtype(input, grad))


@_numpy_result
def log_softmax_backward(grad_output, input, dim, _stacklevel=3, dtype=None):
    x = _as_dtype(input, dtype)
    probs, _ = _softmax_and_log_softmax(x, dim)
    g = np.asarray(grad_output, dtype=probs.dtype)
    axis = int(dim) % max(x.ndim, 1)
    g1, p1 = _at_least_1d(g), _at_least_1d(probs)
    # exp(log_softmax) is the softmax; at a -inf entry it is 0, so that entry gets g itself.
    grad = g1 - p1 * np.sum(g1, axis=axis, keepdims=True)
    return grad.reshape(x.shape).astype(_gradient_dtype(input, grad))


# --------------------------------------------------------------------------------------
# sigmoid, logsigmoid
# --------------------------------------------------------------------------------------


def _sigmoid(x):
    # torch's form: exp(-x) overflows to inf for very negative x, giving exactly 0
    # (float32 below about -88.72), not a denormal.
    return 1 / (1 + np.exp(-x))


def _sigmoid_of_minus(x):
    """sigmoid(-x) without overflow; torch's logsigmoid backward has this form."""
    z = np.exp(-np.abs(x))
    return np.where(x < 0, 1 / (1 + z), z / (1 + z))


def _logsigmoid(x):
    # Stable for all x: log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)).
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


@_numpy_result
def sigmoid(input):
    return _sigmoid(_floating(input))


@_numpy_result
def sigmoid_backward(grad_output, input):
    x = _floating(input)
    s = _sigmoid(x)
    return np.asarray(grad_output, dtype=x.dtype) * (s * (1 - s))


@_numpy_result
def logsigmoid(input):
    return _logsigmoid(_floating(input))


@_numpy_result
def logsigmoid_backward(grad_output, input):
    x = _floating(input)
    return np.asarray(grad_output, dtype=x.dtype) * _sigmoid_of_minus(x)


# --------------------------------------------------------------------------------------
# Class-index losses: nll_loss, cross_entropy
# --------------------------------------------------------------------------------------


def _classes_last(input):
    """The input with its class axis last: (C,) stays, (N, C, d1..dK) becomes (N, d1..dK, C)."""
    x = np.asarray(input)
    return x if x.ndim == 1 else np.moveaxis(x, 1, -1)


def _classes_back(grad_last, ndim):
    """Inverse of ``_classes_last``."""
    return grad_last if ndim == 1 else np.moveaxis(grad_last, -1, 1)


def _class_targets(target, input_ndim, ignore_index):
    """Integer targets shaped like the elementwise loss, plus the mask of ignored rows.

    Returns ``(ignored, safe_target)`` where ignored rows hold class 0 in ``safe_target``,
    so that it can be used as an index. An unbatched (C,) input takes a 0-d target or a
    target of shape (1,); both give a 0-d loss.
    """
    t = np.asarray(target).astype(np.int64)
    if input_ndim == 1:
        t = t.reshape(())
    ignored = t == ignore_index
    return ignored, np.where(ignored, 0, t)


def _take_class(values_last, classes):
    """``values_last[..., classes]`` elementwise over the leading axes.

    With C == 0 every target must be ignored (or there are no rows): give zeros.
    """
    if values_last.shape[-1] == 0:
        return np.zeros(classes.shape, values_last.dtype)
    return np.take_along_axis(values_last, classes[..., None], axis=-1)[..., 0]


def _class_weight_vector(weight, num_classes, dtype):
    """``weight`` as a (C,) array in the computation dtype; ones when it is None."""
    if weight is None:
        return np.ones(num_classes, dtype=dtype)
    return np.asarray(weight).astype(dtype)


def _target_weights(weight_vector, ignored, safe_target):
    """w[t_i] for each row, 0 for ignored rows. Their sum is the 'mean' denominator W."""
    if weight_vector.shape[0] == 0:
        return np.zeros(safe_target.shape, weight_vector.dtype)
    return np.where(ignored, 0, weight_vector[safe_target])


def _smoothing(label_smoothing):
    """Negative and nan label_smoothing silently mean 0 in torch."""
    return float(label_smoothing) if label_smoothing > 0 else 0.0


def _smoothing_per_class(eps, num_classes):
    """eps / C as a Python float; C = 0 gives inf, as torch's float division does."""
    return eps / num_classes if num_classes else float("inf")


def _has_probability_target(input, target):
    """torch's rule: a target shaped exactly like the input holds class probabilities."""
    return np.shape(target) == np.shape(input)


class _IndexTargetRows:
    """The per-row quantities shared by the index-target forward and backward.

    ``x`` is the input with classes last, ``ignored``/``safe_target`` as in
    ``_class_targets``, ``weights`` the (C,) class weights, ``target_weights`` w[t_i]
    (0 when ignored) and ``total_weight`` their sum W, the 'mean' denominator.
    """

    def __init__(self, input, target, weight, ignore_index):
        self.ndim = np.ndim(input)
        self.x = _classes_last(input)
        self.num_classes = self.x.shape[-1]
        self.ignored, self.safe_target = _class_targets(target, self.ndim, ignore_index)
        self.weights = _class_weight_vector(weight, self.num_classes, self.x.dtype)
        self.target_weights = _target_weights(self.weights, self.ignored, self.safe_target)
        self.total_weight = np.sum(self.target_weights)

    def upstream(self, grad_output, reduction):
        """g_i for every row, 0 for ignored rows."""
        g = _upstream(grad_output, reduction, self.total_weight, self.ignored.shape, self.x.dtype)
        return np.where(self.ignored, 0, g)

    def one_hot(self):
        return np.arange(self.num_classes) == self.safe_target[..., None]


@_numpy_result
def nll_loss(
    input,
    target,
    weight=None,
    size_average=None,
    ignore_index=-100,
    reduce=None,
    reduction="mean",
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    rows = _IndexTargetRows(input, target, weight, ignore_index)
    picked = _take_class(rows.x, rows.safe_target)
    # An ignored row gives exactly 0, whatever its input (even nan).
    loss = np.where(rows.ignored, 0, -rows.target_weights * picked)
    return _reduce(loss, reduction, rows.total_weight)


@_numpy_result
def nll_loss_backward(
    grad_output,
    input,
    target,
    weight=None,
    size_average=None,
    ignore_index=-100,
    reduce=None,
    reduction="mean",
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    rows = _IndexTargetRows(input, target, weight, ignore_index)
    g = rows.upstream(grad_output, reduction)
    # Only the target entry of each row has a gradient: -w[t_i] * g_i. With 'mean' and
    # W = 0 this is -0 * inf = nan at the target entries only; ignored rows stay 0.
    at_target = np.where(rows.ignored, 0, -rows.target_weights * g)
    grad_last = np.where(rows.one_hot(), at_target[..., None], 0).astype(rows.x.dtype)
    return _classes_back(grad_last, rows.ndim)


@_numpy_result
def cross_entropy(
    input,
    target,
    weight=None,
    size_average=None,
    ignore_index=-100,
    reduce=None,
    reduction="mean",
    label_smoothing=0.0,
    *,
    lse_square_scale=0.0,
    softcap=None,
    return_lse=False,
    return_accuracy=False,
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    eps = _smoothing(label_smoothing)
    x = _softcapped(input, softcap)
    if _has_probability_target(input, target):
        loss = _cross_entropy_probabilities(x, target, weight, reduction, eps)
    else:
        loss = _cross_entropy_indices(x, target, weight, ignore_index, reduction, eps)
    if lse_square_scale:
        rows = _ExtraRows(x, target, weight, ignore_index)
        z_loss = np.where(rows.counted, lse_square_scale * rows.lse**2, 0)
        loss = loss + _reduce(z_loss, reduction, rows.denominator)
    extras = ()
    if return_lse:
        extras += (_ExtraRows(x, target, weight, ignore_index).lse,)
    if return_accuracy:
        extras += (_ExtraRows(x, target, weight, ignore_index).correct(),)
    return (loss, *extras) if extras else loss


@_numpy_result
def cross_entropy_backward(
    grad_output,
    input,
    target,
    weight=None,
    size_average=None,
    ignore_index=-100,
    reduce=None,
    reduction="mean",
    label_smoothing=0.0,
    *,
    lse_square_scale=0.0,
    softcap=None,
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    eps = _smoothing(label_smoothing)
    x = _softcapped(input, softcap)
    if _has_probability_target(input, target):
        grad = _cross_entropy_probabilities_backward(
            grad_output, x, target, weight, reduction, eps
        )
    else:
        grad = _cross_entropy_indices_backward(
            grad_output, x, target, weight, ignore_index, reduction, eps
        )
    if lse_square_scale:
        # d(lambda lse^2)/dx_c = 2 lambda lse p_c, on counted rows.
        rows = _ExtraRows(x, target, weight, ignore_index)
        g = _upstream(grad_output, reduction, rows.denominator, rows.lse.shape, rows.lse.dtype)
        factor = np.where(rows.counted, 2 * lse_square_scale * rows.lse * g, 0)
        grad = grad + _classes_back(factor[..., None] * rows.probs, np.ndim(input))
    if softcap is not None:
        # x' = c tanh(x / c): dx'/dx = 1 - tanh(x / c)^2.
        grad = grad * (1 - np.tanh(np.asarray(input) / softcap) ** 2)
    return grad


def _softcapped(input, softcap):
    """Gemma 2's logit softcapping, c tanh(x / c); the input itself when softcap is None."""
    x = np.asarray(input)
    return x if softcap is None else softcap * np.tanh(x / softcap)


class _ExtraRows:
    """Per-row quantities of cross_entropy's extras: lse, counted rows, the 'mean'
    denominator, softmax probabilities and argmax correctness (classes last)."""

    def __init__(self, input, target, weight, ignore_index):
        self.x = _classes_last(input)
        empty = np.full(self.x.shape[:-1], -np.inf)
        self.lse = logsumexp(self.x, -1) if self.x.shape[-1] else empty
        self.probabilities = _has_probability_target(input, target)
        if self.probabilities:
            self.y = _classes_last(target)
            self.counted = np.ones(self.lse.shape, bool)
            self.denominator = self.lse.size
        else:
            rows = _IndexTargetRows(input, target, weight, ignore_index)
            self.target, self.counted = rows.safe_target, ~rows.ignored
            self.denominator = rows.total_weight

    @property
    def probs(self):
        return np.exp(self.x - self.lse[..., None])

    def correct(self):
        """1 where torch.argmax of the logits is the target (the target's argmax for
        probability targets), 0 where not, NaN for ignored rows."""
        predicted = np.argmax(self.x, axis=-1)
        wanted = np.argmax(self.y, axis=-1) if self.probabilities else self.target
        return np.where(self.counted, (predicted == wanted).astype(np.float64), np.nan)


def _log_softmax_last(x):
    """log_softmax over the last axis (classes)."""
    shifted = _minus_max(x, -1)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _cross_entropy_indices(input, target, weight, ignore_index, reduction, eps):
    """l_i = (1-eps) w[t_i] (-lp[t_i]) + (eps/C) sum_c w_c (-lp_c); 0 for ignored rows."""
    rows = _IndexTargetRows(input, target, weight, ignore_index)
    log_probs = _log_softmax_last(rows.x)
    nll = np.where(rows.ignored, 0, -rows.target_weights * _take_class(log_probs, rows.safe_target))
    nll = _reduce(nll, reduction, rows.total_weight)
    if eps == 0:
        # The smoothing term is skipped, as in torch: a -inf logit would give 0 * inf.
        return nll
    smooth = np.where(rows.ignored, 0, -np.sum(rows.weights * log_probs, axis=-1))
    # Both terms are divided by W = sum of w[t_i] over non-ignored rows. Each is reduced
    # before they are combined, as in torch: with W = 0 the nll mean is 0/0 = nan even
    # where the smoothing mean alone would be inf.
    smooth = _reduce(smooth, reduction, rows.total_weight)
    return (1 - eps) * nll + _smoothing_per_class(eps, rows.num_classes) * smooth


def _cross_entropy_indices_backward(
    grad_output, input, target, weight, ignore_index, reduction, eps
):
    """dx_ic = g_i ((1-eps) w[t_i] (p_ic - [c == t_i]) + (eps/C) (S p_ic - w_c)), S = sum_c w_c.

    Computed by the chain rule through log_softmax, as torch's autograd does: G, the
    gradient with respect to log p, is scattered (not multiplied by a one-hot), then
    dx = G - p * sum_c G. With 'mean' and W = 0, g_i is inf: the target entry becomes
    inf - inf = nan and the others inf, exactly as in torch.
    """
    rows = _IndexTargetRows(input, target, weight, ignore_index)
    probs = np.exp(_log_softmax_last(rows.x))
    g = rows.upstream(grad_output, reduction)[..., None]
    # Ignored rows have g_i = 0: a row of finite logits gets 0, but a row whose softmax is
    # nan (it holds +inf or nan, or is all -inf) gets nan, also as in torch.
    scattered = np.where(rows.one_hot(), -rows.target_weights[..., None] * g, 0)
    grad_log_probs = (1 - eps) * scattered
    if eps > 0:
        per_class = _smoothing_per_class(eps, rows.num_classes)
        grad_log_probs = grad_log_probs - per_class * g * rows.weights
    grad = grad_log_probs - probs * np.sum(grad_log_probs, axis=-1, keepdims=True)
    return _classes_back(grad.astype(rows.x.dtype), rows.ndim)


def _smoothed_weighted_targets(input, target, weight, eps):
    """Classes-last log-probabilities and w_c * y'_c with y' = (1-eps) y + eps/C."""
    x, y = _classes_last(input), _classes_last(target)
    num_classes = x.shape[-1]
    if eps > 0:
        y = (1 - eps) * y + _smoothing_per_class(eps, num_classes)
    if weight is not None:
        y = y * _weight_array(weight, x)
    return _log_softmax_last(x), y


def _cross_entropy_probabilities(input, target, weight, reduction, eps):
    """l_i = -sum_c w_c y'_ic lp_ic; 'mean' divides by the number of rows, never by weights."""
    log_probs, weighted_targets = _smoothed_weighted_targets(input, target, weight, eps)
    # A target of 0 at a -inf logit gives 0 * -inf = nan, as in torch (no xlogy).
    terms = weighted_targets * log_probs
    if reduction == "none":
        return -np.sum(terms, axis=-1)
    # Negating the total (not each row) gives torch's -0.0 for an empty 'sum'.
    total = -np.sum(terms)
    if reduction == "sum":
        return total
    # torch divides by numel / C, which is 0 / 0 = nan for C = 0.
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / np.divide(float(terms.size), terms.shape[-1])


def _cross_entropy_probabilities_backward(grad_output, input, target, weight, reduction, eps):
    """dx_ic = g_i ((sum_k w_k y'_ik) p_ic - w_c y'_ic)."""
    log_probs, weighted_targets = _smoothed_weighted_targets(input, target, weight, eps)
    probs = np.exp(log_probs)
    num_rows = math.prod(log_probs.shape[:-1])
    g = _upstream(grad_output, reduction, num_rows, log_probs.shape[:-1], log_probs.dtype)
    row_total = np.sum(weighted_targets, axis=-1, keepdims=True)
    grad = g[..., None] * (row_total * probs - weighted_targets)
    return _classes_back(grad, np.ndim(input))


# --------------------------------------------------------------------------------------
# kl_div
# --------------------------------------------------------------------------------------


def _t_log_t(t):
    """torch.xlogy(t, t): t * log(t) with 0 at t = 0; nan for t < 0 or nan."""
    return np.where(t == 0, 0, t * np.log(t))


def _kl_reduction(size_average, reduce, reduction):
    """Returns ``(reduction applied to the pointwise loss, divide by batch size afterwards)``.

    'batchmean' is a sum divided by input.shape[0]. torch divides by the batch size
    whenever reduction == 'batchmean', even when legacy arguments chose the reduction
    (so legacy reduce=True with 'batchmean' divides twice).
    """
    if size_average is not None or reduce is not None:
        mode = _resolve_reduction(size_average, reduce, reduction)
    else:
        mode = "sum" if reduction == "batchmean" else _resolve_reduction(None, None, reduction)
    return mode, reduction == "batchmean"


def _batch_size(x):
    """kl_div's 'batchmean' divisor: input.shape[0], or 1 for a 0-d input."""
    return x.shape[0] if x.ndim > 0 else 1


@_numpy_result
def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    mode, per_batch = _kl_reduction(size_average, reduce, reduction)
    x, t = np.asarray(input), np.asarray(target)
    if log_target:
        loss = np.exp(t) * (t - x)  # t = -inf gives 0 * inf = nan
    else:
        loss = _t_log_t(t) - t * x  # t = 0 with x = -inf gives 0 - nan = nan
    reduced = _reduce(loss, mode, loss.size)
    return reduced / _batch_size(x) if per_batch else reduced


@_numpy_result
def kl_div_backward(
    grad_output, input, target, size_average=None, reduce=None, reduction="mean", log_target=False
):
    mode, per_batch = _kl_reduction(size_average, reduce, reduction)
    x, t = np.asarray(input), np.asarray(target)
    loss_shape = np.broadcast_shapes(x.shape, t.shape)
    g = _upstream(grad_output, mode, math.prod(loss_shape), loss_shape, np.result_type(x, t))
    if per_batch:
        g = g / _batch_size(x)
    dloss_dx = -np.exp(t) if log_target else -t
    return _sum_to_shape(np.broadcast_to(dloss_dx * g, loss_shape), x.shape)


# --------------------------------------------------------------------------------------
# binary_cross_entropy, binary_cross_entropy_with_logits
# --------------------------------------------------------------------------------------


@_numpy_result
def binary_cross_entropy(
    input, target, weight=None, size_average=None, reduce=None, reduction="mean"
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    x, y = np.asarray(input), np.asarray(target)
    # Clamping the logs at -100 makes x = 0 or 1 finite; log1p(-x) keeps 1 - x accurate.
    log_x = np.maximum(np.log(x), _BCE_LOG_CLAMP)
    log_1mx = np.maximum(np.log1p(-x), _BCE_LOG_CLAMP)
    loss = (y - 1) * log_1mx - y * log_x
    if weight is not None:
        loss = loss * _weight_array(weight, x)
    return _reduce(loss, reduction, loss.size)  # 'mean' never divides by the weights


@_numpy_result
def binary_cross_entropy_backward(
    grad_output, input, target, weight=None, size_average=None, reduce=None, reduction="mean"
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    x, y = np.asarray(input), np.asarray(target)
    g = _upstream(grad_output, reduction, x.size, x.shape, x.dtype)
    grad = g * (x - y) / np.maximum(x * (1 - x), _BCE_GRAD_EPS)
    if weight is not None:
        grad = grad * _weight_array(weight, x)
    return grad


def _pos_weight_factor(x, target, pos_weight):
    """lw = 1 + (pw - 1) * y, the factor on log(sigmoid(x)); 1 without pos_weight."""
    if pos_weight is None:
        return 1
    return 1 + (_weight_array(pos_weight, x) - 1) * target


@_numpy_result
def binary_cross_entropy_with_logits(
    input,
    target,
    weight=None,
    size_average=None,
    reduce=None,
    reduction="mean",
    pos_weight=None,
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    x, y = np.asarray(input), np.asarray(target)
    # -(pw y log s + (1-y) log(1-s)) written with logsigmoid, which never overflows.
    # x = +inf with y = 1 gives 0 * inf = nan and x = -inf gives -inf + inf = nan, as in torch.
    loss = (1 - y) * x - _pos_weight_factor(x, y, pos_weight) * _logsigmoid(x)
    if weight is not None:
        loss = loss * _weight_array(weight, x)
    return _reduce(loss, reduction, loss.size)


@_numpy_result
def binary_cross_entropy_with_logits_backward(
    grad_output,
    input,
    target,
    weight=None,
    size_average=None,
    reduce=None,
    reduction="mean",
    pos_weight=None,
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    x, y = np.asarray(input), np.asarray(target)
    if pos_weight is None:
        dloss_dx = _sigmoid(x) - y
    else:
        pw_y = _weight_array(pos_weight, x) * y
        dloss_dx = (pw_y + 1 - y) * _sigmoid(x) - pw_y
    if weight is not None:
        dloss_dx = dloss_dx * _weight_array(weight, x)
    g = _upstream(grad_output, reduction, x.size, np.shape(dloss_dx), dloss_dx.dtype)
    return g * dloss_dx


# --------------------------------------------------------------------------------------
# mse_loss
# --------------------------------------------------------------------------------------


@_numpy_result
def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    x, y = np.asarray(input), np.asarray(target)
    loss = (x - y) ** 2  # input and target broadcast
    if weight is None:
        return _reduce(loss, reduction, loss.size)
    # With a weight, torch's 'mean' is sum(w (x-y)^2) / sum(w); w has the input's shape.
    w = _weight_array(weight, x)
    return _reduce(loss * w, reduction, np.sum(w))


@_numpy_result
def mse_loss_backward(
    grad_output, input, target, size_average=None, reduce=None, reduction="mean", weight=None
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    x, y = np.asarray(input), np.asarray(target)
    diff = x - y
    if weight is None:
        dloss_dx, denominator = 2 * diff, diff.size
    else:
        w = _weight_array(weight, x)
        dloss_dx, denominator = 2 * w * diff, np.sum(w)
    g = _upstream(grad_output, reduction, denominator, diff.shape, diff.dtype)
    return _sum_to_shape(np.broadcast_to(g * dloss_dx, diff.shape), x.shape)


# --------------------------------------------------------------------------------------
# multi_margin_loss
# --------------------------------------------------------------------------------------


class _MarginRows:
    """multi_margin_loss's per-row quantities, on the input viewed as (N, C).

    A (C,) input is one row and a 0-d input is one row of one class (its loss is 0).
    ``active`` marks the entries j != y with z_j = margin - x_y + x_j > 0 (strictly:
    a nan z is never active, so a nan input entry silently contributes 0, as in torch).
    """

    def __init__(self, input, target, margin, weight):
        x = np.asarray(input)
        self.input_shape = x.shape
        self.loss_shape = np.shape(target) if x.ndim <= 1 else x.shape[:1]
        self.x = x.reshape(-1, x.shape[-1]) if x.ndim > 0 else x.reshape(1, 1)
        num_rows, self.num_classes = self.x.shape
        self.target = np.asarray(target).astype(np.int64).reshape(num_rows)
        rows = np.arange(num_rows)
        self.z = margin - self.x[rows, self.target][:, None] + self.x
        not_target = np.arange(self.num_classes) != self.target[:, None]
        self.active = (self.z > 0) & not_target
        self.target_weights = (
            1 if weight is None else _weight_array(weight, x)[self.target][:, None]
        )


@_numpy_result
def multi_margin_loss(
    input,
    target,
    p=1,
    margin=1.0,
    weight=None,
    size_average=None,
    reduce=None,
    reduction="mean",
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    rows = _MarginRows(input, target, margin, weight)
    hinge = rows.z if p == 1 else rows.z * rows.z
    # The weight multiplies after the power, and only where the hinge is active.
    terms = np.where(rows.active, rows.target_weights * hinge, 0)
    loss = (np.sum(terms, axis=1) / rows.num_classes).reshape(rows.loss_shape)
    # 'mean' divides by N; N = 0 gives nan for 'mean' and 0 for 'sum' (torch returns
    # uninitialised memory there; these are the consistent values).
    return _reduce(loss, reduction, loss.size)


@_numpy_result
def multi_margin_loss_backward(
    grad_output,
    input,
    target,
    p=1,
    margin=1.0,
    weight=None,
    size_average=None,
    reduce=None,
    reduction="mean",
):
    reduction = _resolve_reduction(size_average, reduce, reduction)
    rows = _MarginRows(input, target, margin, weight)
    num_rows = rows.x.shape[0]
    dhinge = np.ones_like(rows.z) if p == 1 else 2 * rows.z
    # For j != y with z_j > 0: w[y] p z_j^(p-1) / C; at the kink z = 0 the subgradient is 0.
    d_other = np.where(rows.active, rows.target_weights * dhinge, 0) / rows.num_classes
    # x_y enters every z_j with a minus sign.
    d_target = -np.sum(d_other, axis=1)
    grad = d_other.copy()
    grad[np.arange(num_rows), rows.target] = d_target
    g = _upstream(grad_output, reduction, num_rows, rows.loss_shape, rows.x.dtype)
    grad = grad * g.reshape(num_rows, 1)
    return grad.reshape(rows.input_shape)
