"""Public softmax family: logsumexp, softmax, log_softmax, sigmoid, logsigmoid and backwards."""

from __future__ import annotations

import warnings

import numpy as np

from . import _kernels_softmax as K
from ._arrays import (
    FLOAT_DTYPES,
    UnsupportedDtypeError,
    as_array,
    canonical,
    check_out,
    deliver,
    normalize_dim,
    normalize_dims,
    promote_to_float,
    require_float,
    rows_or_strided,
    storage,
    tile_for,
    writable_target,
)

__all__ = [
    "logsumexp",
    "logsumexp_backward",
    "softmax",
    "softmax_backward",
    "log_softmax",
    "log_softmax_backward",
    "sigmoid",
    "sigmoid_backward",
    "logsigmoid",
    "logsigmoid_backward",
]


# ---------------------------------------------------------------------------------------------
# Kernel dispatch on canonical views


def _run_lse(x3: np.ndarray, out2: np.ndarray) -> None:
    """out2[o, i] = logsumexp(x3[o, :, i]); out2 may be float64 for an intermediate."""
    outer, channels, inner = x3.shape
    if out2.size == 0:
        return
    xs, os_ = storage(x3), storage(out2)
    if inner == 1:
        _run_lse_rows(xs.reshape(outer, channels), os_.reshape(outer))
    else:
        tile = tile_for(channels, x3.dtype, inner)
        items = outer * (-(-inner // tile))
        K.lse_strided(x3.size, items, xs, os_, tile)


def _run_lse_rows(rows: np.ndarray, flat_out: np.ndarray) -> None:
    outer, channels = rows.shape
    # The choice depends on the shape only, never on the thread count, so results are
    # bitwise the same with any number of threads.
    if outer < K.SPLIT_MAX_ROWS and channels >= 2 * K.SPLIT_CHUNK:
        K.lse_rows_split.run_parallel(rows, flat_out, K.SPLIT_CHUNK)
    else:
        K.lse_rows(rows.size, outer, rows, flat_out)


def _plain_rows(input, dim) -> bool:
    """The commonest call: a non-empty C-contiguous (N, C) float32/float64 array over its
    last dim. It needs none of the general path's checks and views (it passes them all, and
    the general path would run the same kernel on the same arrays), so small calls skip
    them."""
    return (type(input) is np.ndarray and input.ndim == 2 and type(dim) is int
            and (dim == 1 or dim == -1) and input.dtype.char in "fd"
            and input.flags.c_contiguous and input.size > 0)


def _run_softmax(x3: np.ndarray, y3: np.ndarray, log: bool) -> None:
    outer, channels, inner = x3.shape
    if x3.size == 0:
        return
    xs, ys = storage(rows_or_strided(x3)), storage(rows_or_strided(y3))
    if inner == 1:
        K.softmax_rows(xs.size, outer, xs, ys, log)
    else:
        tile = tile_for(channels, x3.dtype, inner)
        K.softmax_strided(xs.size, outer * (-(-inner // tile)), xs, ys, tile, log)


def _run_softmax_backward(g3, x3, y3, log: bool) -> None:
    outer, channels, inner = x3.shape
    if x3.size == 0:
        return
    gs, xs, ys = (storage(rows_or_strided(a)) for a in (g3, x3, y3))
    if inner == 1:
        K.softmax_backward_rows(xs.size, outer, gs, xs, ys, log)
    else:
        tile = tile_for(channels, x3.dtype, inner)
        K.softmax_backward_strided(xs.size, outer * (-(-inner // tile)), gs, xs, ys, tile, log)


def _run_lse_backward(g2, x3, y3) -> None:
    outer, channels, inner = x3.shape
    if x3.size == 0:
        return
    xs, ys, gs = storage(rows_or_strided(x3)), storage(rows_or_strided(y3)), storage(g2)
    if inner == 1:
        K.lse_backward_rows(xs.size, outer, gs.reshape(outer), xs, ys)
    else:
        tile = tile_for(channels, x3.dtype, inner)
        K.lse_backward_strided(xs.size, outer * (-(-inner // tile)), gs, xs, ys, tile)


# ---------------------------------------------------------------------------------------------
# logsumexp


def _adjacent_runs(dims: tuple[int, ...]) -> list[tuple[int, int]]:
    """Sorted dims -> [start, stop) runs of adjacent axes, e.g. (0, 2, 3) -> [(0,1), (2,4)]."""
    runs: list[list[int]] = []
    for d in dims:
        if runs and runs[-1][1] == d:
            runs[-1][1] = d + 1
        else:
            runs.append([d, d + 1])
    return [(a, b) for a, b in runs]


def _lse_reduce(x: np.ndarray, dims: tuple[int, ...], result_dtype) -> np.ndarray:
    """logsumexp of x over dims, shaped like x without them.

    Non-adjacent dims are reduced one run of adjacent axes at a time, last run first:
    lse over (a, b) = lse_a(lse_b(x)) exactly, intermediates kept in float64.
    """
    if x.ndim == 0:
        return x.astype(result_dtype)
    runs = _adjacent_runs(dims)
    current = x
    for index, (start, stop) in enumerate(reversed(runs)):
        last = index == len(runs) - 1
        x3 = canonical(current, start, stop)
        out2 = np.empty((x3.shape[0], x3.shape[2]), result_dtype if last else np.float64)
        _run_lse(x3, out2)
        current = out2.reshape(current.shape[:start] + current.shape[stop:])
    return current


def logsumexp(input, dim, keepdim=False):
    r"""Log of the sum of exponentials over ``dim``, computed stably in one pass.

    .. math::

        \operatorname{logsumexp}(x)_i = m_i + \log \sum_j e^{x_{ij} - m_i},
        \qquad m_i = \max_j x_{ij}

    The row is read from memory once: a running maximum and a rescaled float64 sum are
    updated block by block (the online recurrence), so float32 results are at least as
    accurate as torch's.

    Parameters
    ----------
    input : array_like
        Any shape. Integer and bool inputs are promoted to float32 (as torch); float16 and
        bfloat16 are computed in float32 registers and returned in their own dtype.
    dim : int or tuple of ints
        The dim or dims to reduce (negative dims count from the end).
    keepdim : bool, default False
        Keep the reduced dims with size 1.

    Returns
    -------
    numpy.ndarray
        ``input``'s shape without ``dim`` (or with size-1 dims when ``keepdim``), in the
        input's floating dtype.

    Notes
    -----
    Special values follow torch: a row that is all ``-inf`` (or empty) gives ``-inf``, any
    ``+inf`` gives ``+inf``, any NaN gives NaN. A 0-d input is returned as is.

    See Also
    --------
    torch.logsumexp, scipy.special.logsumexp : the torch and SciPy equivalents.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.logsumexp(np.array([[0.0, 0.0], [1.0, -np.inf]]), dim=1)
    array([0.69314718, 1.        ])
    """
    if not keepdim and _plain_rows(input, dim):
        out = np.empty(input.shape[0], input.dtype)
        _run_lse_rows(input, out)
        return out
    x = promote_to_float(as_array(input, "input"))
    dims = normalize_dims(dim, x.ndim)
    result = _lse_reduce(x, dims, x.dtype)
    if keepdim and x.ndim:
        result = result.reshape(tuple(1 if d in dims else n for d, n in enumerate(x.shape)))
    return result


def logsumexp_backward(grad_output, input, dim, keepdim=False, *, out=None):
    r"""Gradient of :func:`logsumexp` with respect to ``input``.

    .. math::

        \frac{\partial L}{\partial x_{ij}} = g_i \, e^{x_{ij} - \operatorname{logsumexp}(x)_i}

    Parameters
    ----------
    grad_output : array_like
        Upstream gradient, shaped like ``logsumexp(input, dim, keepdim)``.
    input, dim, keepdim
        As for :func:`logsumexp`.
    out : numpy.ndarray, optional
        Array shaped and typed like ``input`` to write the gradient into (may be ``input``).

    Returns
    -------
    numpy.ndarray
        The gradient, shaped and typed like ``input``.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.logsumexp_backward(np.array([2.0]), np.array([[0.0, 0.0]]), dim=1)
    array([[1., 1.]])
    """
    x = promote_to_float(as_array(input, "input"))
    dims = normalize_dims(dim, x.ndim)
    reduced_shape = tuple(n for d, n in enumerate(x.shape) if d not in dims)
    kept_shape = tuple(1 if d in dims else n for d, n in enumerate(x.shape))
    g = _grad_like(grad_output, kept_shape if keepdim else reduced_shape, x.dtype, "logsumexp")
    if out is not None:
        check_out(out, x.shape, x.dtype)
    runs = _adjacent_runs(dims) if x.ndim else [(0, 0)]
    if len(runs) == 1 and x.ndim:
        start, stop = runs[0]
        x3 = canonical(x, start, stop)
        g2 = np.ascontiguousarray(g).reshape(x3.shape[0], x3.shape[2])
        target = writable_target(out, x.shape, x.dtype, x3, g2)
        _run_lse_backward(g2, x3, target.reshape(x3.shape))
        return deliver(target, out)
    # 0-d input or several runs of non-adjacent dims: dx = g * exp(x - lse), broadcast.
    lse = _lse_reduce(x, dims, np.float64).reshape(kept_shape)
    with np.errstate(invalid="ignore", over="ignore"):
        grad = g.astype(np.float64).reshape(kept_shape) * np.exp(x.astype(np.float64) - lse)
    return deliver(grad.astype(x.dtype), out)


def _grad_like(grad_output, shape, dtype, func: str) -> np.ndarray:
    g = as_array(grad_output, "grad_output")
    if g.shape != tuple(shape):
        raise ValueError(
            f"{func}_backward: grad_output has shape {g.shape}, but the forward result has "
            f"shape {tuple(shape)}; pass the gradient of that result"
        )
    if g.dtype != dtype:
        g = g.astype(dtype)
    return g


# ---------------------------------------------------------------------------------------------
# softmax / log_softmax


def _implicit_dim(ndim: int, name: str, stacklevel: int) -> int:
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. "
        "Change the call to include dim=X as an argument.",
        UserWarning,
        stacklevel=stacklevel,
    )
    return 0 if ndim in (0, 1, 3) else 1


def _prepare(input, dim, dtype, name: str, stacklevel: int):
    """-> (x cast to dtype, normalized dim, the input's own dtype).

    ``stacklevel`` is torch's ``_stacklevel`` plus one for every fastloss frame between the
    public function and this one (torch's 3 names the caller of F.softmax).
    """
    x = as_array(input, "input")
    if dim is None:
        dim = _implicit_dim(x.ndim, name, stacklevel)
    elif isinstance(dim, (tuple, list)):
        raise TypeError(
            f"{name}(): argument 'dim' (position 1) must be int, not {type(dim).__name__}; "
            "softmax normalizes over one dim (use logsumexp for several)"
        )
    d = normalize_dim(dim, x.ndim)
    source_dtype = x.dtype
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise UnsupportedDtypeError(
                f"{name}: dtype={dtype} is not a floating dtype; pass dtype=np.float32 or "
                "np.float64"
            )
        x = x.astype(dtype, copy=False)
    require_float(x, name)
    return x, d, source_dtype


def _softmax_forward(x: np.ndarray, d: int, log: bool) -> np.ndarray:
    out = np.empty(x.shape, x.dtype)
    x3 = canonical(x.reshape(1) if x.ndim == 0 else x, d)
    _run_softmax(x3, out.reshape(x3.shape), log)
    return out


def _softmax_backward(grad_output, input, dim, dtype, out, log: bool, name: str, stacklevel):
    x, d, source_dtype = _prepare(input, dim, dtype, name, stacklevel + 1)
    g = _grad_like(grad_output, x.shape, x.dtype, name)
    grad_dtype = source_dtype if source_dtype in FLOAT_DTYPES else x.dtype
    if out is not None:
        check_out(out, x.shape, grad_dtype)
    x3 = canonical(x.reshape(1) if x.ndim == 0 else x, d)
    g3 = np.ascontiguousarray(g).reshape(x3.shape)
    direct = out if grad_dtype == x.dtype else None
    target = writable_target(direct, x.shape, x.dtype, x3, g3)
    _run_softmax_backward(g3, x3, target.reshape(x3.shape), log)
    if grad_dtype != x.dtype:
        target = target.astype(grad_dtype)
    return deliver(target, out)


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    r"""Softmax over ``dim``: exponentials normalized to sum to 1.

    .. math::

        \operatorname{softmax}(x)_{ij} = \frac{e^{x_{ij} - m_i}}{\sum_k e^{x_{ik} - m_i}},
        \qquad m_i = \max_k x_{ik}

    Parameters
    ----------
    input : array_like
        Any shape; float16, bfloat16, float32 or float64 (others need ``dtype=``).
    dim : int, optional
        The dim to normalize over. ``None`` applies torch's deprecated implicit rule
        (dim 0 for 0-, 1- and 3-d input, else dim 1) and warns.
    _stacklevel : int, default 3
        Stack level of that warning (torch's argument, kept for positional compatibility).
    dtype : numpy dtype, optional
        Cast the input to this dtype first; the result has this dtype.

    Returns
    -------
    numpy.ndarray
        Shaped like ``input``, a fresh C-contiguous array.

    Notes
    -----
    As torch: a slice holding ``+inf``, NaN, or only ``-inf`` gives all NaN; a ``-inf``
    among finite values gives 0. Any dim is computed on the array's own memory layout,
    vectorized along the contiguous axis, with no transposed copy.

    See Also
    --------
    torch.nn.functional.softmax, scipy.special.softmax

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.softmax(np.array([1.0, 2.0, 3.0]), dim=0)
    array([0.09003057, 0.24472847, 0.66524096])
    """
    if dtype is None and _plain_rows(input, dim):
        out = np.empty_like(input)
        K.softmax_rows(input.size, input.shape[0], input, out, False)
        return out
    x, d, _ = _prepare(input, dim, dtype, "softmax", _stacklevel + 1)
    return _softmax_forward(x, d, log=False)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    r"""Log of the softmax over ``dim``, computed without forming the softmax.

    .. math::

        \operatorname{log\_softmax}(x)_{ij} = (x_{ij} - m_i) - \log \sum_k e^{x_{ik} - m_i}

    Parameters
    ----------
    input, dim, _stacklevel, dtype
        As for :func:`softmax`.

    Returns
    -------
    numpy.ndarray
        Shaped like ``input``.

    Notes
    -----
    A ``-inf`` among finite values gives ``-inf``; slices with ``+inf``, NaN or only
    ``-inf`` give NaN, as torch.

    See Also
    --------
    torch.nn.functional.log_softmax, scipy.special.log_softmax

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.log_softmax(np.array([[1.0, 2.0, 3.0]]), dim=1)
    array([[-2.40760596, -1.40760596, -0.40760596]])
    """
    if dtype is None and _plain_rows(input, dim):
        out = np.empty_like(input)
        K.softmax_rows(input.size, input.shape[0], input, out, True)
        return out
    x, d, _ = _prepare(input, dim, dtype, "log_softmax", _stacklevel + 1)
    return _softmax_forward(x, d, log=True)


def softmax_backward(grad_output, input, dim=None, _stacklevel=3, dtype=None, *, out=None):
    r"""Gradient of :func:`softmax` with respect to ``input``.

    .. math::

        \frac{\partial L}{\partial x_{ij}} = p_{ij}\Big(g_{ij} - \sum_k g_{ik} p_{ik}\Big),
        \qquad p = \operatorname{softmax}(x)

    Parameters
    ----------
    grad_output : array_like
        Upstream gradient, shaped like ``input``.
    input, dim, _stacklevel, dtype
        The forward's arguments (the softmax is recomputed from ``input``).
    out : numpy.ndarray, optional
        Array shaped and typed like ``input`` to write into (may be ``input`` itself).

    Returns
    -------
    numpy.ndarray
        Shaped and typed like ``input``.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.softmax_backward(np.array([1.0, 0.0]), np.array([0.0, 0.0]), dim=0)
    array([ 0.25, -0.25])
    """
    return _softmax_backward(
        grad_output, input, dim, dtype, out, False, "softmax", _stacklevel + 1
    )


def log_softmax_backward(grad_output, input, dim=None, _stacklevel=3, dtype=None, *, out=None):
    r"""Gradient of :func:`log_softmax` with respect to ``input``.

    .. math::

        \frac{\partial L}{\partial x_{ij}} = g_{ij} - p_{ij} \sum_k g_{ik},
        \qquad p = \operatorname{softmax}(x)

    Parameters
    ----------
    grad_output, input, dim, _stacklevel, dtype, out
        As for :func:`softmax_backward`.

    Returns
    -------
    numpy.ndarray
        Shaped and typed like ``input``.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.log_softmax_backward(np.array([1.0, 0.0]), np.array([0.0, 0.0]), dim=0)
    array([ 0.5, -0.5])
    """
    return _softmax_backward(
        grad_output, input, dim, dtype, out, True, "log_softmax", _stacklevel + 1
    )


# ---------------------------------------------------------------------------------------------
# sigmoid / logsigmoid


def _elementwise(kernel, x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, x.dtype)
    if x.size:
        xs = storage(np.ascontiguousarray(x)).reshape(-1)
        kernel(xs.size, xs.size, xs, storage(out).reshape(-1))
    return out


def _elementwise_backward(kernel, grad_output, x: np.ndarray, out, func: str) -> np.ndarray:
    g = _grad_like(grad_output, x.shape, x.dtype, func)
    if out is not None:
        check_out(out, x.shape, x.dtype)
    xc, gc = np.ascontiguousarray(x), np.ascontiguousarray(g)
    target = writable_target(out, x.shape, x.dtype, xc, gc)
    if x.size:
        flat = storage(target).reshape(-1)
        kernel(x.size, x.size, storage(gc).reshape(-1), storage(xc).reshape(-1), flat)
    return deliver(target, out)


def sigmoid(input):
    r"""Logistic sigmoid, elementwise.

    .. math::

        \sigma(x) = \frac{1}{1 + e^{-x}}

    Computed from :math:`e^{-|x|}`, which never overflows.

    Parameters
    ----------
    input : array_like
        Any shape. Integer and bool inputs are promoted to float32, as torch.

    Returns
    -------
    numpy.ndarray
        Shaped and typed like ``input`` (float32 for integer input).

    See Also
    --------
    torch.sigmoid, scipy.special.expit

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.sigmoid(np.array([-np.inf, 0.0, 2.0]))
    array([0.       , 0.5      , 0.88079708])
    """
    return _elementwise(K.sigmoid_flat, promote_to_float(as_array(input, "input")))


def sigmoid_backward(grad_output, input, *, out=None):
    r"""Gradient of :func:`sigmoid`: :math:`g\,\sigma(x)(1 - \sigma(x))`.

    Parameters
    ----------
    grad_output : array_like
        Upstream gradient, shaped like ``input``.
    input : array_like
        The forward's input.
    out : numpy.ndarray, optional
        Array to write the gradient into (may be ``input``).

    Returns
    -------
    numpy.ndarray
        Shaped and typed like ``input``.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.sigmoid_backward(np.ones(2), np.array([0.0, 100.0]))
    array([0.25, 0.  ])
    """
    x = promote_to_float(as_array(input, "input"))
    return _elementwise_backward(K.sigmoid_backward_flat, grad_output, x, out, "sigmoid")


def logsigmoid(input):
    r"""Log of the logistic sigmoid, elementwise and stable at both ends.

    .. math::

        \log \sigma(x) = \min(x, 0) - \log\!\left(1 + e^{-|x|}\right)

    Parameters
    ----------
    input : array_like
        Any shape, floating dtype.

    Returns
    -------
    numpy.ndarray
        Shaped and typed like ``input``.

    See Also
    --------
    torch.nn.functional.logsigmoid, scipy.special.log_expit

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.logsigmoid(np.array([-100.0, 0.0, np.inf]))
    array([-100.        ,   -0.69314718,    0.        ])
    """
    x = as_array(input, "input")
    require_float(x, "logsigmoid")
    return _elementwise(K.logsigmoid_flat, x)


def logsigmoid_backward(grad_output, input, *, out=None):
    r"""Gradient of :func:`logsigmoid`: :math:`g\,\sigma(-x)`.

    Parameters
    ----------
    grad_output, input, out
        As for :func:`sigmoid_backward`.

    Returns
    -------
    numpy.ndarray
        Shaped and typed like ``input``.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.logsigmoid_backward(np.ones(2), np.array([0.0, -np.inf]))
    array([0.5, 1. ])
    """
    x = as_array(input, "input")
    require_float(x, "logsigmoid")
    return _elementwise_backward(K.logsigmoid_backward_flat, grad_output, x, out, "logsigmoid")
