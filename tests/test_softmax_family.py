"""Conformance of the softmax family: logsumexp, softmax, log_softmax, sigmoid, logsigmoid.

Every function and its ``_backward`` is checked

* against ``fastloss.reference`` run in float64 on the upcast inputs, with the tolerances of
  shared/reference/torch-semantics.md section 12, over every input of ``tests/adversarial.py``
  and every valid dim;
* against torch (forward, and autograd's gradient for a random upstream gradient);
* for accuracy: on large float32 inputs fastloss is at least as accurate as torch;
* in float16 and bfloat16, against its own float32 result;
* on the exact values of the edge-case table (section 11) and sections 1, 2 and 10;
* for ``out=``, input immutability, argument errors, and thread-count independence.
"""

from __future__ import annotations

import inspect
import math
import warnings

import ml_dtypes
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastloss as fl
from fastloss import _config, _registry, reference

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from .adversarial import adversarial_ids, adversarial_inputs, valid_dims
except ImportError:
    from adversarial import adversarial_ids, adversarial_inputs, valid_dims

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
INF, NAN = np.inf, np.nan

SOFTMAX_LIKE = ("softmax", "log_softmax")
ELEMENTWISE = ("sigmoid", "logsigmoid")
FAMILY = ("logsumexp", *SOFTMAX_LIKE, *ELEMENTWISE)
BACKWARDS = tuple(name + "_backward" for name in FAMILY)
LOG_DOMAIN = {"logsumexp", "log_softmax", "logsigmoid"}

INPUTS = list(adversarial_inputs())
INPUT_IDS = adversarial_ids(INPUTS)
HALF_INPUTS = list(adversarial_inputs(dtypes=(F16, BF16), large=False, readonly=False))
HALF_IDS = adversarial_ids(HALF_INPUTS)


# ---------------------------------------------------------------------------------------------
# Comparison machinery


def _f64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def forward_tolerance(dtype, length: int) -> tuple[float, float]:
    """(rtol, atol) of a forward result against the float64 reference (section 12)."""
    dtype = np.dtype(dtype)
    if dtype == F64:
        return 1e-10, 1e-12
    if dtype == F32:
        tol = max(2e-5, 1e-8 * length)
        return tol, tol
    raise AssertionError(f"no reference tolerance for {dtype}")


def grad_tolerance(dtype, length: int) -> float:
    """Normwise bound of a float32 gradient: max|a - ref| <= tol * max|ref|."""
    return max(1e-5, 1e-8 * length)


def upstream(shape, dtype, seed: int = 7) -> np.ndarray:
    """A random upstream gradient, rounded to ``dtype``."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _assert_specials(got64, expected, what):
    """NaN at the same places; infinities at the same places with the same sign."""
    np.testing.assert_array_equal(np.isnan(got64), np.isnan(expected), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(np.isinf(got64), np.isinf(expected), err_msg=f"{what}: inf")
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(got64[infinite], expected[infinite], err_msg=f"{what}: inf sign")


def assert_close(got, ref, dtype, length=1, *, grad=False, scale=1.0, norm=None, what=""):
    """Check ``got`` (computed in ``dtype``) against the float64 ``ref`` (section 12).

    Shape and dtype must match. NaN positions must match exactly, and so must infinities,
    after rounding ``ref`` to ``dtype`` (a float32 result may legitimately overflow). Finite
    entries: float64 elementwise at rtol 1e-10 / atol 1e-12; float32 forward at
    rtol = atol = max(2e-5, 1e-8 L); float32 gradients normwise,
    ``max|got - ref| <= max(1e-5, 1e-8 L) * norm`` with ``norm = max|ref|`` unless a larger
    ``norm`` is given (see ``grad_norm``). ``scale`` multiplies the tolerances (2 when the
    reference is torch's float32 result).
    """
    dtype = np.dtype(dtype)
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype} != {dtype}"
    with np.errstate(all="ignore"):
        got64, ref64 = _f64(got), _f64(ref)
        expected = _f64(ref64.astype(dtype))  # overflow to inf where dtype must overflow
        _assert_specials(got64, expected, what)
        finite = np.isfinite(expected)
        if not finite.any():
            return
        a, r = got64[finite], ref64[finite]
        if grad and dtype != F64:
            error = np.max(np.abs(a - r))
            norm = max(np.max(np.abs(r)), norm or 0.0)
            bound = scale * grad_tolerance(dtype, length) * norm
            assert error <= bound, f"{what}: normwise error {error:.3g} > {bound:.3g}"
        else:
            rtol, atol = forward_tolerance(dtype, length)
            np.testing.assert_allclose(a, r, rtol=scale * rtol, atol=scale * atol, err_msg=what)


def grad_norm(name, g, x, *args) -> float | None:
    """The size of the terms a gradient is the difference of, when it can cancel.

    softmax's ``p * (g - sum(g p))`` and log_softmax's ``g - p * sum(g)`` are differences of
    terms as large as ``|g p|`` and ``|g|``; when they nearly cancel (a row dominated by one
    entry) the float32 result carries rounding errors of that size, torch's as well as
    fastloss's, so the normwise bound is taken relative to them. Other gradients: None.
    """
    if name not in SOFTMAX_LIKE:
        return None
    with np.errstate(all="ignore"):
        g64 = _f64(g)
        p = reference.softmax(_f64(x), *args)
        terms = np.abs(g64 * p) if name == "softmax" else np.abs(g64)
        finite = terms[np.isfinite(terms)]
    return float(finite.max()) if finite.size else None


def reduced_length(shape, dims) -> int:
    if not shape:
        return 1
    dims = (dims,) if isinstance(dims, int) else dims
    return math.prod(shape[d] for d in dims)


def _call_both(name, x, *args, **kwargs):
    """fastloss.<name>(x, ...) and fastloss.reference.<name>(x as float64, ...)."""
    got = getattr(fl, name)(x, *args, **kwargs)
    ref = getattr(reference, name)(_f64(x), *args, **kwargs)
    return got, ref


def _call_both_backward(name, g, x, *args, **kwargs):
    got = getattr(fl, name + "_backward")(g, x, *args, **kwargs)
    ref = getattr(reference, name + "_backward")(_f64(g), _f64(x), *args, **kwargs)
    return got, ref


def _snapshot(a: np.ndarray):
    return np.ascontiguousarray(a).tobytes(), a.flags.writeable


def _assert_unchanged(a: np.ndarray, snapshot, what=""):
    """Bitwise (NaN payloads included) the same values, and the same writeable flag."""
    data, writeable = snapshot
    assert np.ascontiguousarray(a).tobytes() == data, f"{what}: input was modified"
    assert a.flags.writeable == writeable


def _lse_calls(item):
    """(dim, keepdim) pairs for logsumexp: every int dim, a few tuples, both keepdims.

    Large inputs (the parallel and long-row paths): every int dim and all dims at once.
    """
    if item.array.size >= 32768:
        return [(dim, False) for dim in item.dims] + [(item.dim_tuples[1], True)]
    dims = item.dims + item.dim_tuples
    return [(dim, keepdim) for dim in dims for keepdim in (False, True)]


# ---------------------------------------------------------------------------------------------
# Against the float64 reference, on every adversarial input and every dim


@pytest.mark.parametrize("item", INPUTS, ids=INPUT_IDS)
def test_logsumexp_matches_reference(item):
    x = item.array
    before = _snapshot(x)
    for dim, keepdim in _lse_calls(item):
        what = f"logsumexp dim={dim} keepdim={keepdim}"
        length = reduced_length(x.shape, dim)
        got, ref = _call_both("logsumexp", x, dim, keepdim=keepdim)
        assert_close(got, ref, x.dtype, length, what=what)
        g = upstream(ref.shape, x.dtype)
        got, ref = _call_both_backward("logsumexp", g, x, dim, keepdim=keepdim)
        assert_close(got, ref, x.dtype, length, grad=True, what=what + " backward")
    _assert_unchanged(x, before, item.id)


@pytest.mark.parametrize("name", SOFTMAX_LIKE)
@pytest.mark.parametrize("item", INPUTS, ids=INPUT_IDS)
def test_softmax_matches_reference(item, name):
    x = item.array
    before = _snapshot(x)
    g = upstream(x.shape, x.dtype)
    for dim in item.dims:
        what = f"{name} dim={dim}"
        length = reduced_length(x.shape, dim)
        got, ref = _call_both(name, x, dim)
        assert_close(got, ref, x.dtype, length, what=what)
        got, ref = _call_both_backward(name, g, x, dim)
        norm = grad_norm(name, g, x, dim)
        assert_close(got, ref, x.dtype, length, grad=True, norm=norm, what=what + " backward")
    _assert_unchanged(x, before, item.id)


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("item", INPUTS, ids=INPUT_IDS)
def test_elementwise_matches_reference(item, name):
    x = item.array
    before = _snapshot(x)
    got, ref = _call_both(name, x)
    assert_close(got, ref, x.dtype, what=name)
    got, ref = _call_both_backward(name, upstream(x.shape, x.dtype), x)
    assert_close(got, ref, x.dtype, grad=True, what=name + " backward")
    _assert_unchanged(x, before, item.id)


# ---------------------------------------------------------------------------------------------
# Against torch


def to_torch(torch, a: np.ndarray, requires_grad=False):
    """A torch tensor with the values and dtype of ``a`` (bfloat16 through its bits)."""
    a = np.array(a, order="C", copy=True)
    if a.dtype == BF16:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t.requires_grad_(requires_grad)


def from_torch(torch, t) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.numpy()


def torch_forward_backward(torch, name, x, g, *args, **kwargs):
    """torch's forward result and autograd gradient of ``name`` for the upstream ``g``."""
    func = _registry.CASES[name].torch_function()
    t = to_torch(torch, x, requires_grad=True)
    y = func(t, *args, **kwargs)
    y.backward(to_torch(torch, g))
    return from_torch(torch, y), from_torch(torch, t.grad)


def _torch_calls(name, item):
    if name == "logsumexp":
        return [((dim,), {"keepdim": keepdim}) for dim, keepdim in _lse_calls(item)]
    if name in SOFTMAX_LIKE:
        return [((dim,), {}) for dim in item.dims]
    return [((), {})]


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("item", INPUTS, ids=INPUT_IDS)
def test_matches_torch(torch, item, name):
    x = item.array
    for args, kwargs in _torch_calls(name, item):
        what = f"{name}{args}{kwargs}"
        length = reduced_length(x.shape, args[0]) if args else 1
        got = getattr(fl, name)(x, *args, **kwargs)
        g = upstream(np.shape(got), x.dtype)
        expected, expected_grad = torch_forward_backward(torch, name, x, g, *args, **kwargs)
        got_grad = getattr(fl, name + "_backward")(g, x, *args, **kwargs)
        ref = getattr(reference, name)(_f64(x), *args, **kwargs)
        ref_grad = getattr(reference, name + "_backward")(_f64(g), _f64(x), *args, **kwargs)
        assert_matches_torch(got, expected, ref, x.dtype, length, what=what)
        norm = grad_norm(name, g, x, *args)
        assert_matches_torch(
            got_grad, expected_grad, ref_grad, x.dtype, length, grad=True, norm=norm, what=what
        )


def assert_matches_torch(got, expected, ref, dtype, length, *, grad=False, norm=None, what=""):
    """``got`` is close to torch's ``expected`` (at twice the tolerances, as section 12 says
    for two results in the same dtype), or else at least as accurate as torch.

    The second case is section 12's accuracy criterion: where torch's own float32 rounding
    is outside the tolerance (e.g. logsumexp's gradient exp(x - lse) with lse = 1e4 rounded to
    float32), fastloss may be more accurate: its max error against the float64 reference
    ``ref`` must then be at most 2 x torch's + 1e-7 max|ref|. NaN and infinity positions
    must match torch's exactly in either case.
    """
    with np.errstate(all="ignore"):
        _assert_specials(_f64(got), _f64(expected), what + " (torch)")
    try:
        assert_close(got, expected, dtype, length, grad=grad, scale=2, norm=norm, what=what)
    except AssertionError:
        with np.errstate(all="ignore"):
            finite = np.isfinite(_f64(expected)) & np.isfinite(_f64(ref))
            if not finite.any():
                raise
            r = _f64(ref)[finite]
            fl_error = np.max(np.abs(_f64(got)[finite] - r))
            torch_error = np.max(np.abs(_f64(expected)[finite] - r))
        if not fl_error <= 2 * torch_error + 1e-7 * np.max(np.abs(r)):
            raise


# ---------------------------------------------------------------------------------------------
# At least as accurate as torch (float32, large inputs)


def _log_one_zero_row() -> np.ndarray:
    """Section 12's row: one 0 and 1e6 entries of log(1e-8); the true lse is 0.00995033."""
    row = np.full(1_000_001, np.log(1e-8), dtype=np.float32)
    row[0] = 0.0
    return row


ACCURACY_CASES = {
    "vocab_64x50257_dim-1": (lambda: _logits_f32((64, 50257)), -1),
    "spatial_8x512x64_dim1": (lambda: _logits_f32((8, 512, 64)), 1),
    "tiny_terms_row_dim-1": (lambda: _log_one_zero_row()[None, :], -1),
    "tiny_terms_column_dim0": (lambda: _log_one_zero_row()[:, None], 0),
}


def _logits_f32(shape):
    return (np.random.default_rng(2024).standard_normal(shape) * 3).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ACCURACY_CASES))
def test_float32_at_least_as_accurate_as_torch(torch, case):
    make, dim = ACCURACY_CASES[case]
    x = make()
    x64 = x.astype(np.float64)
    t = torch.from_numpy(x)
    torch_results = {
        "logsumexp": torch.logsumexp(t, dim).numpy(),
        "softmax": torch.softmax(t, dim).numpy(),
        "log_softmax": torch.log_softmax(t, dim).numpy(),
    }
    for name, torch_result in torch_results.items():
        ref = getattr(reference, name)(x64, dim)
        got = getattr(fl, name)(x, dim)
        assert got.dtype == F32
        fl_error = np.max(np.abs(got.astype(np.float64) - ref))
        torch_error = np.max(np.abs(torch_result.astype(np.float64) - ref))
        bound = 2 * torch_error + 1e-7 * np.max(np.abs(ref))
        assert fl_error <= bound, (
            f"{name} on {case}: fastloss error {fl_error:.3g} > 2 x torch's {torch_error:.3g} "
            f"+ 1e-7 max|ref| = {bound:.3g}"
        )


# ---------------------------------------------------------------------------------------------
# float16 and bfloat16


def half_tolerance(dtype, name) -> tuple[float, float]:
    """(rtol, atol) of section 12: f16 1e-2 / 1e-2; bf16 3e-2 / (1e-1 log domain, 4e-3)."""
    if dtype == F16:
        return 1e-2, 1e-2
    return 3e-2, (1e-1 if name in LOG_DOMAIN else 4e-3)


def assert_half_close(got, f32_result, dtype, name, *, grad=False, scale=1.0, what=""):
    """A 16-bit result against the float32 result of the same (rounded) input."""
    got = np.asarray(got)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype} != {dtype}"
    assert got.shape == np.shape(f32_result), what
    rtol, atol = half_tolerance(dtype, name)
    with np.errstate(all="ignore"):
        got64, ref64 = _f64(got), _f64(f32_result)
        expected = _f64(np.asarray(f32_result).astype(dtype))
        _assert_specials(got64, expected, what)
        finite = np.isfinite(expected)
        if not finite.any():
            return
        a, r = got64[finite], ref64[finite]
        if grad:
            # Plus the smallest normal number: a float32 gradient below float16's range
            # rounds to 0 (or a subnormal) in float16.
            tiny = float(ml_dtypes.finfo(dtype).tiny)
            error, bound = np.max(np.abs(a - r)), scale * rtol * np.max(np.abs(r)) + tiny
            assert error <= bound, f"{what}: normwise error {error:.3g} > {bound:.3g}"
        else:
            np.testing.assert_allclose(a, r, rtol=scale * rtol, atol=scale * atol, err_msg=what)


def _half_calls(name, item):
    if name == "logsumexp":
        return [((dim,), {"keepdim": False}) for dim in item.dims + item.dim_tuples[1:2]]
    return _torch_calls(name, item)


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("item", HALF_INPUTS, ids=HALF_IDS)
def test_half_dtypes_close_to_float32(item, name):
    x = item.array
    before = _snapshot(x)
    x32 = x.astype(np.float32)
    for args, kwargs in _half_calls(name, item):
        what = f"{name}{args}{kwargs} {x.dtype}"
        got = getattr(fl, name)(x, *args, **kwargs)
        assert_half_close(got, getattr(fl, name)(x32, *args, **kwargs), x.dtype, name, what=what)
        g = upstream(np.shape(got), x.dtype)
        got_grad = getattr(fl, name + "_backward")(g, x, *args, **kwargs)
        f32_grad = getattr(fl, name + "_backward")(g.astype(np.float32), x32, *args, **kwargs)
        assert_half_close(got_grad, f32_grad, x.dtype, name, grad=True, what=what + " backward")
    _assert_unchanged(x, before, item.id)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_half_dtypes_read_only_input(dtype):
    x = upstream((5, 7), dtype)
    x.flags.writeable = False
    g = upstream((5, 7), dtype, seed=1)
    x32 = x.astype(np.float32)
    assert_half_close(fl.softmax(x, 1), fl.softmax(x32, 1), dtype, "softmax")
    grad = fl.softmax_backward(g, x, 1)
    expected = fl.softmax_backward(g.astype(np.float32), x32, 1)
    assert_half_close(grad, expected, dtype, "softmax", grad=True)


HALF_TORCH_INPUTS = [
    item
    for item in HALF_INPUTS
    if item.name in ("random_2d", "random_3d", "special_rows", "special_middle", "masked")
]


def _well_scaled(x) -> bool:
    """torch's 16-bit autograd reuses the rounded forward result (logsumexp's gradient is
    exp(x - lse) with lse rounded to float16): its gradients are only accurate for moderate
    logits, so they are compared only there."""
    x32 = np.asarray(x).astype(np.float32)
    finite = np.abs(x32[np.isfinite(x32)])
    return finite.size == 0 or finite.max() <= 100


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("item", HALF_TORCH_INPUTS, ids=adversarial_ids(HALF_TORCH_INPUTS))
def test_half_dtypes_match_torch(torch, item, name):
    x = item.array
    for args, kwargs in _half_calls(name, item):
        what = f"{name}{args}{kwargs} {x.dtype}"
        got = getattr(fl, name)(x, *args, **kwargs)
        g = upstream(np.shape(got), x.dtype)
        expected, expected_grad = torch_forward_backward(torch, name, x, g, *args, **kwargs)
        got_grad = getattr(fl, name + "_backward")(g, x, *args, **kwargs)
        assert_half_close(got, expected, x.dtype, name, scale=2, what=what)
        if _well_scaled(x):
            assert_half_close(got_grad, expected_grad, x.dtype, name, grad=True, scale=2, what=what)


# ---------------------------------------------------------------------------------------------
# Exact values: the edge-case table (section 11) and sections 1, 2, 10


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("name", SOFTMAX_LIKE)
@pytest.mark.parametrize(
    "row",
    [[1.0, INF, 0.0], [INF, INF, INF], [-INF, -INF, -INF], [0.0, NAN, 1.0], [-INF, INF, 0.0]],
    ids=["+inf", "all+inf", "all-inf", "nan", "-inf,+inf"],
)
def test_softmax_special_rows_are_all_nan(row, name, dtype):
    x = np.array([row, [0.0, 1.0, 2.0]], dtype)
    for dim, view in ((1, x), (0, x.T)):
        result = getattr(fl, name)(view, dim)
        assert result.dtype == dtype
        nan_slice = result[0] if dim == 1 else result[:, 0]
        normal_slice = result[1] if dim == 1 else result[:, 1]
        assert np.isnan(nan_slice).all()
        assert np.isfinite(normal_slice).all()
        grad = getattr(fl, name + "_backward")(np.ones_like(view), view, dim)
        assert np.isnan(grad[0] if dim == 1 else grad[:, 0]).all()


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([-INF, -INF, -INF], -INF),
        ([1.0, INF, 0.0], INF),
        ([-INF, INF, -INF], INF),
        ([0.0, NAN, 1.0], NAN),
        ([NAN, INF, -INF], NAN),
        ([1000.0, 1000.0, -INF], 1000.0 + math.log(2.0)),
        ([-1000.0, -1000.0, -INF], -1000.0 + math.log(2.0)),
    ],
    ids=["all-inf", "+inf", "+inf,-inf", "nan", "nan,+inf", "1000", "-1000"],
)
def test_logsumexp_special_rows(row, expected, dtype):
    x = np.array([row, row], dtype)
    for dim, view in ((1, x), (0, np.ascontiguousarray(x.T))):
        result = fl.logsumexp(view, dim)
        assert result.dtype == dtype
        np.testing.assert_allclose(result, [expected] * 2, rtol=1e-7, atol=0)
        long_view = np.repeat(view, 50_000, axis=dim)  # long rows: the split kernel
        np.testing.assert_allclose(
            fl.logsumexp(long_view, dim), [expected + math.log(50_000)] * 2, rtol=1e-6, atol=0
        )


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_logsumexp_over_empty_dim_is_minus_inf(dtype):
    np.testing.assert_array_equal(fl.logsumexp(np.zeros((2, 0), dtype), 1), [-INF, -INF])
    np.testing.assert_array_equal(fl.logsumexp(np.zeros((0, 3), dtype), 0), [-INF] * 3)
    result = fl.logsumexp(np.zeros((2, 0, 3), dtype), (1, 2), keepdim=True)
    assert result.shape == (2, 1, 1) and result.dtype == dtype
    np.testing.assert_array_equal(result, np.full((2, 1, 1), -INF))
    assert fl.logsumexp(np.zeros((0,), dtype), 0) == -INF
    grad = fl.logsumexp_backward(np.ones(2, dtype), np.zeros((2, 0), dtype), 1)
    assert grad.shape == (2, 0) and grad.dtype == dtype


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_logsumexp_gradient_special_rows(dtype):
    x = np.array([[-INF, 0.0, 1.0], [-INF, -INF, -INF], [INF, 0.0, 1.0]], dtype)
    g = np.array([1.0, 2.0, 3.0], dtype)
    grad = fl.logsumexp_backward(g, x, 1)
    e = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    np.testing.assert_allclose(grad[0], [0.0, e[0], e[1]], rtol=1e-6)
    assert grad[0, 0] == 0.0
    assert np.isnan(grad[1]).all()
    np.testing.assert_array_equal(grad[2], [NAN, 0.0, 0.0])
    strided = fl.logsumexp_backward(g, np.ascontiguousarray(x.T), 0)  # the strided kernel
    np.testing.assert_allclose(strided, grad.T, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_zero_dim_values(dtype):
    x = np.array(2.5, dtype)
    for dim in (0, -1):
        for name, expected in (("softmax", 1.0), ("log_softmax", 0.0), ("logsumexp", 2.5)):
            result = getattr(fl, name)(x, dim)
            assert np.shape(result) == () and result.dtype == dtype
            assert result == expected
            grad = getattr(fl, name + "_backward")(np.array(3.0, dtype), x, dim)
            assert np.shape(grad) == () and grad.dtype == dtype
            assert grad == (3.0 if name == "logsumexp" else 0.0)
    for dim in ((0,), (-1,), 0):
        result = fl.logsumexp(x, dim, keepdim=True)
        assert np.shape(result) == () and result == 2.5
    for value in (INF, -INF):
        assert fl.logsumexp(np.array(value, dtype), 0) == value
    assert np.isnan(fl.logsumexp(np.array(NAN, dtype), 0))


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_softmax_section1_values(dtype):
    x = np.array([1e30, 0.0, -1e30], dtype)
    np.testing.assert_array_equal(fl.softmax(x, 0), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(fl.log_softmax(x, 0), [0.0, -1e30, -2e30], rtol=1e-7)
    g = np.array([1.0, 2.0, 3.0], dtype)
    np.testing.assert_array_equal(fl.softmax_backward(g, x, 0), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(fl.log_softmax_backward(g, x, 0), [-5.0, 2.0, 3.0])
    big = np.full(3, 3.4e38, dtype)
    np.testing.assert_allclose(fl.softmax(big, 0), [1 / 3] * 3, rtol=1e-6)
    one = np.array([[0.3], [-7.0], [1e30]], dtype)
    np.testing.assert_array_equal(fl.softmax(one, 1), np.ones((3, 1)))
    np.testing.assert_array_equal(fl.log_softmax(one, 1), np.zeros((3, 1)))
    assert fl.softmax(np.zeros((2, 0), dtype), 1).shape == (2, 0)


@pytest.mark.parametrize(
    ("dtype", "offset"),
    [(F32, 1e3), (F32, 1e4), (F32, 1e30), (F64, 1e12), (F64, 3.4e38)],
    ids=["f32-1e3", "f32-1e4", "f32-1e30", "f64-1e12", "f64-3.4e38"],
)
@pytest.mark.parametrize("layout", ["rows", "strided"])
def test_large_equal_logits(dtype, offset, layout):
    # x - max is exact for the maximal entries (torch computes (x - m) - log(s)): two equal
    # logits give exactly 1/2 and -log 2 however large they are.
    x = np.full((1, 2), offset, dtype)
    x, dim = (x, 1) if layout == "rows" else (np.ascontiguousarray(x.T), 0)
    half, log_half = np.full(x.shape, 0.5), np.full(x.shape, -math.log(2.0))
    rtol = 1e-6 if dtype == F32 else 1e-14
    np.testing.assert_allclose(fl.softmax(x, dim), half, rtol=rtol, err_msg="softmax")
    np.testing.assert_allclose(fl.log_softmax(x, dim), log_half, rtol=rtol, err_msg="log_softmax")
    g = np.ones(x.shape, dtype)
    np.testing.assert_allclose(
        fl.log_softmax_backward(g, x, dim), 1 - 2 * half, atol=rtol, err_msg="log_softmax grad"
    )


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_logsumexp_backward_where_lse_absorbs_log_n(dtype):
    # torch (section 2): dx = G * exp(x - lse) with the lse it returned. For five equal
    # logits 3.4e38, lse rounds to 3.4e38 (log 5 is absorbed, in float64 too), so torch's
    # gradient is G * exp(0) = G; fastloss.reference does the same.
    x = np.full((1, 5), 3.4e38, dtype)
    g = np.array([1.5], dtype)
    assert fl.logsumexp(x, 1)[0] == x[0, 0]
    expected = reference.logsumexp_backward(_f64(g), _f64(x), 1)
    np.testing.assert_array_equal(expected, np.full((1, 5), 1.5))
    np.testing.assert_allclose(fl.logsumexp_backward(g, x, 1), expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_softmax_gradient_at_minus_inf_entry(dtype):
    x = np.array([-INF, 0.0, 1.0], dtype)
    g = np.array([1.0, 2.0, 3.0], dtype)
    p = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    grad = fl.softmax_backward(g, x, 0)
    np.testing.assert_allclose(grad, [0.0, -0.19661193, 0.19661193], rtol=1e-6)
    assert grad[0] == 0.0
    grad = fl.log_softmax_backward(g, x, 0)
    np.testing.assert_allclose(grad, [1.0, 2 - 6 * p[0], 3 - 6 * p[1]], rtol=1e-6)
    assert grad[0] == 1.0  # the -inf entry gets G, not 0
    np.testing.assert_array_equal(fl.softmax(x, 0)[0], 0.0)
    np.testing.assert_array_equal(fl.log_softmax(x, 0)[0], -INF)


def test_sigmoid_section10_values():
    f32 = np.float32
    np.testing.assert_array_equal(fl.sigmoid(f32([-89.0, -100.0, -INF])), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(fl.sigmoid(f32([16.7, 100.0, INF])), [1.0, 1.0, 1.0])
    assert np.isnan(fl.sigmoid(f32([NAN]))).all()
    assert fl.sigmoid(np.array([-745.0]))[0] == 0.0
    np.testing.assert_array_equal(fl.sigmoid_backward(np.ones(2), np.array([-INF, INF])), 0.0)


def test_sigmoid_subnormal_results():
    # torch (section 10): sigmoid(-88.) in float32 is 6.0546e-39 and sigmoid(-709.) in
    # float64 is 1.2168e-308, both subnormal numbers, not 0.
    np.testing.assert_allclose(fl.sigmoid(np.float32([-88.0])), [6.054601e-39], rtol=1e-3)
    np.testing.assert_allclose(fl.sigmoid(np.array([-709.0])), [1.2168e-308], rtol=1e-4)


def test_logsigmoid_section10_values():
    for dtype in (F32, F64):
        x = np.array([-INF, INF, NAN, 0.0], dtype)
        result = fl.logsigmoid(x)
        assert result.dtype == dtype
        np.testing.assert_array_equal(result[:2], [-INF, 0.0])
        assert np.isnan(result[2])
        np.testing.assert_allclose(result[3], -math.log(2.0), rtol=1e-7)
        grad = fl.logsigmoid_backward(np.ones(4, dtype), x)
        np.testing.assert_array_equal(grad[:2], [1.0, 0.0])
        assert np.isnan(grad[2])
        assert grad[3] == 0.5
    np.testing.assert_allclose(fl.logsigmoid(np.array([-100.0])), [-100.0], rtol=1e-15)


def test_logsigmoid_float32_at_100_is_a_subnormal():
    # torch: logsigmoid(100.) in float32 is -3.92e-44 (section 10), not 0.
    np.testing.assert_allclose(fl.logsigmoid(np.float32([100.0])), [-3.92e-44], rtol=0.05)


# ---------------------------------------------------------------------------------------------
# out=


def _backward_calls(dtype):
    """(name, args after grad_output and input, kwargs, input) for every backward."""
    x2 = upstream((6, 7), dtype, seed=3)
    x3 = upstream((3, 4, 5), dtype, seed=4)
    return [
        ("logsumexp", (1,), {}, x2),
        ("logsumexp", (0,), {"keepdim": True}, x2),
        ("logsumexp", ((0, 2),), {}, x3),
        ("logsumexp", (0,), {}, np.array(1.25, dtype)),
        ("softmax", (1,), {}, x2),
        ("softmax", (1,), {}, x3),
        ("softmax", (0,), {}, np.array(1.25, dtype)),
        ("log_softmax", (-1,), {}, x2),
        ("log_softmax", (0,), {}, x3),
        ("sigmoid", (), {}, x2),
        ("logsigmoid", (), {}, x3),
    ]


def _grad_output(name, args, kwargs, x):
    return upstream(np.shape(getattr(fl, name)(x, *args, **kwargs)), x.dtype, seed=11)


OUT_CALLS = [(dtype, *call) for dtype in (F32, F64) for call in _backward_calls(dtype)]
OUT_IDS = [f"{c[1]}{c[2]}{c[3]}-{c[4].shape}-{c[0]}" for c in OUT_CALLS]


@pytest.mark.parametrize(("dtype", "name", "args", "kwargs", "x"), OUT_CALLS, ids=OUT_IDS)
def test_backward_out(dtype, name, args, kwargs, x):
    backward = getattr(fl, name + "_backward")
    g = _grad_output(name, args, kwargs, x)
    expected = backward(g, x, *args, **kwargs)
    assert expected.shape == x.shape and expected.dtype == dtype

    out = np.full_like(x, 99.0)
    result = backward(g, x, *args, **kwargs, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)

    if x.ndim:
        strided = np.full(x.shape[:-1] + (2 * x.shape[-1],), 99.0, dtype)[..., ::2]
        result = backward(g, x, *args, **kwargs, out=strided)
        assert result is strided
        np.testing.assert_array_equal(strided, expected)

    in_place = x.copy()
    result = backward(g, in_place, *args, **kwargs, out=in_place)
    assert result is in_place
    np.testing.assert_array_equal(in_place, expected)

    if g.shape == x.shape:  # the upstream gradient's memory reused
        g_in_place = g.copy()
        result = backward(g_in_place, x, *args, **kwargs, out=g_in_place)
        assert result is g_in_place
        np.testing.assert_array_equal(g_in_place, expected)


@pytest.mark.parametrize(("dtype", "name", "args", "kwargs", "x"), OUT_CALLS, ids=OUT_IDS)
def test_backward_bad_out(dtype, name, args, kwargs, x):
    backward = getattr(fl, name + "_backward")
    g = _grad_output(name, args, kwargs, x)
    other = F64 if dtype == F32 else F32
    bad_outs = [np.empty(x.shape, other), np.empty(x.shape + (1,), dtype)]
    if x.ndim:
        bad_outs.append(np.empty(x.shape[::-1] if x.shape[::-1] != x.shape else (1,), dtype))
    readonly = np.empty_like(x)
    readonly.flags.writeable = False
    bad_outs.append(readonly)
    for out in bad_outs:
        with pytest.raises(ValueError, match="out"):
            backward(g, x, *args, **kwargs, out=out)
    with pytest.raises(TypeError):
        backward(g, x, *args, **kwargs, out=x.tolist())


@pytest.mark.parametrize("name", BACKWARDS)
def test_backward_out_is_keyword_only(name):
    out = inspect.signature(getattr(fl, name)).parameters["out"]
    assert out.kind is inspect.Parameter.KEYWORD_ONLY and out.default is None


def test_softmax_backward_out_has_the_input_dtype_with_dtype_argument():
    x = upstream((4, 5), F32)
    g = upstream((4, 5), F64)
    expected = fl.softmax_backward(g, x, 1, dtype=np.float64)
    assert expected.dtype == F32
    out = np.empty((4, 5), F32)
    assert fl.softmax_backward(g, x, 1, dtype=np.float64, out=out) is out
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError):
        fl.softmax_backward(g, x, 1, dtype=np.float64, out=np.empty((4, 5), F64))


# ---------------------------------------------------------------------------------------------
# softmax's dim and dtype arguments


@pytest.mark.parametrize("name", SOFTMAX_LIKE)
@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4])
def test_implicit_dim(name, ndim):
    x = upstream((3, 4, 2, 5)[:ndim], F64)
    implicit = 0 if ndim in (0, 1, 3) else 1
    message = f"Implicit dimension choice for {name} has been deprecated"
    with pytest.warns(UserWarning, match=message):
        result = getattr(fl, name)(x)
    np.testing.assert_array_equal(result, getattr(fl, name)(x, implicit))
    g = upstream(x.shape, F64)
    with pytest.warns(UserWarning, match=message):
        grad = getattr(fl, name + "_backward")(g, x)
    np.testing.assert_array_equal(grad, getattr(fl, name + "_backward")(g, x, implicit))


@pytest.mark.parametrize("name", SOFTMAX_LIKE)
def test_implicit_dim_warning_points_at_the_caller(name):
    # As torch's F.softmax with the default _stacklevel=3: the warning names the caller's line.
    with pytest.warns(UserWarning, match="Implicit dimension") as record:
        getattr(fl, name)(np.zeros((2, 3)))
    assert record[0].filename == __file__, record[0].filename


def test_implicit_dim_warning_location_matches_torch(torch):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        torch.nn.functional.softmax(torch.zeros(2, 3))
        fl.softmax(np.zeros((2, 3)))
    assert [r.filename for r in record] == [__file__, __file__]


@pytest.mark.parametrize("name", SOFTMAX_LIKE)
@pytest.mark.parametrize(("source", "target"), [(F32, F64), (F64, F32), (F16, F32), (BF16, F64)])
def test_dtype_argument_casts_first(name, source, target):
    x = upstream((4, 6), source)
    forward, backward = getattr(fl, name), getattr(fl, name + "_backward")
    result = forward(x, 1, dtype=target)
    assert result.dtype == target
    np.testing.assert_array_equal(result, forward(x.astype(target), 1))
    np.testing.assert_array_equal(forward(x, 1, 3, target), result)  # 4th positional is dtype
    g = upstream((4, 6), target)
    grad = backward(g, x, 1, dtype=target)
    assert grad.dtype == source  # the gradient flowing back has the input's dtype
    # Computed in the less precise of the two dtypes: compare at its tolerance.
    expected = getattr(reference, name + "_backward")(_f64(g), _f64(x), 1)
    if source in (F16, BF16):
        assert_half_close(grad, expected.astype(np.float32), source, name, grad=True)
    else:
        assert_close(grad.astype(F32), expected, F32, 6, grad=True)


@pytest.mark.parametrize("name", SOFTMAX_LIKE)
def test_integer_input_with_dtype(name):
    x = np.array([[1, 2, 3], [0, -1, 5]])
    result = getattr(fl, name)(x, 1, dtype=np.float32)
    assert result.dtype == F32
    np.testing.assert_array_equal(result, getattr(fl, name)(x.astype(np.float32), 1))
    grad = getattr(fl, name + "_backward")(np.ones((2, 3), F32), x, 1, dtype=np.float32)
    assert grad.dtype == F32


@pytest.mark.parametrize("name", ["logsumexp", "sigmoid"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_integer_and_bool_input_promote_to_float32(name, dtype):
    x = np.array([[1, 0, 1], [0, 0, 1]]).astype(dtype)
    args = (1,) if name == "logsumexp" else ()
    result = getattr(fl, name)(x, *args)
    assert result.dtype == F32
    expected = getattr(reference, name)(x.astype(np.float64), *args)
    assert_close(result, expected, F32, 3)
    g = np.ones(result.shape, F32)
    grad = getattr(fl, name + "_backward")(g, x, *args)
    assert grad.dtype == F32 and grad.shape == x.shape
    expected = getattr(reference, name + "_backward")(_f64(g), _f64(x), *args)
    assert_close(grad, expected, F32, 3, grad=True)
    np.testing.assert_allclose(getattr(fl, name)(x.tolist(), *args), result)  # a list


def test_array_likes_are_accepted(torch):
    nested = [[0.5, 1.0], [2.0, -1.0]]
    np.testing.assert_array_equal(fl.softmax(nested, 1), fl.softmax(np.array(nested), 1))
    t = torch.tensor(nested, dtype=torch.float32)
    result = fl.log_softmax(t, 1)
    assert isinstance(result, np.ndarray) and result.dtype == F32
    np.testing.assert_array_equal(result, fl.log_softmax(np.array(nested, np.float32), 1))


def test_tensor_requiring_grad_is_accepted(torch):
    # fastloss._arrays.as_array says it accepts "CPU tensors that refuse __array__ with grad".
    t = torch.tensor([[0.5, 1.0], [2.0, -1.0]], requires_grad=True)
    result = fl.logsumexp(t, (0, 1))
    assert result.dtype == F32
    np.testing.assert_allclose(result, torch.logsumexp(t, (0, 1)).detach().numpy(), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad arguments


X2 = np.zeros((2, 3))


def _all_calls(dim):
    """Every function taking a dim, called on X2 with ``dim``, forward and backward."""
    g_lse = np.zeros(2)
    return {
        "logsumexp": lambda: fl.logsumexp(X2, dim),
        "logsumexp_backward": lambda: fl.logsumexp_backward(g_lse, X2, dim),
        "softmax": lambda: fl.softmax(X2, dim),
        "softmax_backward": lambda: fl.softmax_backward(X2, X2, dim),
        "log_softmax": lambda: fl.log_softmax(X2, dim),
        "log_softmax_backward": lambda: fl.log_softmax_backward(X2, X2, dim),
    }


@pytest.mark.parametrize("dim", [2, -3, 100])
@pytest.mark.parametrize("name", list(_all_calls(0)))
def test_dim_out_of_range_raises_index_error(name, dim):
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range"):
        _all_calls(dim)[name]()


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_dim_out_of_range_for_zero_dim_input(name):
    with pytest.raises(IndexError, match=r"\[-1, 0\], but got 1"):
        getattr(fl, name)(np.array(1.0), 1)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmax_backward"])
@pytest.mark.parametrize("dim", [(0,), [1], (0, 1), 1.0, "1"])
def test_softmax_dim_must_be_an_int(name, dim):
    call = getattr(fl, name)
    with pytest.raises(TypeError):
        call(X2, X2, dim) if name.endswith("_backward") else call(X2, dim)


def test_softmax_accepts_numpy_integer_dim():
    np.testing.assert_array_equal(fl.softmax(X2, np.int64(1)), fl.softmax(X2, 1))
    np.testing.assert_array_equal(fl.logsumexp(X2, (np.int32(1),)), fl.logsumexp(X2, 1))


def test_logsumexp_dim_none_or_missing_raises_type_error():
    with pytest.raises(TypeError):
        fl.logsumexp(X2, None)
    with pytest.raises(TypeError):
        fl.logsumexp(X2)
    with pytest.raises(TypeError):
        fl.logsumexp_backward(np.zeros(2), X2, None)


@pytest.mark.parametrize("dim", [(0, 0), (1, -1), [0, 1, 0]])
def test_logsumexp_repeated_dim_raises_value_error(dim):
    with pytest.raises(ValueError, match="appears multiple times"):
        fl.logsumexp(X2, dim)
    with pytest.raises(ValueError, match="appears multiple times"):
        fl.logsumexp_backward(np.zeros(()), X2, dim)


def test_logsumexp_empty_dim_tuple_raises_value_error():
    # torch raises a RuntimeError (a torch bug, section 11); fastloss maps it to ValueError.
    with pytest.raises(ValueError):
        fl.logsumexp(X2, ())


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsigmoid"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex64])
def test_non_float_input_raises_type_error(name, dtype):
    x = np.ones((2, 3), dtype)
    args = (1,) if name != "logsigmoid" else ()
    for call in (
        lambda: getattr(fl, name)(x, *args),
        lambda: getattr(fl, name + "_backward")(np.ones((2, 3)), x, *args),
    ):
        with pytest.raises(TypeError) as info:
            call()
        assert isinstance(info.value, NotImplementedError)


@pytest.mark.parametrize("name", SOFTMAX_LIKE)
def test_non_float_dtype_argument_raises(name):
    with pytest.raises(NotImplementedError):
        getattr(fl, name)(X2, 1, dtype=np.int64)
    with pytest.raises(TypeError):
        getattr(fl, name)(X2, 1, dtype=np.int64)


BAD_GRAD_CALLS = {
    "logsumexp": lambda g: fl.logsumexp_backward(g, X2, 1),
    "logsumexp_keepdim": lambda g: fl.logsumexp_backward(g, X2, 1, keepdim=True),
    "logsumexp_tuple": lambda g: fl.logsumexp_backward(g, X2, (0, 1)),
    "softmax": lambda g: fl.softmax_backward(g, X2, 1),
    "log_softmax": lambda g: fl.log_softmax_backward(g, X2, 0),
    "sigmoid": lambda g: fl.sigmoid_backward(g, X2),
    "logsigmoid": lambda g: fl.logsigmoid_backward(g, X2),
}


@pytest.mark.parametrize("case", list(BAD_GRAD_CALLS))
@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 1), (6,), (1, 3), (2, 1, 1)])
def test_grad_output_of_the_wrong_shape_raises_value_error(case, shape):
    call = BAD_GRAD_CALLS[case]
    right = {"logsumexp": (2,), "logsumexp_keepdim": (2, 1), "logsumexp_tuple": ()}
    if shape == right.get(case, (2, 3)):
        pytest.skip("the right shape")
    with pytest.raises(ValueError, match="grad_output"):
        call(np.ones(shape))


# ---------------------------------------------------------------------------------------------
# Threads and the parallel path


def _thread_inputs():
    rng = np.random.default_rng(5)
    rows = (rng.standard_normal((256, 200)) * 3).astype(np.float32)
    rows[3] = -INF
    rows[7, 5] = NAN
    rows[9, 1] = INF
    long_rows = (rng.standard_normal((2, 140_000)) * 3).astype(np.float64)
    long_rows[1, 1000] = 40.0
    # 3 long rows: fewer than 2 x threads with 2 threads (chunks of rows in parallel), not
    # with 1 (one row per thread); this seed gives a 1-ulp difference between the two.
    few_long_rows = np.random.default_rng(12).standard_normal((3, 140_000)) * 3
    return [
        ("few_long_rows_f64", few_long_rows, -1),
        ("rows_f32_dim-1", rows, -1),
        ("rows_f32_dim0", rows, 0),
        ("rows_f64_3d_dim1", rows.astype(np.float64).reshape(16, 16, 200), 1),
        ("long_rows_f64", long_rows, -1),
        ("long_row_f32", long_rows[:1].astype(np.float32), -1),
    ]


def _all_results(x, dim):
    """Every function and backward of the family on ``x`` (as a dict of arrays)."""
    g = upstream(x.shape, x.dtype)
    results = {}
    for name in SOFTMAX_LIKE:
        results[name] = getattr(fl, name)(x, dim)
        results[name + "_backward"] = getattr(fl, name + "_backward")(g, x, dim)
    lse = fl.logsumexp(x, dim)
    results["logsumexp"] = lse
    results["logsumexp_backward"] = fl.logsumexp_backward(upstream(lse.shape, x.dtype), x, dim)
    for name in ELEMENTWISE:
        results[name] = getattr(fl, name)(x)
        results[name + "_backward"] = getattr(fl, name + "_backward")(g, x)
    return results


THREAD_INPUTS = _thread_inputs()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize(("label", "x", "dim"), THREAD_INPUTS, ids=[t[0] for t in THREAD_INPUTS])
def test_one_and_two_threads_agree_bitwise(label, x, dim):
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _all_results(x, dim)
        numba.set_num_threads(2)
        two = _all_results(x, dim)
    finally:
        numba.set_num_threads(previous)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=f"{label} {name}")


@pytest.mark.parametrize(("label", "x", "dim"), THREAD_INPUTS, ids=[t[0] for t in THREAD_INPUTS])
def test_parallel_and_serial_paths_agree(monkeypatch, label, x, dim):
    assert x.size >= _config.PARALLEL_MIN_ELEMENTS  # the parallel twins run
    parallel = _all_results(x, dim)
    monkeypatch.setattr(_config, "PARALLEL_MIN_ELEMENTS", np.iinfo(np.int64).max)
    serial = _all_results(x, dim)  # now every kernel runs its serial twin
    for name in parallel:
        np.testing.assert_array_equal(parallel[name], serial[name], err_msg=f"{label} {name}")


# ---------------------------------------------------------------------------------------------
# The registry


# The softmax family's cases (the losses have their own test modules).
REGISTRY_CALLS = [
    (case_name, dtype, shape, kwargs)
    for case_name, case in _registry.CASES.items()
    if case_name in FAMILY
    for dtype in (F32, F64)
    for shape, kwargs in (((5, 9), {}),) + case.bench_shapes
]


def _small(shape):
    return tuple(min(n, 9) for n in shape)


# Public names that are not an API.md function with a NumPy reference: an exception class,
# thread controls, the mergeable lse state, and the fused linear layer (tested against the
# composition in tests/test_linear_ce.py).
NOT_REGISTRY_FUNCTIONS = {
    "TargetOutOfRangeError",
    "set_num_threads",
    "get_num_threads",
    "num_threads",
    "logsumexp_state",
    "merge_logsumexp_states",
    "logsumexp_from_state",
    "LogSumExpState",
    "linear_cross_entropy",
}


def test_registry_covers_the_public_family():
    forwards = {n for n in fl.__all__ if not n.endswith(("_backward", "_with_grad"))}
    assert set(FAMILY) <= forwards - NOT_REGISTRY_FUNCTIONS <= set(_registry.CASES)
    assert NOT_REGISTRY_FUNCTIONS <= set(fl.__all__)
    for name in FAMILY:
        case = _registry.CASES[name]
        assert case.fastloss is getattr(fl, name)
        assert case.fastloss_backward is getattr(fl, name + "_backward")
        assert case.reference is getattr(reference, name)


@pytest.mark.parametrize(
    ("case_name", "dtype", "shape", "kwargs"),
    REGISTRY_CALLS,
    ids=[f"{c}-{d}-{'x'.join(map(str, s))}-{k}" for c, d, s, k in REGISTRY_CALLS],
)
def test_registry_cases(torch, case_name, dtype, shape, kwargs):
    case = _registry.CASES[case_name]
    rng = np.random.default_rng(17)
    args, kwargs = _registry.with_bench_kwargs(case, _small(shape), dtype, rng, kwargs)
    x = args[0]
    length = reduced_length(x.shape, kwargs["dim"]) if "dim" in kwargs else 1
    got = case.fastloss(*args, **kwargs)
    ref = case.reference(*(_f64(a) for a in args), **kwargs)
    assert_close(got, ref, dtype, length, what=case_name)
    g = upstream(np.shape(got), dtype)
    got_grad = case.fastloss_backward(g, *args, **kwargs)
    ref_grad = case.reference_backward(_f64(g), *(_f64(a) for a in args), **kwargs)
    assert_close(got_grad, ref_grad, dtype, length, grad=True, what=case_name + " backward")
    expected, expected_grad = torch_forward_backward(torch, case_name, x, g, **kwargs)
    assert_close(got, expected, dtype, length, scale=2, what=case_name + " vs torch")
    assert_close(got_grad, expected_grad, dtype, length, grad=True, scale=2, what=case_name)


# ---------------------------------------------------------------------------------------------
# Properties (scipy's logsumexp tests): translation invariance, normalization


_finite_logits = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
    elements=st.floats(-50, 50),
)


@given(x=_finite_logits, shift=st.floats(-1e3, 1e3), data=st.data())
def test_translation_invariance_and_normalization(x, shift, data):
    dim = data.draw(st.sampled_from(valid_dims(x.ndim)))
    mask = data.draw(hnp.arrays(np.bool_, x.shape))
    masked = np.where(mask, -INF, x)
    np.put_along_axis(masked, np.zeros_like(np.take(masked, [0], axis=dim), dtype=int), 0.0, dim)
    p = fl.softmax(masked, dim)
    np.testing.assert_allclose(p.sum(axis=dim), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p, fl.softmax(masked + shift, dim), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(
        fl.logsumexp(masked + shift, dim), fl.logsumexp(masked, dim) + shift, rtol=1e-12, atol=1e-9
    )
    lsm = fl.log_softmax(masked, dim)
    np.testing.assert_array_equal(lsm == -INF, mask & (masked == -INF))
    assert_close(lsm, reference.log_softmax(masked, dim), F64, x.shape[dim])


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (32, 10), (5, 1000), (3, 140000)])
def test_fast_path_matches_general_path(name, dtype, shape):
    """Plain C-contiguous (N, C) rows over the last dim skip the general path's checks and
    views; the general path (here taken by a Fortran-ordered copy) gives the same bits."""
    x = (np.random.default_rng(shape[1]).standard_normal(shape) * 5).astype(dtype)
    x[0, 0], x[-1, :2] = -np.inf, np.nan  # masked and NaN rows take the fast path too
    func = getattr(fl, name)
    for dim in (1, -1):
        got = func(x, dim)
        want = func(np.asfortranarray(x), dim)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == x.dtype and got.flags.c_contiguous
    got, ref = _call_both(name, x, 1)
    assert_close(got, ref, x.dtype, shape[1], what=f"{name} fast path")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_kernel_exp_is_within_one_ulp_and_exact_at_the_edges(dtype):
    """The vectorized exp every kernel sums and stores (``exp_sum`` / ``exp_out``), against a
    float64 (float32) or long double (float64) exp, over its range x <= 0 and in vectorized
    loops, as the kernels run it (``stored`` is exp_out in a loop of its own)."""
    from fastloss._math import exp_out, exp_sum

    @numba.njit
    def run(x, summed, kept, stored):
        for j in range(x.shape[0]):
            summed[j] = exp_sum(x[j])
            kept[j] = exp_out(x[j])
        for j in range(x.shape[0]):
            stored[j] = exp_out(x[j])

    lo = -87.3 if dtype == np.float32 else -708.3
    rng = np.random.default_rng(11)
    x = np.concatenate(
        [rng.uniform(lo, 0.0, 2_000_000), -np.geomspace(1e-30, 2.0, 200_001),
         np.linspace(lo, 0.0, 100_001)]
    ).astype(dtype)
    summed, kept, stored = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    run(x, summed, kept, stored)
    if dtype == np.float32:
        want = np.exp(x.astype(np.float64))
    else:
        want = np.exp(x.astype(np.longdouble))
    ulp = np.spacing(want.astype(dtype)).astype(np.longdouble)
    for got in (summed, kept, stored):
        error = np.abs(got.astype(np.longdouble) - want) / ulp
        assert float(error.max()) <= 1.0
    np.testing.assert_array_equal(kept, stored)
    edges = np.array([0.0, -0.0, -np.inf, np.nan, 2 * lo, -1e30], dtype)
    summed, kept, stored = np.empty_like(edges), np.empty_like(edges), np.empty_like(edges)
    run(edges, summed, kept, stored)
    np.testing.assert_array_equal(kept[:4], [1.0, 1.0, 0.0, np.nan])
    np.testing.assert_array_equal(kept[4:], [0.0, 0.0])
    np.testing.assert_array_equal(stored, kept)
    assert np.all((summed[2:3] > 0) & (summed[2:3] < 1e-37))  # -inf adds a negligible term
    assert summed[0] == 1.0 and np.isnan(summed[3])


def _lane_order_sum(values):
    """The order _math.lane_sum_of documents, one NumPy addition at a time in the values'
    dtype: term j goes to running sum j mod L (L = 2048 bits / the dtype's bits), and the
    upper half of the running sums is added to the lower half until one is left."""
    acc = np.zeros(2048 // (8 * values.dtype.itemsize), values.dtype)
    for j, v in enumerate(values):
        acc[j % acc.size] += v
    while acc.size > 1:
        acc = acc[: acc.size // 2] + acc[acc.size // 2 :]
    return acc[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_row_sums_follow_the_documented_order_bitwise(dtype):
    """Every row sum of the kernels goes through lane_sum_of; its order is the code's, not
    the compiler's, so a plain Python loop in that order gives the same bits. Terms of mixed
    signs and magnitudes, so that any other order would round differently."""
    from fastloss._math import const, loaded_sum

    @numba.njit
    def total(values, n):
        return loaded_sum((values,), n, const(values, 0.0))

    rng = np.random.default_rng(12)
    for n in (0, 1, 3, 31, 32, 33, 63, 64, 65, 200, 512):
        values = (rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 4, n)).astype(dtype)
        got = dtype(total(values, n))  # Numba returns a Python float: exact for either dtype
        assert got.tobytes() == _lane_order_sum(values).tobytes(), n
