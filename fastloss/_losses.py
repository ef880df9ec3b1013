"""Public kl_div, binary cross-entropy (on probabilities and on logits), mse_loss and
multi_margin_loss: validation with torch's rules, broadcasting, and the fused kernels.

Every loss has three entry points that share one validated ``_Call``: the forward, the
backward (``grad_output`` first) and ``_with_grad`` (both from one pass over memory).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import _kernels_losses as K
from ._arrays import (
    FLOAT_DTYPES,
    as_array,
    check_out,
    deliver,
    promote_to_float,
    storage,
    writable_target,
)
from ._reduction import REDUCTIONS, resolve_reduction, upstream_per_element, upstream_scalar

__all__ = [
    "kl_div",
    "kl_div_backward",
    "kl_div_with_grad",
    "binary_cross_entropy",
    "binary_cross_entropy_backward",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_backward",
    "binary_cross_entropy_with_logits_with_grad",
    "mse_loss",
    "mse_loss_backward",
    "mse_loss_with_grad",
    "multi_margin_loss",
    "multi_margin_loss_backward",
    "multi_margin_loss_with_grad",
]


class TargetOutOfRangeError(IndexError, ValueError):
    """A class index outside [0, C) given to multi_margin_loss.

    An IndexError like cross_entropy's, and a ValueError, the type fastloss gives where
    torch raises a RuntimeError; catching either works.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> try:
    ...     fl.multi_margin_loss(np.zeros((2, 3)), np.array([0, 3]))
    ... except IndexError as error:
    ...     print(str(error).split(" (")[0])
    multi_margin_loss: target out of range: Target 3 is out of bounds for 3 classes
    """


class _Call:
    """One validated call: what the kernel needs, and how to shape and type its results.

    ``launch(loss, g_scale, g_array, partials, grad)`` runs the fused kernel on the canonical
    views; ``partials`` receives float64 loss sums (per chunk, or per row for
    multi_margin_loss), reduced here in a fixed order.
    """

    __slots__ = (
        "launch", "size", "chunks", "loss_shape", "grad_shape", "input_shape", "dtype",
        "loss_dtype",
        "grad_dtype", "reduction", "denominator", "batch", "inputs", "check",
    )

    def __init__(self, **fields):
        self.batch = None  # kl_div's 'batchmean' divisor, applied after the reduction
        self.check = None  # a validation pass to run before writing into a caller's out
        for name, value in fields.items():
            setattr(self, name, value)

    def loss(self, loss_elements, partials) -> np.ndarray:
        with np.errstate(all="ignore"):  # inf and NaN losses are legitimate results
            if self.reduction == "none":
                value = loss_elements.reshape(self.loss_shape)
            else:
                value = np.sum(partials)  # pairwise, fixed order: any thread count agrees
                if self.reduction == "mean":
                    value = value / np.float64(self.denominator)
            if self.batch is not None:
                value = value / self.dtype.type(self.batch)
            return np.asarray(value, dtype=self.loss_dtype)

    def upstream(self, grad_output, func: str):
        """(g_scale, g_array): the factor every element's derivative is multiplied by."""
        if self.reduction == "none":
            if grad_output is None:
                g_array = None
            else:
                g = upstream_per_element(grad_output, self.loss_shape, func)
                g_array = np.ascontiguousarray(g, dtype=self.dtype).reshape(-1)
                if self.batch is not None:
                    g_array = g_array / self.dtype.type(self.batch)
                g_array = storage(g_array)
            scale = 1.0 if self.batch is None else _divide(1.0, self.batch)
            return scale, g_array
        scale = upstream_scalar(grad_output, self.reduction, func)
        if self.reduction == "mean":
            scale = _divide(scale, self.denominator)
        if self.batch is not None:
            scale = _divide(scale, self.batch)
        return scale, None

    def run(self, want_loss: bool, want_grad: bool, grad_output, out, func: str):
        """The forward result, the gradient, or both (as ``_with_grad`` returns them)."""
        loss_storage = None
        if want_loss and self.reduction == "none":
            loss_storage = storage(np.empty(self.size, self.dtype))
        partials = np.empty(self.chunks, dtype=np.float64)
        grad = grad_store = None
        if want_grad:
            g_scale, g_array = self.upstream(grad_output, func)
            if out is not None:
                check_out(out, self.input_shape, self.grad_dtype)
                if self.check is not None:
                    self.check()
            direct = (
                out if self.grad_shape == self.input_shape and self.dtype == self.grad_dtype
                else None
            )
            grad = writable_target(direct, self.grad_shape, self.dtype, *self.inputs)
            grad_store = storage(grad.reshape(-1))
        else:
            g_scale, g_array = 1.0, None
        if self.size:
            self.launch(loss_storage, g_scale, g_array, partials, grad_store)
        result = ()
        if want_loss:
            elements = None if loss_storage is None else loss_storage.view(self.dtype)
            result += (self.loss(elements, partials),)
        if want_grad:
            if self.grad_shape != self.input_shape:
                with np.errstate(all="ignore"):
                    grad = _sum_to_shape(grad.astype(np.float64), self.input_shape)
            if grad.dtype != self.grad_dtype:
                grad = grad.astype(self.grad_dtype)
            result += (deliver(grad, out),)
        return result[0] if len(result) == 1 else result


def _divide(a, b) -> float:
    """a / b with IEEE results (inf, NaN) for b = 0, as torch: an empty 'mean' is NaN."""
    with np.errstate(all="ignore"):
        return float(np.float64(a) / np.float64(b))


def _sum_to_shape(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """The gradient of an operand that was broadcast to ``grad.shape``: summed back."""
    leading = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(leading)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Validation helpers


def _float_input(value, name: str) -> np.ndarray:
    """An operand as a floating array; integers and bools become float32, as torch's default
    dtype (torch rejects them in some losses only because of their dtype)."""
    a = as_array(value, name)
    if a.dtype not in FLOAT_DTYPES and a.dtype.kind not in "biu":
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    return promote_to_float(a)


def _common_dtype(*arrays: np.ndarray) -> np.dtype:
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) == 1:
        return dtypes.pop()
    try:
        dtype = np.result_type(*dtypes)
    except TypeError:  # float16 with bfloat16: no common 16-bit type
        return np.dtype(np.float32)
    return dtype if dtype in FLOAT_DTYPES else np.dtype(np.float64)


def _broadcast(shape_a, shape_b, func: str) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(shape_a, shape_b))
    except ValueError:
        a, b = (1,) * (len(shape_b) - len(shape_a)) + tuple(shape_a), tuple(shape_b)
        a, b = a, (1,) * (len(a) - len(b)) + b
        for dim in range(len(a) - 1, -1, -1):
            if a[dim] != b[dim] and 1 not in (a[dim], b[dim]):
                raise ValueError(
                    f"{func}: The size of tensor a ({a[dim]}) must match the size of tensor b "
                    f"({b[dim]}) at non-singleton dimension {dim} (input shape "
                    f"{tuple(shape_a)}, target shape {tuple(shape_b)} do not broadcast)"
                ) from None
        raise


def _factor(value, name: str, shape: tuple, dtype: np.dtype, func: str) -> np.ndarray:
    """A weight-like operand broadcast to the loss ``shape`` (it may not enlarge it)."""
    w = _float_input(value, name)
    try:
        full = np.broadcast_shapes(w.shape, shape)
    except ValueError:
        full = None
    if full != tuple(shape):
        raise ValueError(
            f"{func}: {name} of shape {w.shape} does not broadcast to the input's shape "
            f"{tuple(shape)}; pass a {name} whose trailing dims match the input's (e.g. shape "
            f"{tuple(shape[-1:])} for one value per class, or {tuple(shape)})"
        )
    return w if w.dtype == dtype else w.astype(dtype)


def _flat(a: np.ndarray, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """The flat kernel view of ``a`` broadcast to ``shape``: no copy when it already is."""
    if a.shape != shape:
        a = np.broadcast_to(a, shape)
    return storage(np.ascontiguousarray(a, dtype=dtype).reshape(-1))


def _elementwise(launch, x, loss_shape, dtype, reduction, denominator, inputs, **fields):
    size = math.prod(loss_shape)
    return _Call(
        launch=launch, size=size, chunks=K.chunk_count(size), loss_shape=tuple(loss_shape),
        grad_shape=tuple(loss_shape), input_shape=x.shape, dtype=dtype,
        loss_dtype=fields.pop("loss_dtype", dtype),
        grad_dtype=x.dtype, reduction=reduction, denominator=denominator, inputs=inputs,
        **fields,
    )


def _with_math(math_text: str):
    """Put the loss's shared formulas where a docstring says ``<math>``, and the numpydoc
    sections every backward and ``_with_grad`` share where it says ``<backward>`` or
    ``<with_grad>``."""

    def apply(func):
        forward = func.__name__.removesuffix("_backward").removesuffix("_with_grad")
        doc = func.__doc__.replace("    <math>\n", math_text.strip("\n") + "\n\n")
        doc = doc.replace("    <backward>\n", _BACKWARD_SECTIONS.replace("NAME", forward))
        doc = doc.replace("    <with_grad>\n", _WITH_GRAD_SECTIONS.replace("NAME", forward))
        func.__doc__ = doc
        return func

    return apply


_BACKWARD_SECTIONS = """\
    Parameters
    ----------
    grad_output : array_like
        The upstream gradient: a scalar for 'mean' and 'sum' (and 'batchmean'), an array of
        the loss's shape for 'none'.
    input, target, ...
        The arguments of :func:`NAME`, with the same meaning.
    out : numpy.ndarray, optional
        Where to write the gradient (the input's shape and dtype); it may be ``input``.

    Returns
    -------
    numpy.ndarray
        d(loss)/d(input) times ``grad_output``, shaped and typed like ``input`` (``out``
        when given).

"""

_WITH_GRAD_SECTIONS = """\
    Parameters
    ----------
    input, target, ...
        The arguments of :func:`NAME`, with the same meaning.
    grad_output : array_like, optional
        The upstream gradient; None means 1 for a scalar loss and ones for 'none'.
    out : numpy.ndarray, optional
        Where to write the gradient (the input's shape and dtype); it may be ``input``.

    Returns
    -------
    loss : numpy.ndarray
        What :func:`NAME` returns.
    grad : numpy.ndarray
        What ``NAME_backward(grad_output, ...)`` returns (``out`` when given).

"""


# ---------------------------------------------------------------------------------------------
# kl_div


def _kl_div_call(input, target, size_average, reduce, reduction, log_target, stacklevel):
    legacy = size_average is not None or reduce is not None
    if legacy:
        mode = resolve_reduction(size_average, reduce, reduction, stacklevel + 1)
    elif reduction == "batchmean":
        mode = "sum"
    else:
        # Only the literal 'mean' warns ('elementwise_mean' gets its own warning instead).
        if isinstance(reduction, str) and reduction == "mean":
            warnings.warn(
                "reduction: 'mean' divides the total loss by both the batch size and the "
                "support size.'batchmean' divides only by the batch size, and aligns with the "
                "KL div math definition.'mean' will be changed to behave the same as "
                "'batchmean' in the next major release.",
                UserWarning,
                stacklevel=stacklevel + 1,
            )
        mode = resolve_reduction(None, None, reduction, stacklevel + 1, extra=("batchmean",))
    x = _float_input(input, "input")
    t = _float_input(target, "target")
    shape = _broadcast(x.shape, t.shape, "kl_div")
    dtype = _common_dtype(x, t)
    xs, ts = _flat(x, shape, dtype), _flat(t, shape, dtype)
    log_target = bool(log_target)

    def launch(loss, g_scale, g_array, partials, grad):
        K.kl_div_flat(
            xs.size, partials.size, xs, ts, log_target, g_scale, g_array, loss, partials, grad
        )

    call = _elementwise(launch, x, shape, dtype, mode, math.prod(shape), (xs, ts))
    # torch divides by the batch size whenever reduction == 'batchmean', even when legacy
    # arguments chose the reduction (then a 'mean' is divided twice).
    if reduction == "batchmean" and x.ndim > 0:
        call.batch = x.shape[0]
    return call


_KL_MATH = r"""
    .. math::

        \ell = y\,(\log y - x) \quad\text{or, with log_target,}\quad
        \ell = e^{y}\,(y - x)

    where ``x = input`` holds log-probabilities and ``y = target`` probabilities (or
    log-probabilities). ``y log y`` is 0 at ``y = 0``. 'batchmean' is
    :math:`\sum \ell / N` with ``N = input.shape[0]``, the KL divergence per sample; 'mean'
    divides by the number of elements (and warns, as torch does). The gradient is
    :math:`-y` (or :math:`-e^{y}`) times the upstream gradient, summed over the axes along
    which ``input`` was broadcast.
"""


@_with_math(_KL_MATH)
def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    r"""Kullback-Leibler divergence KL(target || exp(input)), pointwise, then reduced.

    <math>
    Parameters
    ----------
    input : array_like
        Log-probabilities; any shape, float16, bfloat16, float32 or float64.
    target : array_like
        Probabilities (or log-probabilities with ``log_target``); broadcasts with input.
    size_average, reduce : bool, optional
        Deprecated torch arguments; either one overrides ``reduction`` (with torch's warning).
    reduction : {'mean', 'batchmean', 'sum', 'none'}, default 'mean'
    log_target : bool, default False

    Returns
    -------
    numpy.ndarray
        0-d unless ``reduction='none'`` (the broadcast shape); dtype of input and target
        promoted together.

    Raises
    ------
    ValueError
        Shapes that do not broadcast, an invalid reduction.

    See Also
    --------
    torch.nn.functional.kl_div

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> p = np.array([[0.6, 0.3, 0.1]])           # the true distribution
    >>> q = np.array([[0.5, 0.3, 0.2]])           # the model's
    >>> fl.kl_div(np.log(q), p, reduction="batchmean")
    array(0.04007...)
    """
    return _kl_div_call(input, target, size_average, reduce, reduction, log_target, 2).run(
        True, False, None, None, "kl_div"
    )


@_with_math(_KL_MATH)
def kl_div_backward(grad_output, input, target, size_average=None, reduce=None,
                    reduction="mean", log_target=False, *, out=None):
    r"""Gradient of :func:`kl_div` with respect to ``input``, for upstream ``grad_output``.

    <math>
    Returns an array shaped and typed like ``input``, written into ``out`` when given (which
    may be ``input`` itself).

    <backward>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> p = np.array([[0.6, 0.3, 0.1]])
    >>> fl.kl_div_backward(1.0, np.log(np.full((1, 3), 1 / 3)), p, reduction="batchmean")
    array([[-0.6, -0.3, -0.1]])
    """
    return _kl_div_call(input, target, size_average, reduce, reduction, log_target, 2).run(
        False, True, grad_output, out, "kl_div_backward"
    )


@_with_math(_KL_MATH)
def kl_div_with_grad(input, target, size_average=None, reduce=None, reduction="mean",
                     log_target=False, grad_output=None, out=None):
    r""":func:`kl_div` and its gradient with respect to ``input``, from one pass over memory.

    <math>
    ``grad_output=None`` means 1 ('mean', 'batchmean', 'sum') or ones ('none'). Returns
    ``(loss, grad)``; ``grad`` is written into ``out`` when given (it may be ``input``).

    <with_grad>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> p = np.array([[0.6, 0.3, 0.1]])
    >>> loss, grad = fl.kl_div_with_grad(np.log(p), p, reduction="sum")
    >>> round(float(loss), 12), grad   # KL(p || p) = 0
    (0.0, array([[-0.6, -0.3, -0.1]]))
    """
    return _kl_div_call(input, target, size_average, reduce, reduction, log_target, 2).run(
        True, True, grad_output, out, "kl_div_with_grad"
    )


# ---------------------------------------------------------------------------------------------
# binary_cross_entropy


def _same_size(x: np.ndarray, y: np.ndarray, message: str) -> None:
    if x.shape != y.shape:
        raise ValueError(message)


def _bce_call(input, target, weight, size_average, reduce, reduction, stacklevel):
    reduction = resolve_reduction(size_average, reduce, reduction, stacklevel + 1)
    x = _float_input(input, "input")
    y = _float_input(target, "target")
    _same_size(
        x, y,
        f"Using a target size ({y.shape}) that is different to the input size ({x.shape}) is "
        "deprecated. Please ensure they have the same size.",
    )
    dtype = _common_dtype(x, y)
    xs, ys = _flat(x, x.shape, dtype), _flat(y, x.shape, dtype)
    ws = None
    if weight is not None:
        ws = _flat(_factor(weight, "weight", x.shape, dtype, "binary_cross_entropy"), x.shape,
                   dtype)
    invalid = np.zeros((K.chunk_count(xs.size), 2), dtype=np.int64)

    def raise_invalid():
        bad_inputs, bad_targets = invalid.sum(axis=0)
        if bad_inputs:
            raise ValueError(
                f"all elements of input should be between 0 and 1 ({bad_inputs} are not, or "
                "are NaN); binary_cross_entropy takes probabilities: apply sigmoid first, or "
                "call binary_cross_entropy_with_logits on the logits"
            )
        if bad_targets:
            raise ValueError(
                f"all elements of target should be between 0 and 1 ({bad_targets} are not, or "
                "are NaN)"
            )

    def check():
        K.count_outside_unit(xs.size, invalid.shape[0], xs, ys, invalid)
        raise_invalid()

    def launch(loss, g_scale, g_array, partials, grad):
        K.binary_cross_entropy_flat(
            xs.size, partials.size, xs, ys, ws, g_scale, g_array, loss, partials, invalid, grad
        )
        raise_invalid()

    return _elementwise(launch, x, x.shape, dtype, reduction, x.size, (xs, ys), check=check)


_BCE_MATH = r"""
    .. math::

        \ell = -w\,\bigl(y \max(\log x, -100) + (1 - y) \max(\log(1 - x), -100)\bigr),
        \qquad
        \frac{\partial \ell}{\partial x} = w\,\frac{x - y}{\max(x (1 - x), 10^{-12})}

    with ``x = input`` probabilities in [0, 1] and ``y = target`` in [0, 1]. The clamp at
    -100 keeps ``x = 0`` or ``1`` finite, as in torch. 'mean' divides by the number of
    elements, never by the sum of the weights.
"""


@_with_math(_BCE_MATH)
def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    r"""Binary cross-entropy between probabilities ``input`` and targets in [0, 1].

    <math>
    Parameters
    ----------
    input : array_like
        Probabilities, any shape; float16, bfloat16, float32 or float64.
    target : array_like
        Same shape as input, values in [0, 1] (soft labels allowed).
    weight : array_like, optional
        Rescales each element; broadcasts to the input's shape (e.g. (C,) per class).
    size_average, reduce : bool, optional
        Deprecated torch arguments; either one overrides ``reduction``.
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Returns
    -------
    numpy.ndarray
        0-d unless ``reduction='none'``.

    Raises
    ------
    ValueError
        Different shapes, input or target outside [0, 1] (or NaN), a weight that does not
        broadcast, an invalid reduction.

    See Also
    --------
    torch.nn.functional.binary_cross_entropy, binary_cross_entropy_with_logits

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.binary_cross_entropy(np.array([0.9, 0.2, 0.6]), np.array([1.0, 0.0, 1.0]))
    array(0.27977...)
    """
    return _bce_call(input, target, weight, size_average, reduce, reduction, 2).run(
        True, False, None, None, "binary_cross_entropy"
    )


@_with_math(_BCE_MATH)
def binary_cross_entropy_backward(grad_output, input, target, weight=None, size_average=None,
                                  reduce=None, reduction="mean", *, out=None):
    r"""Gradient of :func:`binary_cross_entropy` with respect to ``input``.

    <math>
    Returns an array shaped and typed like ``input`` (into ``out`` when given; it may be
    ``input`` itself).

    <backward>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.binary_cross_entropy_backward(1.0, np.array([0.5, 0.8]), np.array([1.0, 0.0]),
    ...                                  reduction="sum")
    array([-2.,  5.])
    """
    return _bce_call(input, target, weight, size_average, reduce, reduction, 2).run(
        False, True, grad_output, out, "binary_cross_entropy_backward"
    )


@_with_math(_BCE_MATH)
def binary_cross_entropy_with_grad(input, target, weight=None, size_average=None, reduce=None,
                                   reduction="mean", grad_output=None, out=None):
    r""":func:`binary_cross_entropy` and its gradient, from one pass over memory.

    <math>
    Returns ``(loss, grad)``; ``grad_output=None`` means 1 (or ones for 'none').

    <with_grad>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.binary_cross_entropy_with_grad(np.array([0.5, 0.8]), np.array([1.0, 0.0]),
    ...                                   reduction="sum")
    (array(2.30258509), array([-2.,  5.]))
    """
    return _bce_call(input, target, weight, size_average, reduce, reduction, 2).run(
        True, True, grad_output, out, "binary_cross_entropy_with_grad"
    )


# ---------------------------------------------------------------------------------------------
# binary_cross_entropy_with_logits


def _bce_logits_call(input, target, weight, size_average, reduce, reduction, pos_weight,
                     stacklevel):
    reduction = resolve_reduction(size_average, reduce, reduction, stacklevel + 1)
    x = _float_input(input, "input")
    y = _float_input(target, "target")
    _same_size(
        x, y,
        f"Target size ({y.shape}) must be the same as input size ({x.shape}); pass one target "
        "per logit",
    )
    dtype = _common_dtype(x, y)
    func = "binary_cross_entropy_with_logits"
    xs, ys = _flat(x, x.shape, dtype), _flat(y, x.shape, dtype)
    ws = pws = None
    if weight is not None:
        ws = _flat(_factor(weight, "weight", x.shape, dtype, func), x.shape, dtype)
    if pos_weight is not None:
        pws = _flat(_factor(pos_weight, "pos_weight", x.shape, dtype, func), x.shape, dtype)

    def launch(loss, g_scale, g_array, partials, grad):
        K.binary_cross_entropy_with_logits_flat(
            xs.size, partials.size, xs, ys, ws, pws, g_scale, g_array, loss, partials, grad
        )

    # torch's result takes a floating target's dtype when the two differ (a quirk kept for
    # parity); an integer target (which torch rejects) leaves the input's precision.
    target_is_float = as_array(target, "target").dtype in FLOAT_DTYPES
    return _elementwise(launch, x, x.shape, dtype, reduction, x.size, (xs, ys),
                        loss_dtype=y.dtype if target_is_float else dtype)


_BCE_LOGITS_MATH = r"""
    .. math::

        \ell = w\,\bigl((1 - y)\,x - (1 + (p - 1)\,y) \log\sigma(x)\bigr), \qquad
        \frac{\partial \ell}{\partial x} = w\,\bigl((p y + 1 - y)\,\sigma(x) - p y\bigr)

    with ``x = input`` logits, ``y = target``, ``w = weight`` and ``p = pos_weight`` (both 1
    when absent, each broadcasting to the input's shape). This equals
    :math:`-w (p y \log\sigma(x) + (1 - y) \log(1 - \sigma(x)))`, computed with
    :math:`\log\sigma(x) = \min(x, 0) - \log(1 + e^{-|x|})`, which never overflows. 'mean'
    divides by the number of elements.
"""


@_with_math(_BCE_LOGITS_MATH)
def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None,
                                     reduce=None, reduction="mean", pos_weight=None):
    r"""Binary cross-entropy of ``sigmoid(input)``, stable at any logit.

    <math>
    Parameters
    ----------
    input : array_like
        Logits, any shape; float16, bfloat16, float32 or float64.
    target : array_like
        Same shape as input (not checked to lie in [0, 1], as in torch).
    weight : array_like, optional
        Rescales each element; broadcasts to the input's shape.
    size_average, reduce : bool, optional
        Deprecated torch arguments; either one overrides ``reduction``.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    pos_weight : array_like, optional
        Weight of the positive term, e.g. (C,) per class (n_negative / n_positive).

    Returns
    -------
    numpy.ndarray
        0-d unless ``reduction='none'``; in the target's dtype (torch's rule).

    Raises
    ------
    ValueError
        Different shapes, weights that do not broadcast, an invalid reduction.

    See Also
    --------
    torch.nn.functional.binary_cross_entropy_with_logits

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> logits = np.array([2.2, -1.4, 0.4])
    >>> fl.binary_cross_entropy_with_logits(logits, np.array([1.0, 0.0, 1.0]))
    array(0.27950...)
    """
    call = _bce_logits_call(input, target, weight, size_average, reduce, reduction,
                            pos_weight, 2)
    return call.run(True, False, None, None, "binary_cross_entropy_with_logits")


@_with_math(_BCE_LOGITS_MATH)
def binary_cross_entropy_with_logits_backward(grad_output, input, target, weight=None,
                                              size_average=None, reduce=None, reduction="mean",
                                              pos_weight=None, *, out=None):
    r"""Gradient of :func:`binary_cross_entropy_with_logits` with respect to ``input``.

    <math>
    Returns an array shaped and typed like ``input`` (into ``out`` when given; it may be
    ``input`` itself).

    <backward>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.binary_cross_entropy_with_logits_backward(1.0, np.array([0.0, 0.0]),
    ...                                              np.array([1.0, 0.0]), reduction="sum")
    array([-0.5,  0.5])
    """
    return _bce_logits_call(input, target, weight, size_average, reduce, reduction,
                            pos_weight, 2).run(False, True, grad_output, out,
                                               "binary_cross_entropy_with_logits_backward")


@_with_math(_BCE_LOGITS_MATH)
def binary_cross_entropy_with_logits_with_grad(input, target, weight=None, size_average=None,
                                               reduce=None, reduction="mean", pos_weight=None,
                                               grad_output=None, out=None):
    r""":func:`binary_cross_entropy_with_logits` and its gradient, from one pass over memory.

    <math>
    Returns ``(loss, grad)``; ``grad_output=None`` means 1 (or ones for 'none').

    <with_grad>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.binary_cross_entropy_with_logits_with_grad(np.array([0.0, 0.0]),
    ...                                               np.array([1.0, 0.0]), reduction="sum")
    (array(1.38629436), array([-0.5,  0.5]))
    """
    return _bce_logits_call(input, target, weight, size_average, reduce, reduction,
                            pos_weight, 2).run(True, True, grad_output, out,
                                               "binary_cross_entropy_with_logits_with_grad")


# ---------------------------------------------------------------------------------------------
# mse_loss


def _mse_call(input, target, size_average, reduce, reduction, weight, stacklevel):
    # torch's weighted path has its own check, which knows no 'elementwise_mean'.
    if weight is not None and size_average is None and reduce is None and (
        not isinstance(reduction, str) or reduction not in REDUCTIONS
    ):
        raise ValueError(
            f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'."
        )
    reduction = resolve_reduction(size_average, reduce, reduction, stacklevel + 1)
    x = _float_input(input, "input")
    y = _float_input(target, "target")
    if x.shape != y.shape:
        warnings.warn(
            f"Using a target size ({y.shape}) that is different to the input size ({x.shape}). "
            "This will likely lead to incorrect results due to broadcasting. Please ensure "
            "they have the same size.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    shape = _broadcast(x.shape, y.shape, "mse_loss")
    dtype = _common_dtype(x, y)
    xs, ys = _flat(x, shape, dtype), _flat(y, shape, dtype)
    ws = None
    denominator = math.prod(shape)
    if weight is not None:
        w = _float_input(weight, "weight")
        if w.shape != x.shape:
            raise ValueError(
                f"Weights and input must have the same size. (weight shape {w.shape}, input "
                f"shape {x.shape})"
            )
        # torch's weighted mean is sum(w (x - y)^2) / sum(w).
        denominator = float(np.sum(w, dtype=np.float64))
        ws = _flat(w, shape, dtype)

    def launch(loss, g_scale, g_array, partials, grad):
        K.mse_flat(xs.size, partials.size, xs, ys, ws, g_scale, g_array, loss, partials, grad)

    return _elementwise(launch, x, shape, dtype, reduction, denominator, (xs, ys))


_MSE_MATH = r"""
    .. math::

        \ell = w\,(x - y)^2, \qquad \frac{\partial \ell}{\partial x} = 2 w (x - y),
        \qquad \text{mean} = \frac{\sum \ell}{\sum w}

    with ``w = 1`` when no weight is given (then 'mean' divides by the number of elements).
    Input and target broadcast (with torch's warning when their shapes differ); the
    gradient is summed back to the input's shape.
"""


@_with_math(_MSE_MATH)
def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    r"""Mean squared error, optionally weighted per element.

    <math>
    Parameters
    ----------
    input, target : array_like
        Any broadcastable shapes; float16, bfloat16, float32 or float64.
    size_average, reduce : bool, optional
        Deprecated torch arguments; either one overrides ``reduction``.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    weight : array_like, optional
        One weight per element, exactly the input's shape.

    Returns
    -------
    numpy.ndarray
        0-d unless ``reduction='none'``.

    Raises
    ------
    ValueError
        Shapes that do not broadcast, a weight of another shape, an invalid reduction.

    See Also
    --------
    torch.nn.functional.mse_loss

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.mse_loss(np.array([0.7, 0.2, 0.1]), np.array([1.0, 0.0, 0.0]))
    array(0.04666...)
    """
    return _mse_call(input, target, size_average, reduce, reduction, weight, 2).run(
        True, False, None, None, "mse_loss"
    )


@_with_math(_MSE_MATH)
def mse_loss_backward(grad_output, input, target, size_average=None, reduce=None,
                      reduction="mean", weight=None, *, out=None):
    r"""Gradient of :func:`mse_loss` with respect to ``input``.

    <math>
    Returns an array shaped and typed like ``input`` (into ``out`` when given; it may be
    ``input`` itself).

    <backward>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.mse_loss_backward(1.0, np.array([0.5, 2.0]), np.array([1.0, 1.0]), reduction="sum")
    array([-1.,  2.])
    """
    return _mse_call(input, target, size_average, reduce, reduction, weight, 2).run(
        False, True, grad_output, out, "mse_loss_backward"
    )


@_with_math(_MSE_MATH)
def mse_loss_with_grad(input, target, size_average=None, reduce=None, reduction="mean",
                       weight=None, grad_output=None, out=None):
    r""":func:`mse_loss` and its gradient, from one pass over memory.

    <math>
    Returns ``(loss, grad)``; ``grad_output=None`` means 1 (or ones for 'none').

    <with_grad>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.mse_loss_with_grad(np.array([0.5, 2.0]), np.array([1.0, 1.0]), reduction="sum")
    (array(1.25), array([-1.,  2.]))
    """
    return _mse_call(input, target, size_average, reduce, reduction, weight, 2).run(
        True, True, grad_output, out, "mse_loss_with_grad"
    )


# ---------------------------------------------------------------------------------------------
# multi_margin_loss


def _margin_call(input, target, p, margin, weight, size_average, reduce, reduction,
                 stacklevel):
    reduction = resolve_reduction(size_average, reduce, reduction, stacklevel + 1)
    if p != 1 and p != 2:
        raise ValueError(f"only p == 1 and p == 2 supported (got p={p!r})")
    x = _float_input(input, "input")
    if x.ndim > 2 or (x.ndim >= 1 and x.shape[-1] == 0):
        raise ValueError(
            "Expected non-empty vector or matrix with optional 0-dim batch size, but got: "
            f"{list(x.shape)} (multi_margin_loss takes (N, C) or (C,) with C >= 1)"
        )
    t = as_array(target, "target")
    if t.dtype.kind not in "biu":
        raise TypeError(
            f"multi_margin_loss: target must hold integer class indices, got dtype {t.dtype}; "
            "pass e.g. target.astype(np.int64)"
        )
    rows = x.shape[0] if x.ndim == 2 else 1
    classes = x.shape[-1] if x.ndim >= 1 else 1
    # (N, C) takes (N,) targets; (C,) and 0-d inputs take one target, 0-d or (1,).
    bad_shape = t.shape != (rows,) if x.ndim == 2 else (t.size != 1 or t.ndim > 1)
    if bad_shape:
        raise ValueError(
            "multi_margin_loss: target tensor should be 1-D with size equal to the number of "
            f"input samples (batch size). Expected target size {[rows]}, but got "
            f"{list(t.shape)}. Input has shape {list(x.shape)}."
        )
    t64 = np.ascontiguousarray(t, dtype=np.int64).reshape(rows)
    if t64.size:
        low, high = int(t64.min()), int(t64.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise TargetOutOfRangeError(
                f"multi_margin_loss: target out of range: Target {bad} is out of bounds for "
                f"{classes} classes (multi_margin_loss has no ignore_index; every target "
                f"must be in [0, {classes}))"
            )
    w = None
    if weight is not None:
        w = _float_input(weight, "weight")
        if w.ndim != 1:
            raise ValueError(
                f"weight must be one-dimensional (got shape {w.shape}); pass one weight per "
                "class"
            )
        if w.shape[0] != classes:
            raise ValueError(
                f"inconsistent weight size, expected {classes} but got {list(w.shape)}"
            )
        w = storage(np.ascontiguousarray(w, dtype=x.dtype))
    x2 = np.ascontiguousarray(x).reshape(rows, classes)
    xs = storage(x2)
    squared = p == 2
    margin = float(margin)
    loss_shape = x.shape[:1] if x.ndim == 2 else t.shape

    def launch(loss, g_scale, g_array, partials, grad):
        g2 = None if grad is None else grad.reshape(rows, classes)
        K.multi_margin_rows(
            xs.size, rows, xs, t64, w, squared, margin, g_scale, g_array, partials, g2
        )
        if loss is not None:
            loss[:] = partials.astype(x.dtype).view(loss.dtype)

    return _Call(
        launch=launch, size=rows, chunks=rows, loss_shape=tuple(loss_shape),
        grad_shape=x.shape, input_shape=x.shape, dtype=x.dtype, loss_dtype=x.dtype,
        grad_dtype=x.dtype,
        reduction=reduction, denominator=rows, inputs=(xs, t64),
    )


_MARGIN_MATH = r"""
    .. math::

        \ell_i = \frac{1}{C} \sum_{j \ne y_i} w_{y_i}
                 \max(0,\ \text{margin} - x_{i, y_i} + x_{i, j})^p

    over the rows of ``input`` (N, C) with class-index targets ``y``. With
    :math:`z_j = \text{margin} - x_{y} + x_j`, the gradient of :math:`x_j` (j != y) is
    :math:`w_y\,p\,z_j^{p-1} / C` where :math:`z_j > 0` (0 at the kink and for NaN
    entries, which contribute nothing, as in torch), and that of :math:`x_y` is minus their
    sum. 'mean' divides by N (N = 0 gives NaN for 'mean' and 0 for 'sum').
"""


@_with_math(_MARGIN_MATH)
def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, size_average=None,
                      reduce=None, reduction="mean"):
    r"""Multi-class hinge loss (the SVM loss of Weston and Watkins).

    <math>
    Parameters
    ----------
    input : array_like
        Scores, shape (N, C) or (C,) (or 0-d: loss 0); any float dtype.
    target : array_like of int
        Class indices in [0, C), shape (N,) (or () / (1,) for a (C,) input); any integer
        dtype.
    p : {1, 2}, default 1
    margin : float, default 1.0
    weight : array_like, optional
        Per-class weights, shape (C,), applied by the target's class.
    size_average, reduce : bool, optional
        Deprecated torch arguments; either one overrides ``reduction``.
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Returns
    -------
    numpy.ndarray
        0-d unless ``reduction='none'`` ((N,), or the target's shape for a (C,) input).

    Raises
    ------
    IndexError
        A target outside [0, C) (the exception is also a ValueError).
    ValueError
        ``p`` not 1 or 2, a bad shape or weight, an invalid reduction.

    See Also
    --------
    torch.nn.functional.multi_margin_loss

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> scores = np.array([[0.1, 0.2, 0.4, 0.8]])
    >>> fl.multi_margin_loss(scores, np.array([3]))
    array(0.325)
    """
    return _margin_call(input, target, p, margin, weight, size_average, reduce, reduction,
                        2).run(True, False, None, None, "multi_margin_loss")


@_with_math(_MARGIN_MATH)
def multi_margin_loss_backward(grad_output, input, target, p=1, margin=1.0, weight=None,
                               size_average=None, reduce=None, reduction="mean", *, out=None):
    r"""Gradient of :func:`multi_margin_loss` with respect to ``input``.

    <math>
    Returns an array shaped and typed like ``input`` (into ``out`` when given; it may be
    ``input`` itself).

    <backward>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.multi_margin_loss_backward(1.0, np.array([[0.1, 0.2, 0.4, 0.8]]), np.array([3]))
    array([[ 0.25,  0.25,  0.25, -0.75]])
    """
    return _margin_call(input, target, p, margin, weight, size_average, reduce, reduction,
                        2).run(False, True, grad_output, out, "multi_margin_loss_backward")


@_with_math(_MARGIN_MATH)
def multi_margin_loss_with_grad(input, target, p=1, margin=1.0, weight=None, size_average=None,
                                reduce=None, reduction="mean", grad_output=None, out=None):
    r""":func:`multi_margin_loss` and its gradient, from one pass over memory.

    <math>
    Returns ``(loss, grad)``; ``grad_output=None`` means 1 (or ones for 'none').

    <with_grad>
    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.multi_margin_loss_with_grad(np.array([[0.1, 0.2, 0.4, 0.8]]), np.array([3]), p=2)
    (array(0.1525), array([[ 0.15,  0.2 ,  0.3 , -0.65]]))
    """
    return _margin_call(input, target, p, margin, weight, size_average, reduce, reduction,
                        2).run(True, True, grad_output, out, "multi_margin_loss_with_grad")

