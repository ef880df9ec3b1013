"""The mergeable logsumexp state: its public constructor, merge rule and finisher.

A row split into pieces (vocabulary shards, chunks of a dask array, a stream) has the
logsumexp of the whole row once the pieces' states are merged; the merge is associative and
commutative, so pieces may be combined in any tree, in any order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _kernels_state as K
from ._arrays import (
    as_array,
    canonical,
    normalize_dims,
    promote_to_float,
    storage,
    tile_for,
)

__all__ = [
    "LogSumExpState",
    "logsumexp_state",
    "merge_logsumexp_states",
    "logsumexp_from_state",
]


class LogSumExpState(NamedTuple):
    r"""The online-logsumexp state of a slice: ``(max, sum)``, both float64 arrays.

    ``max`` is the slice's maximum :math:`m` (exact: every float16, bfloat16 and float32 value
    is a float64) and ``sum`` is :math:`s = \sum_j e^{x_j - m}`, so that
    :math:`\operatorname{logsumexp}(x) = m + \log s`. Special slices have a canonical state:
    ``(-inf, 0)`` when the slice holds only ``-inf`` (or nothing), ``(+inf, 1)`` when it holds
    a ``+inf`` and no NaN, and ``(nan, nan)`` when it holds a NaN.

    Built by :func:`logsumexp_state`, combined by :func:`merge_logsumexp_states`, finished by
    :func:`logsumexp_from_state`; being a tuple, it also unpacks as ``m, s = state``.

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> m, s = fl.logsumexp_state(np.array([[0.0, 0.0, -np.inf], [np.inf, 1.0, 2.0]]), dim=1)
    >>> m, s
    (array([ 0., inf]), array([2., 1.]))
    """

    max: np.ndarray
    sum: np.ndarray


def _adjacent(dims: tuple[int, ...]) -> bool:
    return dims[-1] - dims[0] == len(dims) - 1


def logsumexp_state(input, dim, keepdim=False):
    r"""The mergeable state of the logsumexp of ``input`` over ``dim``.

    For each slice :math:`x` along ``dim`` it returns :math:`m = \max_j x_j` and
    :math:`s = \sum_j e^{x_j - m}` (accumulated in float64), read from memory once by the same
    blockwise online recurrence as :func:`logsumexp`. States of the pieces of a row combine
    with :func:`merge_logsumexp_states` into the state of the whole row, so

    .. math::

        \operatorname{logsumexp}(x) = m + \log s, \qquad
        \operatorname{log\_softmax}(x)_j = (x_j - m) - \log s, \qquad
        \operatorname{CE}(x, t) = m + \log s - x_t

    hold for a row that was never in memory at once: each shard computes its state (and the
    shard that holds the target reads :math:`x_t`), and only two numbers per row travel.

    Parameters
    ----------
    input : array_like
        Any shape; float16, bfloat16, float32 or float64 (integers and bools are promoted to
        float32, as in :func:`logsumexp`).
    dim : int or tuple of ints
        The dim or dims the state summarizes (negative dims count from the end). Non-adjacent
        dims are first moved next to each other, which copies the input.
    keepdim : bool, default False
        Keep the summarized dims with size 1.

    Returns
    -------
    LogSumExpState
        ``(max, sum)``: two float64 arrays shaped like ``logsumexp(input, dim, keepdim)``.
        A slice of only ``-inf`` (or an empty one) gives ``(-inf, 0)``, one holding ``+inf``
        and no NaN ``(+inf, 1)``, one holding a NaN ``(nan, nan)``.

    See Also
    --------
    merge_logsumexp_states, logsumexp_from_state, logsumexp

    Examples
    --------
    Two vocabulary shards of the same rows give the logsumexp and the cross-entropy of the
    whole rows:

    >>> import numpy as np, fastloss as fl
    >>> logits = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, -1.0, 2.0]])
    >>> target = np.array([3, 0])
    >>> left = fl.logsumexp_state(logits[:, :2], dim=1)    # classes 0..1
    >>> right = fl.logsumexp_state(logits[:, 2:], dim=1)   # classes 2..3
    >>> lse = fl.logsumexp_from_state(fl.merge_logsumexp_states(left, right))
    >>> lse
    array([4.4401897 , 2.40282656])
    >>> fl.logsumexp(logits, dim=1)
    array([4.4401897 , 2.40282656])
    >>> lse - logits[np.arange(2), target]                  # cross-entropy per row
    array([0.4401897 , 1.90282656])
    >>> fl.cross_entropy(logits, target, reduction="none")
    array([0.4401897 , 1.90282656])
    """
    x = promote_to_float(as_array(input, "input"))
    dims = normalize_dims(dim, x.ndim)
    kept_shape = tuple(1 if d in dims else n for d, n in enumerate(x.shape))
    if x.ndim == 0:
        x = x.reshape(1)
    elif not _adjacent(dims):
        # Bring the dims together at the end; the kernels need one contiguous run.
        x = np.moveaxis(x, dims, range(x.ndim - len(dims), x.ndim))
        dims = tuple(range(x.ndim - len(dims), x.ndim))
    reduced_shape = tuple(n for d, n in enumerate(x.shape) if d not in dims)
    x3 = canonical(x, dims[0], dims[-1] + 1)
    outer, channels, inner = x3.shape
    maxima = np.empty((outer, inner), dtype=np.float64)
    sums = np.empty((outer, inner), dtype=np.float64)
    if maxima.size:
        xs = storage(x3)
        if inner == 1:
            rows = xs.reshape(outer, channels)
            K.state_rows(rows.size, outer, rows, maxima.reshape(outer), sums.reshape(outer))
        else:
            tile = tile_for(channels, x3.dtype, inner)
            K.state_strided(x3.size, outer * (-(-inner // tile)), xs, maxima, sums, tile)
    if keepdim:
        reduced_shape = kept_shape
    return LogSumExpState(maxima.reshape(reduced_shape), sums.reshape(reduced_shape))


def _as_state(state, name: str) -> LogSumExpState:
    """A (max, sum) pair as float64 arrays, or a clear error naming the argument."""
    try:
        m, s = state
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a LogSumExpState (max, sum), e.g. from fastloss.logsumexp_state, "
            f"got {type(state).__name__}"
        ) from None
    m = np.asarray(as_array(m, f"{name}.max"), dtype=np.float64)
    s = np.asarray(as_array(s, f"{name}.sum"), dtype=np.float64)
    if m.shape != s.shape:
        raise ValueError(
            f"{name} has max of shape {m.shape} but sum of shape {s.shape}; a state's two "
            "arrays have one shape (pass a state from fastloss.logsumexp_state)"
        )
    return LogSumExpState(m, s)


def _scale(m: np.ndarray, top: np.ndarray) -> np.ndarray:
    """exp(m - top), and exactly 1 where m == top: equal infinite maxima are never
    subtracted (inf - inf would be NaN), and a state's own sum is never rounded."""
    diff = np.zeros(np.broadcast_shapes(m.shape, top.shape))
    with np.errstate(invalid="ignore"):
        np.subtract(m, top, out=diff, where=m != top)
    return np.exp(diff)


def merge_states_along(maxima: np.ndarray, sums: np.ndarray, axis, keepdims=False):
    """The merge of every state along ``axis`` (an int or a tuple) in one step.

    The n-ary form of the merge rule, equal to any tree of pairwise merges up to rounding:
    ``M = max(m_k)``, ``S = sum_k s_k exp(m_k - M)``.
    """
    top = np.max(maxima, axis=axis, keepdims=True, initial=-np.inf)  # propagates NaN
    with np.errstate(invalid="ignore", over="ignore"):
        total = np.sum(sums * _scale(maxima, top), axis=axis, keepdims=keepdims)
    if not keepdims:
        top = np.squeeze(top, axis=axis)
    return top, total


def merge_logsumexp_states(a, b):
    r"""Merge two logsumexp states into the state of the concatenated slices.

    .. math::

        (m_a, s_a) \oplus (m_b, s_b) = \big(M,\; s_a e^{m_a - M} + s_b e^{m_b - M}\big),
        \qquad M = \max(m_a, m_b)

    where :math:`e^{m - M}` is taken as exactly 1 when :math:`m = M`. The operation is
    associative and commutative (up to float64 rounding), with identity ``(-inf, 0)``, so
    pieces of a row may be merged in any order and any tree (threads, shards, dask chunks,
    a stream). Special values: a NaN in either state gives ``(nan, nan)``; otherwise a
    ``(+inf, 1)`` state gives ``(+inf, 1)`` or more, whose logsumexp is ``+inf``; merging with
    ``(-inf, 0)`` changes nothing. Because equal maxima are never subtracted, ``inf - inf``
    never occurs.

    Parameters
    ----------
    a, b : LogSumExpState or pair of array_like
        States from :func:`logsumexp_state` (or earlier merges); their shapes broadcast.

    Returns
    -------
    LogSumExpState
        The merged ``(max, sum)``, float64, of the broadcast shape.

    Raises
    ------
    TypeError
        An argument that is not a (max, sum) pair.
    ValueError
        A state whose max and sum have different shapes, or states that do not broadcast.

    See Also
    --------
    logsumexp_state, logsumexp_from_state

    Examples
    --------
    Streaming a row in pieces, with a masked (all ``-inf``) piece in the middle:

    >>> import numpy as np, fastloss as fl
    >>> from functools import reduce
    >>> pieces = [np.array([1.0, 2.0]), np.array([-np.inf, -np.inf]), np.array([3.0])]
    >>> states = [fl.logsumexp_state(p, dim=0) for p in pieces]
    >>> states[1]
    LogSumExpState(max=array(-inf), sum=array(0.))
    >>> fl.logsumexp_from_state(reduce(fl.merge_logsumexp_states, states))
    array(3.40760596)
    >>> fl.logsumexp(np.concatenate(pieces), dim=0)
    array(3.40760596)
    """
    a = _as_state(a, "a")
    b = _as_state(b, "b")
    try:
        shape = np.broadcast_shapes(a.max.shape, b.max.shape)
    except ValueError:
        raise ValueError(
            f"states of shapes {a.max.shape} and {b.max.shape} do not broadcast; merge states "
            "of the same rows (same shape)"
        ) from None
    top = np.maximum(a.max, b.max)  # NaN propagates
    with np.errstate(invalid="ignore", over="ignore"):
        total = a.sum * _scale(a.max, top) + b.sum * _scale(b.max, top)
    return LogSumExpState(
        np.array(np.broadcast_to(top, shape)), np.asarray(total, dtype=np.float64).reshape(shape)
    )


def logsumexp_from_state(state):
    r"""The logsumexp a state stands for: :math:`m + \log s`.

    Parameters
    ----------
    state : LogSumExpState or pair of array_like
        From :func:`logsumexp_state` or :func:`merge_logsumexp_states`.

    Returns
    -------
    numpy.ndarray
        float64, the state's shape: ``-inf`` for ``(-inf, 0)``, ``+inf`` for a ``+inf``
        state, NaN for a NaN state (torch's logsumexp of such slices). Cast it to the input's
        dtype for exactly what :func:`logsumexp` returns.

    See Also
    --------
    logsumexp_state, merge_logsumexp_states

    Examples
    --------
    >>> import numpy as np, fastloss as fl
    >>> fl.logsumexp_from_state((np.array([0.0, -np.inf, np.inf]), np.array([2.0, 0.0, 1.0])))
    array([0.69314718,       -inf,        inf])
    """
    m, s = _as_state(state, "state")
    with np.errstate(divide="ignore", invalid="ignore"):
        # (-inf, 0) gives -inf + -inf and (+inf, s >= 1) gives +inf: no special case needed.
        return np.asarray(m + np.log(s))
