"""The thin Python layer's array handling: coercion, dtype rules, dims, canonical views, outputs.

Kernels only ever see C-contiguous arrays of float32/float64 (or the uint16/int16 bit views of
float16/bfloat16) in one of two canonical shapes: ``(R, C)`` rows, or ``(O, C, I)`` with the
reduced or class axis in the middle. Everything that turns a user's call into those views
lives here.
"""

from __future__ import annotations

import math
import operator

import numpy as np

# float16 and bfloat16 reach the kernels as bit views (Numba cannot type them); the kernels
# widen them to float32 in registers. See fastloss/_math.py.
_HALF = np.dtype(np.float16)
try:  # ml_dtypes is optional: bfloat16 is supported when it is installed.
    import ml_dtypes

    _BFLOAT = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    _BFLOAT = None

FLOAT_DTYPES = tuple(
    d for d in (np.dtype(np.float32), np.dtype(np.float64), _HALF, _BFLOAT) if d is not None
)


class UnsupportedDtypeError(TypeError, NotImplementedError):
    """An input dtype the function cannot compute in.

    It is a TypeError, and also a NotImplementedError, the type torch raises in this case.
    """


def as_array(value, name: str) -> np.ndarray:
    """``np.asarray`` for anything array-like (lists, scalars, __array__, DLPack tensors)."""
    if type(value) is np.ndarray:
        return value
    if hasattr(value, "detach") and hasattr(value, "requires_grad"):
        # A torch tensor that requires grad refuses __array__ and DLPack: its values are
        # what is wanted here (fastloss computes gradients itself).
        value = value.detach()
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        # Objects that only speak DLPack (and CPU tensors that refuse __array__ with grad).
        if hasattr(value, "__dlpack__"):
            try:
                return np.from_dlpack(value)
            except Exception:  # noqa: BLE001 - report the original failure below
                pass
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}: {exc}") from exc


def require_float(x: np.ndarray, func: str, name: str = "input") -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise UnsupportedDtypeError(
            f"{func}: {name} has dtype {x.dtype}, which it cannot compute in; pass a floating "
            f"array (float16, bfloat16, float32 or float64), e.g. {name}.astype(np.float32)"
        )


def promote_to_float(x: np.ndarray) -> np.ndarray:
    """Integer and bool inputs become float32 (torch's default float), as torch promotes them."""
    if x.dtype in FLOAT_DTYPES:
        return x
    if x.dtype.kind in "biu":
        return x.astype(np.float32)
    raise UnsupportedDtypeError(
        f"input has dtype {x.dtype}; pass a real floating, integer or bool array"
    )


def storage(a: np.ndarray) -> np.ndarray:
    """The array a kernel receives: itself, or the bit view of a 16-bit float array."""
    if a.dtype == _HALF:
        return a.view(np.uint16)
    if _BFLOAT is not None and a.dtype == _BFLOAT:
        return a.view(np.int16)
    return a


def compute_itemsize(dtype: np.dtype) -> int:
    return 8 if dtype == np.float64 else 4


def normalize_dim(dim, ndim: int) -> int:
    """torch's dim rules: an int in [-ndim, ndim) (0-d arrays accept 0 and -1)."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(
            f"dim must be an int, not {type(dim).__name__} ({dim!r}); pass one axis, "
            "e.g. dim=-1"
        )
    dim = operator.index(dim)
    span = max(ndim, 1)
    if not -span <= dim < span:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-span}, {span - 1}], "
            f"but got {dim})"
        )
    return dim % span


def normalize_dims(dim, ndim: int) -> tuple[int, ...]:
    """An int or a sequence of ints -> sorted tuple of distinct non-negative dims."""
    if dim is None:
        raise TypeError("dim must be an int or a tuple of ints, not None; e.g. dim=-1")
    if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool):
        return (normalize_dim(dim, ndim),)
    try:
        dims = [normalize_dim(d, ndim) for d in dim]
    except TypeError as exc:
        raise TypeError(f"dim must be an int or a tuple of ints, got {dim!r}") from exc
    if not dims:
        raise ValueError(
            "dim=() is ambiguous (torch rejects it too); pass the dims to reduce, e.g. "
            "dim=tuple(range(x.ndim)) for all of them"
        )
    seen = set()
    for d in dims:
        if d in seen:
            raise ValueError(f"dim {d} appears multiple times in the list of dims {tuple(dim)}")
        seen.add(d)
    if ndim == 0:
        return (0,) if dims else ()
    return tuple(sorted(dims))


def split_at(shape: tuple[int, ...], start: int, stop: int) -> tuple[int, int, int]:
    """(outer, middle, inner) sizes of ``shape`` around axes [start, stop)."""
    return (
        math.prod(shape[:start]),
        math.prod(shape[start:stop]),
        math.prod(shape[stop:]),
    )


def canonical(x: np.ndarray, start: int, stop: int = -1) -> np.ndarray:
    """The ``(O, C, I)`` C-contiguous view of ``x`` with axes [start, stop) merged into C.

    A non-contiguous input is made contiguous once; the axis order never changes.
    """
    if stop == -1:
        stop = start + 1
    x = np.ascontiguousarray(x)
    return x.reshape(split_at(x.shape, start, stop))


def rows_or_strided(x3: np.ndarray) -> np.ndarray:
    """Drop a unit inner axis: ``(O, C, 1)`` -> ``(O, C)`` selects the row kernels."""
    return x3.reshape(x3.shape[:2]) if x3.shape[2] == 1 else x3


def tile_for(channels: int, dtype: np.dtype, inner: int) -> int:
    """Positions per strided work item: the C x T tile stays in L2 across its passes."""
    budget = 256 * 1024
    tile = budget // max(1, channels * compute_itemsize(dtype))
    tile = min(1024, max(16, tile - tile % 16))
    return min(tile, inner) if inner > 0 else 1


def check_out(out, shape: tuple[int, ...], dtype: np.dtype, name: str = "out") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"{name} has shape {out.shape} and dtype {out.dtype}; it must have shape "
            f"{tuple(shape)} and dtype {dtype} (the gradient's shape and dtype)"
        )
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only; pass a writeable array")
    return out


def writable_target(out: np.ndarray | None, shape, dtype, *inputs: np.ndarray) -> np.ndarray:
    """A C-contiguous array a kernel may write the result into.

    ``out`` itself when it is contiguous and either overlaps no input or is exactly an input
    (in-place use, which the kernels support: each element is read before it is written);
    otherwise a fresh array, to be copied into ``out`` by ``deliver``.
    """
    if out is None:
        return np.empty(shape, dtype)
    if out.flags.c_contiguous:
        for a in inputs:
            if np.may_share_memory(out, a) and not _same_memory(out, a):
                return np.empty(shape, dtype)
        return out
    return np.empty(shape, dtype)


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.size == b.size
        and b.flags.c_contiguous
    )


def deliver(result: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None or result is out:
        return result
    np.copyto(out, result.reshape(out.shape), casting="unsafe")
    return out
