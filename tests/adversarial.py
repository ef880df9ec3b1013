"""The one adversarial input generator of the kernel tests (style.md section 3, item 7).

``adversarial_inputs()`` yields ``AdversarialInput`` objects: a name, an array and the dims
worth reducing over. Together they cover

* values: random logits, rows that are all ``-inf``, rows with ``+inf`` or NaN (alone and
  mixed), a ``-inf`` among finite values, random ``-inf`` masks, huge logits (+-1e4, 1e30,
  3.4e38), a row whose maximum arrives late (the online max rescales), long rows that the
  logsumexp kernel splits across threads (with special values in some chunks);
* shapes: 0-d (finite, +-inf, NaN), 1-d to 5-d, C = 1, N = 0, an empty reduced dim;
* layouts: C order, slices with steps, negative strides, transposes, Fortran order,
  zero-stride broadcasts, read-only arrays; one input above the parallel threshold;
* dtypes: float32 and float64 (each array is generated in float64, then rounded once).

Every array is freshly generated on each call and deterministic (its seed is derived from its
name), so a test that wrongly modified one cannot affect another. ``valid_dims(ndim)`` gives
every dim torch accepts (``-ndim .. ndim-1``, and ``-1, 0`` for a 0-d array) and
``dim_tuples(ndim)`` a few tuples of dims for logsumexp (adjacent, non-adjacent, unsorted,
negative, all).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator

import numpy as np

INF, NAN = np.inf, np.nan
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Longer than 2 x fastloss._kernels_softmax.SPLIT_CHUNK, so that a few such rows take the
# split (chunks across threads) logsumexp path.
LONG_ROW = 140_000


@dataclasses.dataclass(frozen=True)
class AdversarialInput:
    """One named test array."""

    name: str
    array: np.ndarray

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def id(self) -> str:
        return f"{self.name}-{self.array.dtype}"

    @property
    def dims(self) -> list[int]:
        """Every valid int dim."""
        return valid_dims(self.array.ndim)

    @property
    def dim_tuples(self) -> list[tuple[int, ...]]:
        return dim_tuples(self.array.ndim)

    def copy(self) -> np.ndarray:
        """A writeable C-contiguous copy with the same values."""
        return np.array(self.array, order="C", copy=True)


def valid_dims(ndim: int) -> list[int]:
    """All dims torch accepts for an ndim-d input: -ndim .. ndim-1 (0-d: -1 and 0)."""
    span = max(ndim, 1)
    return list(range(-span, span))


def dim_tuples(ndim: int) -> list[tuple[int, ...]]:
    """Tuples of dims for logsumexp: one, adjacent, non-adjacent, unsorted, negative, all."""
    if ndim == 0:
        return [(0,), (-1,)]
    tuples = [(ndim - 1,), tuple(range(ndim))]
    if ndim >= 2:
        tuples += [(-1, 0), (0, 1)]
    if ndim >= 3:
        tuples += [(0, 2), (ndim - 1, -ndim)]
    if ndim >= 4:
        tuples += [(1, 3), (-1, 0, 1)]
    if ndim >= 5:
        tuples += [(0, 2, 4), (3, 1)]
    return list(dict.fromkeys(tuples))  # 1-d: (0,) twice


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _logits(name: str, shape) -> np.ndarray:
    return _rng(name).standard_normal(shape) * 3


def special_rows(columns: int = 5) -> np.ndarray:
    """(10, columns) float64 rows holding every special row of torch-semantics.md sections 1-2.

    Row order: random, all -inf, one +inf, one NaN, one -inf among finite values, +-1e4,
    [1e30, 0, -1e30, ...], all 3.4e38, +inf together with -inf, NaN together with +inf.
    """
    assert columns >= 3
    rows = np.tile(_logits("special_rows", columns), (10, 1))
    rows[1] = -INF
    rows[2, 1] = INF
    rows[3, 2] = NAN
    rows[4, 0] = -INF
    rows[5] = np.where(np.arange(columns) % 2 == 0, 1e4, -1e4)
    rows[6, :3] = [1e30, 0.0, -1e30]
    rows[7] = 3.4e38
    rows[8] = -INF
    rows[8, -1] = INF
    rows[9, 0], rows[9, -1] = NAN, INF
    return rows


def _base_arrays() -> Iterator[tuple[str, np.ndarray]]:
    """(name, float64 array) pairs; layouts are applied after the dtype cast."""
    yield "random_2d", _logits("random_2d", (7, 13))
    yield "random_1d", _logits("random_1d", (11,))
    yield "random_3d", _logits("random_3d", (3, 4, 5))
    yield "random_4d", _logits("random_4d", (2, 3, 4, 5))
    yield "random_5d", _logits("random_5d", (2, 3, 2, 3, 2))
    yield "scalar", np.array(1.5)
    yield "scalar_-inf", np.array(-INF)
    yield "scalar_+inf", np.array(INF)
    yield "scalar_nan", np.array(NAN)
    yield "special_rows", special_rows()
    # The special rows along the middle axis of a 3-d array: reduced with a stride.
    yield "special_middle", np.broadcast_to(special_rows().T, (2, 5, 10)).copy()
    masked = _logits("masked", (6, 9))
    masked[_rng("masked_mask").random(masked.shape) < 0.3] = -INF
    masked[:, 4] = 0.0  # every row keeps one finite entry
    yield "masked", masked
    yield "huge_1e4", np.where(_rng("huge").random((5, 6)) < 0.5, 1e4, -1e4)
    yield "one_class", _logits("one_class", (5, 1))
    yield "no_rows", np.zeros((0, 4))
    yield "empty_reduced", np.zeros((3, 0))
    yield "empty_3d", np.zeros((2, 0, 3))
    # The maximum arrives late in a row longer than the kernels' block.
    yield "ascending", np.linspace(-60.0, 60.0, 2 * 1300).reshape(2, 1300)
    yield "parallel", _logits("parallel", (64, 600))  # >= 32768 elements
    long_rows = _logits("long_rows", (2, LONG_ROW))
    long_rows[0, :70_000] = -INF  # an all -inf chunk before the finite ones
    long_rows[1, LONG_ROW - 5] = 50.0  # the max in the last chunk
    yield "long_rows", long_rows
    long_special = _logits("long_special", (3, LONG_ROW))
    long_special[0, 100_000] = NAN
    long_special[1, 100_000] = INF
    long_special[2, :] = -INF
    yield "long_special", long_special


def _layouts(name: str, x: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """The same values in the layouts a user might pass (only for the small random arrays)."""
    yield name, x
    if name == "random_2d":
        wide = np.zeros((x.shape[0] * 2, x.shape[1] * 3), x.dtype)
        wide[::2, ::3] = x
        yield "random_2d_step", wide[::2, ::3]
        yield "random_2d_transposed", np.ascontiguousarray(x.T).T
        yield "random_2d_reversed", x[::-1, ::-1]
        if x.dtype != np.float64:  # read-only kernels are typed alike for every dtype
            readonly = x.copy()
            readonly.flags.writeable = False
            yield "random_2d_readonly", readonly
        yield "random_2d_broadcast", np.broadcast_to(x[:1], x.shape)  # stride 0, read-only
    elif name == "random_3d":
        yield "random_3d_fortran", np.asfortranarray(x)
        yield "random_3d_permuted", np.ascontiguousarray(x.transpose(2, 0, 1)).transpose(1, 2, 0)
    elif name == "special_rows":
        yield "special_rows_transposed", np.ascontiguousarray(x.T).T
        yield "special_columns", np.ascontiguousarray(x.T)
    elif name == "random_4d":
        # channels_last: the (N, C, H, W) view of an (N, H, W, C) array.
        yield (
            "random_4d_channels_last",
            np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
        )


def adversarial_inputs(
    dtypes=FLOAT_DTYPES, *, large: bool = True, readonly: bool = True, names=None
) -> Iterator[AdversarialInput]:
    """Yield every adversarial array in each of ``dtypes``.

    ``large=False`` leaves out the inputs of 32768 elements or more (parallel, long rows);
    ``readonly=False`` the read-only C-contiguous one, which reaches the kernels as is (Numba
    compiles separate kernels for read-only arrays); ``names`` keeps only the given names.
    """
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        for base_name, x64 in _base_arrays():
            if not large and x64.size >= 32768:
                continue
            with np.errstate(over="ignore"):  # 3.4e38 stays finite, nothing else overflows
                x = x64.astype(dtype)
            for name, array in _layouts(base_name, x):
                if names is not None and name not in names:
                    continue
                if not readonly and name.endswith("_readonly"):
                    continue
                yield AdversarialInput(name, array)


def adversarial_ids(inputs) -> list[str]:
    return [item.id for item in inputs]
