"""The mergeable logsumexp state: logsumexp_state, merge_logsumexp_states, logsumexp_from_state.

Checked: the state of a whole slice gives fastloss.logsumexp; the canonical special states;
the merge is associative and commutative with identity (-inf, 0), never computes inf - inf
(NumPy warnings are errors in this suite), and rows split into chunks along the class axis
or streamed in pieces give the logsumexp, the log_softmax normaliser and the cross-entropy
of the unsplit rows; both kernel layouts (rows and strided), every dtype, argument errors.
"""

from __future__ import annotations

import functools
import itertools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastloss as fl

INF, NAN = np.inf, np.nan
BF16 = np.dtype(ml_dtypes.bfloat16)


def lse(state) -> np.ndarray:
    return fl.logsumexp_from_state(state)


def assert_same(actual, expected, rtol=1e-13):
    """Equal up to rounding, with the same -inf / +inf / NaN pattern."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0, equal_nan=True)


def special_rows(classes: int = 700, dtype=np.float64) -> np.ndarray:
    """Regular rows and every special kind of row (longer than one 512-element block)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((10, classes)) * 4
    late = classes * 6 // 7  # in the second block when classes > 600
    x[1] = -INF  # only -inf
    x[2, 5] = INF  # +inf among finite values
    x[3, late] = NAN  # NaN late in the row
    x[4, 3], x[4, late] = INF, NAN  # both
    x[5, ::2] = -INF  # masked half
    x[6, :] = -INF
    x[6, -1] = 2.0  # only the last value is finite
    x[7] += 1e4  # large logits
    x[8, 10] = -INF
    x[8, 20] = INF  # +inf and -inf
    x[9] = -INF
    x[9, late] = NAN  # only -inf and one NaN
    return x.astype(dtype)


# ---------------------------------------------------------------------------------------------
# The state of a whole slice


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, BF16])
def test_state_of_rows_gives_logsumexp(dtype):
    x = special_rows(dtype=dtype)
    state = fl.logsumexp_state(x, dim=1)
    assert isinstance(state, fl.LogSumExpState)
    assert state.max.dtype == state.sum.dtype == np.float64
    assert state.max.shape == (10,)
    assert_same(lse(state), fl.logsumexp(x.astype(np.float64), dim=1), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_strided_layout_gives_logsumexp(dtype):
    x = np.moveaxis(special_rows(classes=40, dtype=dtype).reshape(2, 5, 40), 2, 1)  # (2, 40, 5)
    x = np.ascontiguousarray(x)
    state = fl.logsumexp_state(x, dim=1)
    assert state.max.shape == (2, 5)
    assert_same(lse(state), fl.logsumexp(x.astype(np.float64), dim=1), rtol=1e-6)


def test_canonical_special_states_in_both_layouts():
    rows = np.array([
        [-INF, -INF, -INF],  # only -inf
        [1.0, INF, -INF],  # +inf, no NaN
        [1.0, NAN, 2.0],  # NaN
        [INF, NAN, 0.0],  # both
        [0.0, 0.0, -INF],  # regular
    ])
    expected_max = [-INF, INF, NAN, NAN, 0.0]
    expected_sum = [0.0, 1.0, NAN, NAN, 2.0]
    for x, dim in ((rows, 1), (np.ascontiguousarray(rows.T), 0)):  # rows, then strided
        m, s = fl.logsumexp_state(x, dim=dim)
        np.testing.assert_array_equal(m, expected_max)
        np.testing.assert_array_equal(s, expected_sum)


def test_empty_slice_is_the_identity_state():
    m, s = fl.logsumexp_state(np.empty((3, 0)), dim=1)
    np.testing.assert_array_equal(m, [-INF] * 3)
    np.testing.assert_array_equal(s, [0.0] * 3)
    assert fl.logsumexp_state(np.empty((0, 4)), dim=1).max.shape == (0,)


def test_dims_keepdim_and_0d_input():
    x = np.random.default_rng(1).standard_normal((3, 4, 5, 6))
    for dim in (0, -1, (1, 2), (0, 2), (0, 1, 2, 3), (3, 1)):
        for keepdim in (False, True):
            state = fl.logsumexp_state(x, dim, keepdim=keepdim)
            assert_same(lse(state), fl.logsumexp(x, dim, keepdim=keepdim))
    assert fl.logsumexp_state(np.float32(3.0), 0) == (3.0, 1.0)
    assert fl.logsumexp_state(np.float32(-INF), -1) == (-INF, 0.0)


def test_integer_input_is_promoted_and_input_is_not_modified():
    x = np.arange(6).reshape(2, 3)
    before = x.copy()
    state = fl.logsumexp_state(x, dim=1)
    np.testing.assert_array_equal(x, before)
    assert_same(lse(state), fl.logsumexp(x, dim=1), rtol=1e-6)


def test_parallel_twin_is_bitwise_the_serial_result():
    x = np.random.default_rng(2).standard_normal((64, 1100)).astype(np.float32)  # parallel size
    strided = np.ascontiguousarray(x.reshape(64, 11, 100))
    for a, dim in ((x, 1), (strided, 1)):
        with fl.num_threads(1):
            one = fl.logsumexp_state(a, dim)
        with fl.num_threads(2):
            two = fl.logsumexp_state(a, dim)
        np.testing.assert_array_equal(one.max, two.max)
        np.testing.assert_array_equal(one.sum, two.sum)


def test_float32_state_is_as_accurate_as_float64_sums_allow():
    x = (np.random.default_rng(3).standard_normal((8, 5000)) * 10).astype(np.float32)
    exact = fl.logsumexp(x.astype(np.float64), dim=1)
    np.testing.assert_allclose(lse(fl.logsumexp_state(x, 1)), exact, rtol=2e-7)


# ---------------------------------------------------------------------------------------------
# The merge rule


def split_states(x, cuts, dim=1):
    pieces = np.split(x, cuts, axis=dim)
    return [fl.logsumexp_state(p, dim) for p in pieces]


def tree(states):
    """Merge pairwise, level by level (the shape of a parallel or dask reduction)."""
    while len(states) > 1:
        pairs = [states[i : i + 2] for i in range(0, len(states), 2)]
        states = [fl.merge_logsumexp_states(*p) if len(p) == 2 else p[0] for p in pairs]
    return states[0]


@pytest.mark.parametrize("cuts", [[1], [350], [100, 200, 512, 699], list(range(1, 700, 37))])
def test_chunked_rows_give_the_unsplit_logsumexp_in_any_merge_order(cuts):
    x = special_rows()
    whole = fl.logsumexp(x, dim=1)
    states = split_states(x, cuts)
    merge = fl.merge_logsumexp_states
    for merged in (
        functools.reduce(merge, states),  # streaming, left to right
        functools.reduce(lambda a, b: merge(b, a), reversed(states)),  # right to left
        tree(states),
        tree(states[::-1]),
        functools.reduce(merge, [states[i] for i in np.random.default_rng(0).permutation(
            len(states))]),
    ):
        assert_same(lse(merged), whole, rtol=1e-13)


def test_normaliser_and_cross_entropy_from_vocabulary_shards():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((6, 1000)) * 3).astype(np.float32)
    target = rng.integers(0, 1000, 6)
    shards = [(0, 300), (300, 640), (640, 1000)]
    states = [fl.logsumexp_state(x[:, a:b], 1) for a, b in shards]
    row_lse = lse(functools.reduce(fl.merge_logsumexp_states, states))
    # log_softmax = x - normaliser, shard by shard
    for a, b in shards:
        np.testing.assert_allclose(
            x[:, a:b] - row_lse[:, None].astype(np.float32),
            fl.log_softmax(x, dim=1)[:, a:b], rtol=1e-6, atol=2e-6,
        )
    # cross-entropy = lse - x_t, x_t read by the shard that holds t
    x_t = np.zeros(6)
    for a, b in shards:
        inside = (target >= a) & (target < b)
        x_t[inside] = x[inside, target[inside]]
    np.testing.assert_allclose(
        row_lse - x_t, fl.cross_entropy(x, target, reduction="none"), rtol=1e-6
    )


STATES = [
    (-INF, 0.0), (INF, 1.0), (NAN, NAN), (0.0, 1.0), (3.5, 2.25), (-1e300, 1.0), (1e4, 7.0),
    (700.0, 1.5), (-700.0, 3.0),
]


def test_merge_is_associative_and_commutative_on_special_and_regular_states():
    merge = fl.merge_logsumexp_states
    for a, b, c in itertools.product(STATES, repeat=3):
        left = merge(merge(a, b), c)
        right = merge(a, merge(b, c))
        assert_same(lse(left), lse(right), rtol=1e-15)
        assert_same(lse(merge(a, b)), lse(merge(b, a)), rtol=0)


def test_merge_special_values():
    merge = fl.merge_logsumexp_states
    identity = (-INF, 0.0)
    for state in STATES:
        merged = merge(state, identity)
        np.testing.assert_array_equal(merged.max, state[0])
        np.testing.assert_array_equal(merged.sum, state[1])  # exactly: never rescaled
    assert lse(merge((INF, 1.0), (5.0, 3.0))) == INF
    assert lse(merge((INF, 1.0), (INF, 1.0))) == INF  # equal infinite maxima: no inf - inf
    assert lse(merge((INF, 1.0), identity)) == INF
    assert np.isnan(lse(merge((INF, 1.0), (NAN, NAN))))
    assert np.isnan(lse(merge((NAN, NAN), identity)))
    assert lse(merge(identity, identity)) == -INF
    assert lse(merge((-INF, 0.0), (2.0, 1.0))) == 2.0


def test_merge_broadcasts_and_accepts_plain_pairs():
    a = fl.logsumexp_state(np.zeros((3, 4)), dim=1)  # shape (3,)
    merged = fl.merge_logsumexp_states(a, (np.float64(0.0), 4.0))
    assert merged.max.shape == merged.sum.shape == (3,)
    np.testing.assert_allclose(lse(merged), np.log(8.0))


@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(1, 4), st.integers(1, 40)),
        elements=st.one_of(
            st.floats(-50, 50), st.sampled_from([-INF, INF, NAN, -INF, -INF])
        ),
    ),
    st.lists(st.integers(0, 40), max_size=5),
)
def test_property_any_split_gives_the_unsplit_logsumexp(x, cuts):
    cuts = sorted({c for c in cuts if c < x.shape[1]})
    merged = tree(split_states(x, cuts))
    assert_same(lse(merged), fl.logsumexp(x, dim=1), rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# Argument errors


def test_errors_name_the_argument_and_the_fix():
    with pytest.raises(IndexError, match="Dimension out of range"):
        fl.logsumexp_state(np.zeros((2, 3)), dim=2)
    with pytest.raises(TypeError, match="dim must be"):
        fl.logsumexp_state(np.zeros((2, 3)), dim=None)
    with pytest.raises(TypeError, match="complex"):
        fl.logsumexp_state(np.zeros(3, np.complex128), dim=0)
    with pytest.raises(TypeError, match=r"a must be a LogSumExpState \(max, sum\)"):
        fl.merge_logsumexp_states(3.0, (0.0, 1.0))
    with pytest.raises(ValueError, match="b has max of shape"):
        fl.merge_logsumexp_states((0.0, 1.0), (np.zeros(2), np.ones(3)))
    with pytest.raises(ValueError, match="do not broadcast"):
        fl.merge_logsumexp_states((np.zeros(2), np.ones(2)), (np.zeros(3), np.ones(3)))
    with pytest.raises(TypeError, match="state must be a LogSumExpState"):
        fl.logsumexp_from_state(np.zeros(3))
