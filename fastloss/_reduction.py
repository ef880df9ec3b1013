"""Reduction arguments shared by every loss: reduction strings, legacy size_average/reduce."""

from __future__ import annotations

import warnings

import numpy as np

from ._arrays import as_array

REDUCTIONS = ("none", "mean", "sum")


def legacy_reduction(size_average, reduce) -> str:
    """torch's mapping of the deprecated pair; a None member counts as True."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


def resolve_reduction(size_average, reduce, reduction, stacklevel: int, extra=()) -> str:
    """The effective reduction string, with torch's warnings and errors.

    ``extra`` lists reductions valid for one function only (kl_div's 'batchmean').
    ``stacklevel`` is counted from this function's caller's caller, the user's call site.
    """
    if size_average is not None or reduce is not None:
        resolved = legacy_reduction(size_average, reduce)
        warnings.warn(
            "size_average and reduce args will be deprecated, please use "
            f"reduction='{resolved}' instead.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
        return resolved
    if reduction == "elementwise_mean":
        warnings.warn(
            "reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
        return "mean"
    if not isinstance(reduction, str) or reduction not in REDUCTIONS + tuple(extra):
        valid = ", ".join(repr(r) for r in REDUCTIONS + tuple(extra))
        raise ValueError(
            f"{reduction} is not a valid value for reduction (reduction={reduction!r}); "
            f"use one of {valid}"
        )
    return reduction


def upstream_per_element(grad_output, loss_shape, func: str) -> np.ndarray:
    """reduction='none': ``grad_output`` as an array of exactly the loss's shape."""
    g = as_array(grad_output, "grad_output")
    if g.shape != tuple(loss_shape):
        raise ValueError(
            f"{func}: grad_output has shape {g.shape}, but reduction='none' gives a loss of "
            f"shape {tuple(loss_shape)}; pass a gradient of that shape"
        )
    return g


def upstream_scalar(grad_output, reduction: str, func: str) -> float:
    """'mean' / 'sum': ``grad_output`` as one number (1 when None)."""
    if grad_output is None:
        return 1.0
    g = as_array(grad_output, "grad_output")
    if g.size != 1:
        raise ValueError(
            f"{func}: grad_output has shape {g.shape}, but reduction='{reduction}' gives a "
            "scalar loss; pass a scalar"
        )
    return float(g.reshape(()))
