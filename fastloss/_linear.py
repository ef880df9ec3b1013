"""Fused linear + cross-entropy: the loss of ``input @ weight.T + bias`` without the logits.

Rows are processed in chunks whose logits fit a memory budget: one BLAS matmul fills the
chunk's logits, the fused cross-entropy kernel turns them into the loss and, in place, into
the gradient of the logits, and two more matmuls fold that gradient into the gradients of
``input`` and ``weight``. The full (N, V) logits never exist.
"""

from __future__ import annotations

import numpy as np

from ._arrays import as_array, check_out
from ._cross_entropy import _check_extras, cross_entropy, cross_entropy_with_grad
from ._reduction import resolve_reduction, upstream_per_element, upstream_scalar

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]

# The default memory budget for one chunk of logits (and the gradient written over them).
DEFAULT_CHUNK_BYTES = 64 * 2**20


class _Linear:
    """A validated call: 2-D views, dtypes, chunking, and the 'mean' denominator."""

    def __init__(self, input, weight, target, bias, class_weight, ignore_index, reduction,
                 chunk_bytes, func):
        x = as_array(input, "input")
        w = as_array(weight, "weight")
        if w.ndim != 2:
            raise ValueError(
                f"{func}: weight must be 2-D (vocabulary, hidden), got shape {w.shape}"
            )
        vocabulary, hidden = w.shape
        if x.ndim < 1 or x.shape[-1] != hidden:
            raise ValueError(
                f"{func}: input has shape {x.shape}, but weight {w.shape} needs a last dim of "
                f"{hidden} (input @ weight.T must be defined)"
            )
        dtype = np.result_type(x.dtype, w.dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(
                f"{func}: input and weight must be float32 or float64 (BLAS), got {x.dtype} "
                f"and {w.dtype}; cast them, e.g. input.astype(np.float32)"
            )
        self.dtype = np.dtype(dtype)
        self.input_shape = x.shape
        self.x = np.ascontiguousarray(x.reshape(-1, hidden), dtype=dtype)
        self.w = np.ascontiguousarray(w, dtype=dtype)
        rows = self.x.shape[0]
        self.bias = None
        if bias is not None:
            b = as_array(bias, "bias")
            if b.shape != (vocabulary,):
                raise ValueError(
                    f"{func}: bias must have shape ({vocabulary},), one per class, got {b.shape}"
                )
            self.bias = b.astype(dtype, copy=False)
        t = as_array(target, "target")
        self.probabilities = t.shape == x.shape[:-1] + (vocabulary,)
        expected = x.shape[:-1] + ((vocabulary,) if self.probabilities else ())
        if t.shape != expected:
            raise ValueError(
                f"{func}: target has shape {t.shape}; for input {x.shape} it must hold one "
                f"class index per row, shape {x.shape[:-1]} (or probabilities, shape "
                f"{x.shape[:-1] + (vocabulary,)})"
            )
        self.loss_shape = x.shape[:-1]
        self.t = t.reshape((rows, vocabulary) if self.probabilities else (rows,))
        if not self.probabilities:
            _check_targets(self.t, vocabulary, ignore_index, func)
        self.class_weight = class_weight
        if class_weight is not None:
            self.class_weight64 = np.asarray(as_array(class_weight, "class_weight"), np.float64)
            if self.class_weight64.shape != (vocabulary,):
                raise ValueError(
                    f"{func}: class_weight must have shape ({vocabulary},), one weight per "
                    f"class, got {self.class_weight64.shape}"
                )
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.rows, self.vocabulary, self.hidden = rows, vocabulary, hidden
        budget = int(chunk_bytes)
        if budget <= 0:
            raise ValueError(f"{func}: chunk_bytes must be positive, got {chunk_bytes!r}")
        self.chunk_rows = max(1, min(rows, budget // max(1, vocabulary * self.dtype.itemsize)))

    def denominator(self) -> float:
        """What 'mean' divides by, over all rows (each chunk is reduced with 'sum')."""
        if self.probabilities:
            return float(self.rows)
        valid = self.t != self.ignore_index
        if self.class_weight is None:
            return float(np.count_nonzero(valid))
        return float(np.sum(self.class_weight64[np.where(valid, self.t, 0)][valid]))

    def chunks(self):
        for start in range(0, self.rows, self.chunk_rows):
            yield start, min(start + self.chunk_rows, self.rows)

    def logits(self, buffer, start, stop):
        logits = buffer[: stop - start]
        np.matmul(self.x[start:stop], self.w.T, out=logits)
        if self.bias is not None:
            logits += self.bias
        return logits

    def options(self, extras_kwargs):
        return dict(weight=self.class_weight, ignore_index=self.ignore_index, **extras_kwargs)


def _check_targets(t: np.ndarray, classes: int, ignore_index: int, func: str) -> None:
    """Every class index in [0, V) or ignore_index, checked before the first chunk runs."""
    if t.dtype.kind not in "iub":
        raise ValueError(
            f"{func}: target must hold integer class indices, got dtype {t.dtype} (or class "
            "probabilities of shape (N, V))"
        )
    bad = (t != ignore_index) & ((t < 0) | (t >= classes))
    if bad.any():
        raise IndexError(
            f"{func}: Target {int(t[bad].flat[0])} is out of bounds for {classes} classes "
            f"(valid targets are 0..{classes - 1}, or ignore_index={ignore_index})"
        )


def _extras_kwargs(label_smoothing, lse_square_scale, softcap, return_lse, return_accuracy):
    _check_extras(lse_square_scale, softcap, return_lse, return_accuracy)
    return dict(
        label_smoothing=label_smoothing, lse_square_scale=lse_square_scale, softcap=softcap,
        return_lse=return_lse, return_accuracy=return_accuracy,
    )


def _chunk_upstream(call, grad_output, start, stop, func):
    """The chunk's reduction and grad_output: 'none' slices the per-row upstream; 'mean'
    and 'sum' run each chunk as a 'sum' scaled by g (/ the global denominator)."""
    if call.reduction == "none":
        if grad_output is None:
            return "none", None
        g = upstream_per_element(grad_output, call.loss_shape, func)
        return "none", g.reshape(-1)[start:stop]
    g = upstream_scalar(grad_output, call.reduction, func)
    if call.reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            g = float(np.float64(g) / np.float64(call.denominator()))
    return "sum", np.asarray(g, dtype=call.dtype)


def _collect(call, pieces, want_extras):
    """Chunk results -> the loss (and the per-row extras), as cross_entropy returns them."""
    losses = [p[0] for p in pieces]
    if call.reduction == "none":
        loss = (np.concatenate(losses) if losses else np.empty(0, call.dtype)).reshape(
            call.loss_shape
        )
    else:
        total = np.sum(np.asarray(losses, dtype=np.float64))
        if call.reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):
                total = total / np.float64(call.denominator())
        loss = np.asarray(total, dtype=call.dtype)
    extras = []
    for k in range(want_extras):
        parts = [p[1 + k] for p in pieces]
        joined = np.concatenate(parts) if parts else np.empty(0, call.dtype)
        extras.append(joined.reshape(call.loss_shape))
    return loss, extras


def linear_cross_entropy(input, weight, target, bias=None, class_weight=None, ignore_index=-100,
                         reduction="mean", label_smoothing=0.0, *, lse_square_scale=0.0,
                         softcap=None, return_lse=False, return_accuracy=False,
                         chunk_bytes=DEFAULT_CHUNK_BYTES):
    r"""Cross-entropy of the logits ``input @ weight.T + bias``, never materialized.

    .. math::

        z_i = W x_i + b, \qquad \ell_i = \operatorname{cross\_entropy}(z_i, t_i)

    computed in chunks of rows whose (rows, V) logits take at most ``chunk_bytes``: one
    matmul per chunk, then the fused cross-entropy kernel. Every :func:`cross_entropy`
    option applies to the logits (the class weights are ``class_weight``, since ``weight``
    is the linear layer's).

    Parameters
    ----------
    input : array_like
        Hidden states, shape (N, H) (or (..., H): leading dims are rows); float32/float64.
    weight : array_like
        The classifier, shape (V, H).
    target : array_like
        Class indices, shape (N,) (or (...)); or probabilities, shape (N, V).
    bias : array_like, optional
        Shape (V,).
    class_weight, ignore_index, reduction, label_smoothing
        :func:`cross_entropy`'s ``weight``, ``ignore_index``, ``reduction`` and
        ``label_smoothing``.
    lse_square_scale, softcap, return_lse, return_accuracy
        :func:`cross_entropy`'s extras.
    chunk_bytes : int, default 64 MiB
        Memory budget for one chunk of logits.

    Returns
    -------
    numpy.ndarray
        The loss as :func:`cross_entropy` returns it, followed by the per-row lse and
        correctness when asked for.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> rng = np.random.default_rng(0)
    >>> x, W = rng.standard_normal((6, 4)), rng.standard_normal((10, 4))
    >>> t = np.array([1, 2, 3, 4, 5, 6])
    >>> bool(np.isclose(fl.linear_cross_entropy(x, W, t, chunk_bytes=160),
    ...                 fl.cross_entropy(x @ W.T, t)))
    True
    """
    reduction = resolve_reduction(None, None, reduction, stacklevel=2)
    extras = _extras_kwargs(label_smoothing, lse_square_scale, softcap, return_lse,
                            return_accuracy)
    call = _Linear(input, weight, target, bias, class_weight, ignore_index, reduction,
                   chunk_bytes, "linear_cross_entropy")
    want_extras = int(bool(return_lse)) + int(bool(return_accuracy))
    buffer = np.empty((call.chunk_rows, call.vocabulary), call.dtype)
    pieces = []
    for start, stop in call.chunks():
        logits = call.logits(buffer, start, stop)
        result = cross_entropy(logits, call.t[start:stop],
                               reduction="none" if reduction == "none" else "sum",
                               **call.options(extras))
        pieces.append(result if want_extras else (result,))
    loss, extra = _collect(call, pieces, want_extras)
    return (loss, *extra) if want_extras else loss


def linear_cross_entropy_with_grad(input, weight, target, bias=None, class_weight=None,
                                   ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                   grad_output=None, *, lse_square_scale=0.0, softcap=None,
                                   return_lse=False, return_accuracy=False,
                                   chunk_bytes=DEFAULT_CHUNK_BYTES, out=None):
    r""":func:`linear_cross_entropy` and its gradients for ``input``, ``weight`` and ``bias``.

    Per chunk of rows: the logits :math:`Z = X W^T + b`, then the fused kernel turns them in
    place into :math:`G = \partial L / \partial Z`, and

    .. math::

        \frac{\partial L}{\partial X} = G W, \qquad
        \frac{\partial L}{\partial W} \mathrel{+}= G^T X, \qquad
        \frac{\partial L}{\partial b} \mathrel{+}= \textstyle\sum_i G_i

    so the extra memory is one chunk of logits (``chunk_bytes``) plus a bounded slice of
    :math:`G^T X`, never the (N, V) logits.

    Parameters
    ----------
    input, weight, target, bias, class_weight, ignore_index, reduction, label_smoothing
        As for :func:`linear_cross_entropy`.
    grad_output : array_like, optional
        Upstream gradient of the loss; None means 1 (or ones for 'none').
    lse_square_scale, softcap, return_lse, return_accuracy, chunk_bytes
        As for :func:`linear_cross_entropy`.
    out : tuple of numpy.ndarray, optional
        ``(grad_input, grad_weight)`` arrays to write into.

    Returns
    -------
    loss : numpy.ndarray
    grad_input : numpy.ndarray
        Shaped like ``input``.
    grad_weight : numpy.ndarray
        Shaped like ``weight``.
    grad_bias : numpy.ndarray or None
        Shaped like ``bias``; None without a bias.
    lse, correct : numpy.ndarray
        Only when ``return_lse`` / ``return_accuracy`` are set.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> rng = np.random.default_rng(0)
    >>> x, W, b = rng.standard_normal((6, 4)), rng.standard_normal((10, 4)), np.zeros(10)
    >>> t = np.array([1, 2, 3, 4, 5, 6])
    >>> loss, gx, gW, gb = fl.linear_cross_entropy_with_grad(x, W, t, bias=b, chunk_bytes=160)
    >>> _, g_logits = fl.cross_entropy_with_grad(x @ W.T, t)
    >>> bool(np.allclose(gx, g_logits @ W) and np.allclose(gW, g_logits.T @ x))
    True
    """
    reduction = resolve_reduction(None, None, reduction, stacklevel=2)
    extras = _extras_kwargs(label_smoothing, lse_square_scale, softcap, return_lse,
                            return_accuracy)
    func = "linear_cross_entropy_with_grad"
    call = _Linear(input, weight, target, bias, class_weight, ignore_index, reduction,
                   chunk_bytes, func)
    want_extras = int(bool(return_lse)) + int(bool(return_accuracy))
    if out is None:
        grad_x = np.empty((call.rows, call.hidden), call.dtype)
        grad_w = np.zeros((call.vocabulary, call.hidden), call.dtype)
    else:
        gx_out, gw_out = out
        check_out(gx_out, call.input_shape, call.dtype, "out[0]")
        check_out(gw_out, (call.vocabulary, call.hidden), call.dtype, "out[1]")
        grad_x = gx_out.reshape(call.rows, call.hidden)
        grad_w = gw_out
        grad_w[...] = 0
    grad_b = np.zeros(call.vocabulary, np.float64) if call.bias is not None else None
    buffer = np.empty((call.chunk_rows, call.vocabulary), call.dtype)
    # G^T X is added to grad_w in slices of classes, so its temporary stays within the budget.
    block_bytes = 4 * call.hidden * call.dtype.itemsize
    class_block = max(1, min(call.vocabulary, int(chunk_bytes) // block_bytes))
    pieces = []
    for start, stop in call.chunks():
        logits = call.logits(buffer, start, stop)
        chunk_reduction, g = _chunk_upstream(call, grad_output, start, stop, func)
        result = cross_entropy_with_grad(
            logits, call.t[start:stop], reduction=chunk_reduction, grad_output=g, out=logits,
            **call.options(extras),
        )
        pieces.append((result[0], *result[2:]))
        g_logits, xc = logits, call.x[start:stop]
        np.matmul(g_logits, call.w, out=grad_x[start:stop])
        for v0 in range(0, call.vocabulary, class_block):
            v1 = min(v0 + class_block, call.vocabulary)
            grad_w[v0:v1] += g_logits[:, v0:v1].T @ xc
        if grad_b is not None:
            grad_b += g_logits.sum(axis=0, dtype=np.float64)
    loss, extra = _collect(call, pieces, want_extras)
    if out is None:
        grad_x = grad_x.reshape(call.input_shape)
    else:
        grad_x = out[0]
    grad_bias = None if grad_b is None else grad_b.astype(call.dtype)
    return (loss, grad_x, grad_w, grad_bias, *extra)
