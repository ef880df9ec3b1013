"""Conformance of kl_div, binary_cross_entropy, binary_cross_entropy_with_logits, mse_loss and
multi_margin_loss (forward, ``_backward`` and ``_with_grad``).

Every function is checked

* against ``fastloss.reference`` run in float64 on the upcast inputs, with the tolerances of
  shared/reference/torch-semantics.md section 12, over the option space (reduction, legacy
  size_average/reduce, kl_div's 'batchmean' and log_target, the weight and pos_weight shapes,
  multi_margin's p, margin and weight), every rank the loss takes (0-d to 4-d for the
  elementwise losses; (N, C), (C,) and 0-d for multi_margin), float32 and float64 and
  non-contiguous layouts: the full product on tiny shapes, a sample on bigger ones;
* against torch (forward values and autograd gradients for a random upstream gradient);
* on broadcasting (kl_div, mse_loss), the special values of sections 5-9 and 11, empty inputs;
* for errors, dtype rules (integer and mixed inputs, float16/bfloat16), ``out=`` (including in
  place), input immutability and thread-count independence;
* by the relations between losses that the seed documents state (cross-entropy = entropy +
  KL divergence, BCE on sigmoid = BCE with logits, BCE = two-class cross-entropy, binary hinge
  = two-class multi-margin) and by property tests (hypothesis).

``_with_grad`` must return exactly (bitwise) the forward's loss and the backward's gradient;
``grad_output=None`` means 1 ('mean'/'sum') or ones ('none').
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
import zlib

import ml_dtypes
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastloss as fl
from fastloss import reference

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
INF, NAN = np.inf, np.nan

KL, BCE, BCE_LOGITS, MSE, MARGIN = (
    "kl_div",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "multi_margin_loss",
)
LOSSES = (KL, BCE, BCE_LOGITS, MSE, MARGIN)
ELEMENTWISE = (KL, BCE, BCE_LOGITS, MSE)
REDUCTIONS = ("none", "mean", "sum")
TARGET_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8)

# One tiny shape per rank for the elementwise losses.
RANK_SHAPES = {0: (), 1: (5,), 2: (4, 5), 3: (3, 4, 2), 4: (2, 3, 2, 2)}
# multi_margin_loss: (input shape, target shape).
MARGIN_SHAPES = {
    "NxC": ((4, 5), (4,)),
    "C-target0d": ((5,), ()),
    "C-target1": ((5,), (1,)),
    "0d": ((), ()),
}
LAYOUTS = ("contiguous", "strided")

KL_MEAN_WARNING = (
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release."
)
BROADCAST_WARNING = "Using a target size"


def shape_id(shape) -> str:
    return "x".join(map(str, shape)) if len(shape) else "0d"


def reductions_of(func) -> tuple[str, ...]:
    return REDUCTIONS + (("batchmean",) if func == KL else ())


@contextlib.contextmanager
def expected_warnings_ignored():
    """Silence the warnings torch emits on purpose (kl_div 'mean', mse_loss broadcasting);
    dedicated tests check them. Everything else still fails the test (filterwarnings=error)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"reduction: 'mean' divides", category=UserWarning
        )
        warnings.filterwarnings("ignore", message=BROADCAST_WARNING, category=UserWarning)
        yield


# ---------------------------------------------------------------------------------------------
# Inputs


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def as_dtype(a, dtype) -> np.ndarray:
    return np.asarray(np.asarray(a).astype(dtype))


def elementwise_inputs(func, rng, shape, dtype, log_target=False):
    """(input, target) of ``shape`` in ``dtype``, in each loss's natural domain."""
    if func == KL:
        x = rng.standard_normal(shape) - 1.0
        if log_target:
            t = np.log(rng.uniform(0.05, 1.0, shape))
        else:
            t = np.asarray(rng.uniform(0.0, 1.0, shape))
            t[rng.random(shape) < 0.2] = 0.0  # xlogy(0, 0) = 0
    elif func == BCE:
        x = rng.uniform(0.02, 0.98, shape)
        t = np.asarray(rng.random(shape))
        u = rng.random(shape)
        t[u < 0.15] = 0.0
        t[u > 0.85] = 1.0
    elif func == BCE_LOGITS:
        x = rng.standard_normal(shape) * 3
        t = np.asarray(rng.random(shape))
        t[rng.random(shape) < 0.2] = 1.0
    elif func == MSE:
        x = rng.standard_normal(shape) * 2
        t = rng.standard_normal(shape)
    else:
        raise AssertionError(func)
    return as_dtype(x, dtype), as_dtype(t, dtype)


def margin_inputs(rng, shape, target_shape, dtype):
    x = as_dtype(rng.standard_normal(shape), dtype)
    classes = shape[-1] if len(shape) else 1
    t = np.asarray(rng.integers(0, classes, target_shape), dtype=np.int64)
    return x, t


def weight_kinds(shape) -> dict[str, tuple[int, ...]]:
    """Weight shapes that broadcast to ``shape`` without enlarging it (distinct shapes only):
    full, per class (C,) (the last dim), per row (N, 1, ...) and 0-d."""
    kinds = {"full": tuple(shape)}
    if len(shape) >= 1:
        kinds["per_class"] = tuple(shape[-1:])
    if len(shape) >= 2:
        kinds["per_row"] = (shape[0],) + (1,) * (len(shape) - 1)
    kinds["0d"] = ()
    unique, seen = {}, set()
    for name, s in kinds.items():
        if s not in seen:
            unique[name] = s
            seen.add(s)
    return unique


def positive(rng, shape, dtype, low=0.5, high=2.0) -> np.ndarray:
    return as_dtype(rng.uniform(low, high, shape), dtype)


def strided(a, kind: int = 0) -> np.ndarray:
    """The same values in a non-contiguous layout (a step slice, reversed or Fortran order)."""
    a = np.asarray(a)
    if a.ndim == 0 or a.size <= 1:
        return a
    kind %= 3 if a.ndim >= 2 else 2
    view = None
    if kind == 1:
        view = np.flip(np.flip(a).copy())
    elif kind == 2:
        view = np.asfortranarray(a)
    if view is None or view.flags.c_contiguous:  # kind 0, or Fortran order of an (N, 1)
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        view = wide[..., ::2]
    np.testing.assert_array_equal(view, a)
    return view


def upstream(shape, dtype, rng=None) -> np.ndarray:
    """A random upstream gradient of ``shape`` in ``dtype``."""
    rng = _rng("upstream", tuple(shape)) if rng is None else rng
    return as_dtype(rng.standard_normal(shape), dtype)


def option_grid(func, shape):
    """Every combination of the options of ``func`` for an input of ``shape`` (weights are
    named by kind: resolved to arrays by ``make_case``)."""
    reductions = reductions_of(func)
    kinds = (None, *weight_kinds(shape))
    if func == KL:
        return [{"reduction": r, "log_target": lt} for lt in (False, True) for r in reductions]
    if func == BCE:
        return [{"reduction": r, "weight": w} for w in kinds for r in reductions]
    if func == BCE_LOGITS:
        return [
            {"reduction": r, "weight": w, "pos_weight": pw}
            for w, pw in itertools.product(kinds, kinds)
            for r in reductions
        ]
    if func == MSE:
        return [{"reduction": r, "weight": w} for w in (None, "full") for r in reductions]
    if func == MARGIN:
        return [
            {"reduction": r, "p": p, "margin": m, "weight": w}
            for p, m, w in itertools.product(
                (1, 2, 2.0, True), (1, 0, -0.5, 2.5), (None, "per_class")
            )
            for r in reductions
        ]
    raise AssertionError(func)


def make_case(func, shape, dtype, layout, options, target_shape=None, key=()):
    """(input, target, kwargs) for one configuration."""
    rng = _rng(func, shape, str(dtype), layout, repr(options), key)
    if func == MARGIN:
        x, t = margin_inputs(rng, shape, target_shape, dtype)
        weight_shapes = {"per_class": shape[-1:] if len(shape) else (1,)}
    else:
        x, t = elementwise_inputs(func, rng, shape, dtype, options.get("log_target", False))
        weight_shapes = weight_kinds(shape)
    kwargs = {}
    for name, value in options.items():
        if name in ("weight", "pos_weight"):
            if value is not None:
                kwargs[name] = positive(rng, weight_shapes[value], dtype, 0.5, 3.0)
        else:
            kwargs[name] = value
    if layout == "strided":
        x, t = strided(x, len(shape)), strided(t, len(shape) + 1)
        for name in ("weight", "pos_weight"):
            if name in kwargs:
                kwargs[name] = strided(kwargs[name], 1)
    return x, t, kwargs


# ---------------------------------------------------------------------------------------------
# Comparison machinery


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def _floating_dtype(a) -> np.dtype:
    """The dtype an operand computes in: integers and bools are float32 (torch's default)."""
    dtype = np.asarray(a).dtype
    return dtype if dtype.kind == "f" or dtype == BF16 else F32


def result_dtype(func, x, t) -> np.dtype:
    """The loss dtype (API.md and torch-semantics.md): the input's, promoted with the target's
    for kl_div, mse_loss and binary_cross_entropy; the target's for BCE with logits (torch's
    quirk) when it is floating."""
    dx = _floating_dtype(x)
    if func == MARGIN:
        return dx
    t_dtype = np.asarray(t).dtype
    if t_dtype.kind not in "f" and t_dtype != BF16:  # an integer target takes input's dtype
        return dx
    if func == BCE_LOGITS and np.asarray(x).dtype.kind == "f":
        return t_dtype
    if dx == t_dtype:
        return dx
    return np.result_type(dx, t_dtype)


def grad_dtype(x) -> np.dtype:
    return _floating_dtype(x)


def tolerances(dtype, *, scalar=False, classes=1) -> tuple[float, float]:
    """(rtol, atol) against the float64 reference (section 12)."""
    dtype = np.dtype(dtype)
    if dtype == F64:
        return 1e-10, 1e-12
    if dtype == F16:
        return 1e-2, 1e-2
    if dtype == BF16:
        return 3e-2, 1e-1
    tol = max(2e-5, 1e-8 * classes)
    return (1e-5 if scalar else tol), tol


def _assert_specials(got64, expected, what):
    np.testing.assert_array_equal(np.isnan(got64), np.isnan(expected), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(np.isinf(got64), np.isinf(expected), err_msg=f"{what}: inf")
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(got64[infinite], expected[infinite], err_msg=f"{what}: inf sign")


def assert_close(got, ref, dtype, *, grad=False, scale=1.0, classes=1, what=""):
    """``got`` (of ``dtype``) against ``ref`` with the section 12 tolerances.

    Shapes and dtypes must match; NaN and inf positions must match exactly (after rounding
    ``ref`` to ``dtype``). float64: rtol 1e-10 / atol 1e-12. float32: forward rtol = atol =
    2e-5 (scalar reductions rtol 1e-5), gradients normwise max|a - ref| <= 1e-5 max|ref|.
    float16 / bfloat16: rtol/atol 1e-2 / 3e-2, 1e-1, elementwise. ``scale`` multiplies the
    tolerances (2 when ``ref`` is torch's float32 result).
    """
    dtype = np.dtype(dtype)
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype} != {dtype}"
    with np.errstate(all="ignore"):
        got64, ref64 = _f64(got), _f64(ref)
        expected = _f64(ref64.astype(dtype))
        _assert_specials(got64, expected, what)
        finite = np.isfinite(expected)
        if not finite.any():
            return
        a, r = got64[finite], ref64[finite]
        if grad and dtype == F32:
            error = np.max(np.abs(a - r))
            bound = scale * max(1e-5, 1e-8 * classes) * np.max(np.abs(r))
            assert error <= bound, f"{what}: normwise error {error:.3g} > {bound:.3g}"
        else:
            rtol, atol = tolerances(dtype, scalar=got.shape == () and not grad, classes=classes)
            np.testing.assert_allclose(a, r, rtol=scale * rtol, atol=scale * atol, err_msg=what)


def kwargs_repr(kwargs) -> str:
    return str(
        {
            k: (v if not isinstance(v, np.ndarray) else f"array{list(v.shape)}")
            for k, v in kwargs.items()
        }
    )


def ones_like_loss(loss) -> np.ndarray | float:
    loss = np.asarray(loss)
    return np.ones(loss.shape, loss.dtype) if loss.ndim else 1.0


def fastloss_all(func, x, t, g, **kwargs):
    """fastloss's forward, backward and fused results; checks that the fused ones are the same.

    ``_with_grad(grad_output=g)`` must give the forward's loss and ``backward(g)`` exactly
    (bitwise, NaN positions equal); ``_with_grad()`` likewise with g = 1 or ones.
    """
    with expected_warnings_ignored():
        loss = np.asarray(getattr(fl, func)(x, t, **kwargs))
        grad = getattr(fl, func + "_backward")(g, x, t, **kwargs)
        fused_loss, fused_grad = getattr(fl, func + "_with_grad")(x, t, grad_output=g, **kwargs)
        default_loss, default_grad = getattr(fl, func + "_with_grad")(x, t, **kwargs)
        one_grad = getattr(fl, func + "_backward")(ones_like_loss(loss), x, t, **kwargs)
    what = f"{func} {kwargs_repr(kwargs)}"
    for got, expected, name in (
        (fused_loss, loss, "_with_grad loss"),
        (fused_grad, grad, "_with_grad grad"),
        (default_loss, loss, "_with_grad(grad_output=None) loss"),
        (default_grad, one_grad, "_with_grad(grad_output=None) grad vs backward(1)"),
    ):
        got = np.asarray(got)
        np.testing.assert_array_equal(got, expected, err_msg=f"{what}: {name}")
        assert got.dtype == np.asarray(expected).dtype, f"{what}: {name} dtype"
        assert got.shape == np.shape(expected), f"{what}: {name} shape"
    for g_ in (grad, fused_grad):  # API.md: 0-d results may be NumPy scalars
        assert isinstance(g_, np.ndarray) or (np.ndim(g_) == 0 and isinstance(g_, np.generic)), what
    return loss, np.asarray(grad)


def _ref_kwargs(kwargs):
    out = dict(kwargs)
    for name in ("weight", "pos_weight"):
        if out.get(name) is not None:
            out[name] = _f64(out[name])
    return out


def reference_all(func, x, t, g, **kwargs):
    """The float64 oracle on the upcast inputs (integer class targets stay integers)."""
    t = np.asarray(t)
    t = t if func == MARGIN else _f64(t)
    kwargs = _ref_kwargs(kwargs)
    loss = getattr(reference, func)(_f64(x), t, **kwargs)
    grad = getattr(reference, func + "_backward")(_f64(g), _f64(x), t, **kwargs)
    return np.asarray(loss), np.asarray(grad)


def classes_of(func, x) -> int:
    return int(np.shape(x)[-1]) if func == MARGIN and np.ndim(x) else 1


def check_reference(func, x, t, g=None, *, what="", **kwargs):
    """fastloss against the float64 reference; returns fastloss's (loss, grad)."""
    x, t = np.asarray(x), np.asarray(t)
    ref_loss = np.asarray(
        getattr(reference, func)(_f64(x), t if func == MARGIN else _f64(t), **_ref_kwargs(kwargs))
    )
    rdtype, gdtype = result_dtype(func, x, t), grad_dtype(x)
    if g is None:
        g = upstream(ref_loss.shape, rdtype)
    loss, grad = fastloss_all(func, x, t, g, **kwargs)
    ref_loss, ref_grad = reference_all(func, x, t, g, **kwargs)
    what = f"{func} {what} {kwargs_repr(kwargs)}"
    classes = classes_of(func, x)
    assert_close(loss, ref_loss, rdtype, classes=classes, what=what)
    assert_close(grad, ref_grad, gdtype, grad=True, classes=classes, what=what + " grad")
    assert grad.shape == x.shape, what
    return loss, grad


# ---------------------------------------------------------------------------------------------
# torch


@pytest.fixture
def torch1(torch):
    """torch on one thread: tiny ops on a loaded 2-core machine are 10x faster that way."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)


def to_torch(torch, a, requires_grad=False):
    a = np.array(a, order="C", copy=True)
    if a.dtype.kind in "iub":
        t = torch.from_numpy(a.astype(np.int64))
    else:
        t = torch.from_numpy(a)
    return t.requires_grad_(requires_grad)


def torch_all(torch, func, x, t, g, **kwargs):
    """torch's forward result and autograd gradient for the upstream gradient ``g``
    (weights are given to torch in the input's dtype, which torch requires)."""
    x = np.asarray(x)
    xt = to_torch(torch, x, requires_grad=True)
    kwargs = dict(kwargs)
    for name in ("weight", "pos_weight"):
        if kwargs.get(name) is not None:
            kwargs[name] = to_torch(torch, np.asarray(kwargs[name]).astype(x.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy arguments, kl_div 'mean', mse broadcasting
        out = getattr(torch.nn.functional, func)(xt, to_torch(torch, t), **kwargs)
    loss = out.detach().numpy()
    if g is None:
        return loss, None
    out.backward(to_torch(torch, np.asarray(g).astype(loss.dtype)))
    grad = xt.grad if xt.grad is not None else torch.zeros_like(xt)
    return loss, grad.numpy()


def check_torch(torch, func, x, t, g=None, *, what="", **kwargs):
    x, t = np.asarray(x), np.asarray(t)
    with expected_warnings_ignored():
        loss = np.asarray(getattr(fl, func)(x, t, **kwargs))
    if g is None:
        g = upstream(loss.shape, loss.dtype)
    with expected_warnings_ignored():
        grad = getattr(fl, func + "_backward")(g, x, t, **kwargs)
    expected, expected_grad = torch_all(torch, func, x, t, g, **kwargs)
    what = f"{func} vs torch {what} {kwargs_repr(kwargs)}"
    scale = 1.0 if x.dtype == F64 else 2.0
    classes = classes_of(func, x)
    assert_close(loss, expected, expected.dtype, scale=scale, classes=classes, what=what)
    assert_close(
        grad, expected_grad, x.dtype, grad=True, scale=scale, classes=classes, what=what + " grad"
    )
    return loss, grad


# ---------------------------------------------------------------------------------------------
# The option space against the reference


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("rank", sorted(RANK_SHAPES), ids=lambda r: f"rank{r}")
@pytest.mark.parametrize("func", ELEMENTWISE)
def test_elementwise_losses_match_reference(func, rank, dtype, layout):
    shape = RANK_SHAPES[rank]
    grid = option_grid(func, shape)
    if layout == "strided":  # a third of the product (a different third per rank)
        grid = grid[rank % 3 :: 3]
    for options in grid:
        x, t, kwargs = make_case(func, shape, dtype, layout, options)
        loss, grad = check_reference(func, x, t, what=f"rank {rank} {layout}", **kwargs)
        expected_shape = shape if options["reduction"] == "none" else ()
        assert loss.shape == expected_shape and grad.shape == shape


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("case", sorted(MARGIN_SHAPES))
def test_multi_margin_loss_matches_reference(case, dtype, layout):
    shape, tshape = MARGIN_SHAPES[case]
    grid = option_grid(MARGIN, shape)
    if layout == "strided":
        grid = grid[len(case) % 3 :: 3]
    for options in grid:
        x, t, kwargs = make_case(MARGIN, shape, dtype, layout, options, tshape)
        loss, grad = check_reference(MARGIN, x, t, what=f"{case} {layout}", **kwargs)
        if options["reduction"] != "none":
            assert loss.shape == ()
        elif len(shape) == 2:
            assert loss.shape == shape[:1]
        else:
            assert loss.shape == tshape  # (C,) input: the target's shape, () or (1,)
        assert grad.shape == shape


# Bigger shapes (several blocks, below the parallel threshold): a sample of the options.
MEDIUM_SHAPES = {
    KL: [(3, 1100), (2, 7, 130), (1500,)],
    BCE: [(3, 1100), (2, 7, 130), (1500,)],
    BCE_LOGITS: [(3, 1100), (2, 7, 130), (1500,)],
    MSE: [(3, 1100), (2, 7, 130), (1500,)],
    MARGIN: [(40, 70), (3, 1100), (1500,)],
}
MEDIUM_CASES = [(func, shape) for func in LOSSES for shape in MEDIUM_SHAPES[func]]


def _sampled_options(func, shape, count):
    grid = option_grid(func, shape)
    picks = _rng("sample", func, shape).choice(len(grid), size=min(count, len(grid)), replace=False)
    return [grid[i] for i in sorted(picks)]


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize(
    ("func", "shape"), MEDIUM_CASES, ids=[f"{f}-{shape_id(s)}" for f, s in MEDIUM_CASES]
)
def test_bigger_shapes_match_reference(func, shape, dtype):
    for n, options in enumerate(_sampled_options(func, shape, 4)):
        layout = LAYOUTS[n % 2]
        tshape = shape[:1] if len(shape) == 2 else ()
        x, t, kwargs = make_case(func, shape, dtype, layout, options, tshape, key="medium")
        check_reference(func, x, t, what=f"{shape_id(shape)} {layout}", **kwargs)


# ---------------------------------------------------------------------------------------------
# Against torch


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("rank", sorted(RANK_SHAPES), ids=lambda r: f"rank{r}")
@pytest.mark.parametrize("func", ELEMENTWISE)
def test_elementwise_losses_match_torch(torch1, func, rank, dtype):
    shape = RANK_SHAPES[rank]
    # Half of the product per (rank, dtype): over the two dtypes each rank sees all of it.
    grid = option_grid(func, shape)[(rank + (dtype == F32)) % 2 :: 2]
    for n, options in enumerate(grid):
        layout = LAYOUTS[n % 2]
        x, t, kwargs = make_case(func, shape, dtype, layout, options, key="torch")
        check_torch(torch1, func, x, t, what=f"rank {rank} {layout}", **kwargs)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("case", sorted(MARGIN_SHAPES))
def test_multi_margin_loss_matches_torch(torch1, case, dtype):
    shape, tshape = MARGIN_SHAPES[case]
    grid = option_grid(MARGIN, shape)[(dtype == F32) :: 2]
    for n, options in enumerate(grid):
        layout = LAYOUTS[n % 2]
        x, t, kwargs = make_case(MARGIN, shape, dtype, layout, options, tshape, key="torch")
        check_torch(torch1, MARGIN, x, t, what=f"{case} {layout}", **kwargs)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize(
    ("func", "shape"), MEDIUM_CASES, ids=[f"{f}-{shape_id(s)}" for f, s in MEDIUM_CASES]
)
def test_bigger_shapes_match_torch(torch1, func, shape, dtype):
    for options in _sampled_options(func, shape, 2):
        tshape = shape[:1] if len(shape) == 2 else ()
        x, t, kwargs = make_case(func, shape, dtype, "contiguous", options, tshape, key="t")
        check_torch(torch1, func, x, t, what=shape_id(shape), **kwargs)


# ---------------------------------------------------------------------------------------------
# Broadcasting (kl_div and mse_loss): the loss has the broadcast shape, the gradient the input's


KL_BROADCAST = [((5,), (4, 5)), ((4, 5), (5,)), ((4, 1, 5), (3, 5)), ((2, 1), (2, 3)), ((), (3,))]
MSE_BROADCAST = [
    ((4, 3), (1, 3)),
    ((1, 3), (4, 3)),
    ((3,), (4, 3)),
    ((4, 3), (3,)),
    ((4, 1), (1, 3)),
    ((), (2, 3)),
]


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize(("shape", "tshape"), KL_BROADCAST, ids=str)
def test_kl_div_broadcasting(torch1, shape, tshape, dtype):
    rng = _rng("kl-broadcast", shape, tshape, str(dtype))
    x = as_dtype(rng.standard_normal(shape) - 1, dtype)
    for log_target in (False, True):
        t = as_dtype(rng.uniform(0.05, 1.0, tshape), dtype)
        if log_target:
            t = np.log(t)
        for reduction in reductions_of(KL):
            kwargs = {"reduction": reduction, "log_target": log_target}
            loss, grad = check_reference(KL, x, t, what="broadcast", **kwargs)
            check_torch(torch1, KL, x, t, what="broadcast", **kwargs)
            full = np.broadcast_shapes(shape, tshape)
            assert loss.shape == (full if reduction == "none" else ())
            assert grad.shape == shape
    # 'batchmean' divides by input.shape[0] (5 here), not by the target's batch.
    if shape == (5,):
        t = as_dtype(rng.uniform(0.05, 1.0, tshape), dtype)
        total = fl.kl_div(x, t, reduction="sum")
        np.testing.assert_allclose(fl.kl_div(x, t, reduction="batchmean"), total / 5, rtol=1e-6)
        grad = fl.kl_div_backward(1.0, x, t, reduction="batchmean")
        np.testing.assert_allclose(grad, -t.astype(np.float64).sum(axis=0) / 5, rtol=1e-6)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize(("shape", "tshape"), MSE_BROADCAST, ids=str)
def test_mse_loss_broadcasting(torch1, shape, tshape, dtype):
    rng = _rng("mse-broadcast", shape, tshape, str(dtype))
    x, t = as_dtype(rng.standard_normal(shape), dtype), as_dtype(rng.standard_normal(tshape), dtype)
    for reduction in REDUCTIONS:
        loss, grad = check_reference(MSE, x, t, what="broadcast", reduction=reduction)
        check_torch(torch1, MSE, x, t, what="broadcast", reduction=reduction)
        full = np.broadcast_shapes(shape, tshape)
        assert loss.shape == (full if reduction == "none" else ())
        assert grad.shape == shape


@pytest.mark.parametrize(("shape", "tshape"), MSE_BROADCAST, ids=str)
def test_mse_loss_broadcasting_warns(shape, tshape):
    """Different input and target shapes warn once per call, as in torch."""
    x, t = np.zeros(shape, F32), np.ones(tshape, F32)
    for name, call in _three_calls(MSE, x, t, 1.0, {}):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            call()
        messages = [str(w.message) for w in record]
        if name.endswith("_backward"):  # torch's backward warns nothing; fastloss may
            assert len(messages) <= 1, (name, messages)
        else:
            assert len(messages) == 1, (name, messages)
        for message in messages:
            assert message.startswith(BROADCAST_WARNING), (name, message)
            assert "different to the input size" in message, (name, message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal shapes: no warning
        fl.mse_loss_with_grad(np.zeros(shape, F32), np.ones(shape, F32))


# ---------------------------------------------------------------------------------------------
# Legacy reduction arguments, 'elementwise_mean', kl_div's 'mean' warning


LEGACY = [
    (size_average, reduce)
    for size_average in (None, True, False)
    for reduce in (None, True, False)
    if (size_average, reduce) != (None, None)
]


def _legacy_reduction(size_average, reduce):
    if reduce is False:
        return "none"
    return "sum" if size_average is False else "mean"


def _three_calls(func, x, t, g, kwargs):
    """(name, call) for forward, backward and fused ``func``; each call takes extra kwargs."""
    return [
        (func, lambda **kw: getattr(fl, func)(x, t, **kwargs, **kw)),
        (func + "_backward", lambda **kw: getattr(fl, func + "_backward")(g, x, t, **kwargs, **kw)),
        (
            func + "_with_grad",
            lambda **kw: getattr(fl, func + "_with_grad")(x, t, grad_output=g, **kwargs, **kw),
        ),
    ]


def _assert_same_results(got, expected, what):
    got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=what)
        assert np.asarray(a).dtype == np.asarray(b).dtype, what


def _legacy_case(func):
    rng = _rng("legacy", func)
    if func == MARGIN:
        x, t = margin_inputs(rng, (4, 3), (4,), F64)
        return x, t, {"weight": positive(rng, (3,), F64), "p": 2, "margin": 0.5}
    x, t = elementwise_inputs(func, rng, (4, 3), F64)
    kwargs = {}
    if func in (BCE, BCE_LOGITS):
        kwargs["weight"] = positive(rng, (3,), F64)
    if func == BCE_LOGITS:
        kwargs["pos_weight"] = positive(rng, (4, 1), F64)
    if func == MSE:
        kwargs["weight"] = positive(rng, (4, 3), F64)
    return x, t, kwargs


@pytest.mark.parametrize(("size_average", "reduce"), LEGACY, ids=str)
@pytest.mark.parametrize("func", LOSSES)
def test_legacy_size_average_and_reduce(func, size_average, reduce):
    x, t, kwargs = _legacy_case(func)
    effective = _legacy_reduction(size_average, reduce)
    loss_shape = (4,) if func == MARGIN else (4, 3)
    g = upstream(loss_shape, F64) if effective == "none" else 0.7
    message = (
        "size_average and reduce args will be deprecated, please use "
        f"reduction='{effective}' instead."
    )
    for name, call in _three_calls(func, x, t, g, kwargs):
        with expected_warnings_ignored():
            expected = call(reduction=effective)
        # The legacy arguments override reduction=, whatever it says, and (for kl_div) replace
        # the 'mean' warning: exactly one warning.
        for reduction in reductions_of(func):
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                got = call(size_average=size_average, reduce=reduce, reduction=reduction)
            assert [str(w.message) for w in record] == [message], (name, reduction)
            assert record[0].category is UserWarning
            assert record[0].filename == __file__, f"{name}: warning points at {record[0].filename}"
            what = f"{name} legacy {size_average}, {reduce}, reduction={reduction}"
            if reduction == "batchmean":
                # torch's quirk: the legacy reduction, then divided by input.shape[0] again.
                _assert_reference_result(name, got, func, x, t, g, effective, kwargs, what)
            else:
                _assert_same_results(got, expected, what)


def _assert_reference_result(name, got, func, x, t, g, effective, kwargs, what):
    kw = {**kwargs, "size_average": None, "reduce": effective != "none", "reduction": "batchmean"}
    if effective == "sum":
        kw["size_average"] = False
    ref_loss, ref_grad = reference_all(func, x, t, g, **kw)
    if name == func:
        assert_close(got, ref_loss, F64, what=what)
    elif name.endswith("_backward"):
        assert_close(got, ref_grad, F64, grad=True, what=what)
    else:
        assert_close(got[0], ref_loss, F64, what=what)
        assert_close(got[1], ref_grad, F64, grad=True, what=what)


def test_legacy_warning_text_matches_torch(torch1):
    x, t = np.full((2, 3), 0.5, F32), np.full((2, 3), 0.25, F32)
    for func in ELEMENTWISE:
        for size_average, reduce in LEGACY:
            with warnings.catch_warnings(record=True) as torch_record:
                warnings.simplefilter("always")
                getattr(torch1.nn.functional, func)(
                    to_torch(torch1, x),
                    to_torch(torch1, t),
                    size_average=size_average,
                    reduce=reduce,
                )
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                getattr(fl, func)(x, t, size_average=size_average, reduce=reduce)
            assert [str(w.message) for w in record] == [str(w.message) for w in torch_record]


@pytest.mark.parametrize("func", LOSSES)
def test_elementwise_mean_warns_and_means_mean(func):
    x, t, kwargs = _legacy_case(func)
    if func == MSE:
        kwargs = {}  # with a weight, 'elementwise_mean' is an error (tested below)
    for name, call in _three_calls(func, x, t, 1.0, kwargs):
        with expected_warnings_ignored():
            expected = call(reduction="mean")
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            got = call(reduction="elementwise_mean")
        # kl_div: only the deprecation warning (torch's 'mean' warning tests the string 'mean').
        assert [str(w.message) for w in record] == [
            "reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead."
        ], name
        _assert_same_results(got, expected, name)


def test_kl_div_mean_warns_like_torch(torch1):
    x, t = np.full((2, 3), -1.0, F32), np.full((2, 3), 0.25, F32)
    with warnings.catch_warnings(record=True) as torch_record:
        warnings.simplefilter("always")
        torch1.nn.functional.kl_div(to_torch(torch1, x), to_torch(torch1, t))
    assert [str(w.message) for w in torch_record] == [KL_MEAN_WARNING]
    for reduction in ({}, {"reduction": "mean"}):
        for name, call in _three_calls(KL, x, t, 1.0, reduction):
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                call()
            messages = [str(w.message) for w in record]
            assert all(w.category is UserWarning for w in record)
            if name.endswith("_backward"):  # torch's backward warns nothing; fastloss may
                assert messages in ([], [KL_MEAN_WARNING]), name
            else:
                assert messages == [KL_MEAN_WARNING], name
    for reduction in ("batchmean", "sum", "none"):
        g = np.ones((2, 3), F32) if reduction == "none" else 1.0
        for _name, call in _three_calls(KL, x, t, g, {"reduction": reduction}):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                call()


# ---------------------------------------------------------------------------------------------
# Special values (sections 5-9 and 11)


def _pointwise_case(func, dtype, xv, tv, kwargs, name):
    """The special (x, t) pair at the middle of a row of ordinary values."""
    row_x = {
        KL: [-1.2, xv, -0.4],
        BCE: [0.3, xv, 0.8],
        BCE_LOGITS: [0.7, xv, -1.5],
        MSE: [0.5, xv, -1.0],
    }[func]
    row_t = {
        KL: [0.2, tv, 0.5],
        BCE: [0.6, tv, 0.1],
        BCE_LOGITS: [1.0, tv, 0.25],
        MSE: [0.0, tv, 2.0],
    }[func]
    if kwargs.get("log_target"):
        row_t = [math.log(0.2), tv, math.log(0.5)]
    with np.errstate(all="ignore"):
        x, t = as_dtype(row_x, dtype), as_dtype(row_t, dtype)
    return (f"{name} x={xv} t={tv}", func, x, t, kwargs)


def _special_cases(dtype):
    dtype = np.dtype(dtype)
    cases = []
    for xv, tv in [
        (-INF, 0.0),
        (-INF, 0.3),
        (INF, 0.3),
        (INF, 0.0),
        (1.0, 0.0),
        (1.0, -0.5),
        (NAN, 0.3),
        (1.0, NAN),
        (1.0, INF),
        (-0.5, 1e-30),
    ]:
        cases.append(_pointwise_case(KL, dtype, xv, tv, {}, "kl"))
    for xv, tv in [
        (0.5, -INF),
        (-INF, 0.0),
        (INF, 0.0),
        (1.0, INF),
        (NAN, 0.0),
        (0.5, 100.0),
        (0.5, -100.0),
    ]:
        cases.append(_pointwise_case(KL, dtype, xv, tv, {"log_target": True}, "kl log_target"))
    tiny = 1e-40 if dtype == F32 else 1e-310  # a denormal input
    for xv, tv in [
        (0.0, 1.0),
        (0.0, 0.0),
        (1.0, 1.0),
        (1.0, 0.0),
        (0.0, 0.5),
        (1.0, 0.5),
        (tiny, 1.0),
        (-0.0, 0.0),
        (1e-7, 1.0),
        (1 - 2**-20, 0.0),
        (0.5, 0.5),
    ]:
        for kwargs in ({}, {"weight": np.asarray(2.5, dtype)}):
            cases.append(_pointwise_case(BCE, dtype, xv, tv, kwargs, "bce"))
    for xv, tv in [
        (INF, 0.0),
        (INF, 1.0),
        (-INF, 0.0),
        (-INF, 1.0),
        (-INF, 0.5),
        (NAN, 0.5),
        (0.5, NAN),
        (1e4, 0.0),
        (1e4, 1.0),
        (-1e4, 0.0),
        (-1e4, 1.0),
        (1e30, 0.5),
        (-1e30, 0.5),
        (100.0, 1.0),
        (-100.0, 0.0),
        (0.3, 1.5),
        (0.3, -0.5),
    ]:
        for kwargs in (
            {},
            {"pos_weight": np.asarray(3.0, dtype)},
            {"weight": np.asarray(0.5, dtype), "pos_weight": np.full(3, 2.0, dtype)},
        ):
            cases.append(_pointwise_case(BCE_LOGITS, dtype, xv, tv, kwargs, "bce_logits"))
    for xv, tv in [
        (INF, INF),
        (INF, 0.0),
        (-INF, INF),
        (NAN, 0.0),
        (0.0, NAN),
        (1e20, 0.0),
        (1e20, -1e20),
        (3e38, -3e38),
        (1e-30, 0.0),
    ]:
        for kwargs in ({}, {"weight": as_dtype([1.0, 2.0, 0.5], dtype)}):
            cases.append(_pointwise_case(MSE, dtype, xv, tv, kwargs, "mse"))
    rows = {
        "nan elsewhere": ([[0.5, NAN, 0.1], [0.2, 0.1, 0.3]], [0, 1]),
        "nan at target": ([[NAN, 0.5, 0.1], [0.2, 0.1, 0.3]], [0, 1]),
        "+inf at target": ([[INF, 0.0, 1.0], [0.2, 0.1, 0.3]], [0, 2]),
        "+inf elsewhere": ([[0.0, INF, 1.0], [0.2, 0.1, 0.3]], [0, 2]),
        "-inf at target": ([[-INF, 0.0, 1.0], [0.2, 0.1, 0.3]], [0, 2]),
        "-inf elsewhere": ([[0.0, -INF, 1.0], [0.2, 0.1, 0.3]], [0, 2]),
        "kink z=0": ([[1.0, 0.0, -3.0], [0.5, 0.5, 0.5]], [0, 1]),
        "huge": ([[1e30, 0.0, -1e30], [3e38, -3e38, 0.0]], [1, 0]),
        "one class": ([[3.0], [-1.0], [NAN]], [0, 0, 0]),
    }
    for name, (x, t) in rows.items():
        with np.errstate(over="ignore"):
            x = as_dtype(x, dtype)
        for p, weighted in itertools.product((1, 2), (False, True)):
            kwargs = {"p": p}
            if weighted:
                kwargs["weight"] = as_dtype(np.linspace(0.5, 2.0, x.shape[1]), dtype)
            cases.append((f"margin {name}", MARGIN, x, np.array(t), kwargs))
    x = as_dtype([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]], dtype)
    cases.append(("margin kink z=0 margin 0", MARGIN, x, np.array([0, 2]), {"margin": 0.0}))
    return cases


SPECIAL_CASES = [(dtype, case) for dtype in (F32, F64) for case in _special_cases(dtype)]
SPECIAL_IDS = [
    f"{dtype}-{case[0]}-{kwargs_repr(case[4])}".replace(" ", "_") for dtype, case in SPECIAL_CASES
]


# float32 x - y overflows to inf in torch (and fastloss) before the gradient's scaling: the
# float64 reference, rounded afterwards, is finite there. Compared with torch only.
F32_INTERMEDIATE_OVERFLOW = {"mse x=3e+38 t=-3e+38"}


@pytest.mark.parametrize(("dtype", "case"), SPECIAL_CASES, ids=SPECIAL_IDS)
def test_special_values_match_reference(dtype, case):
    name, func, x, t, kwargs = case
    if dtype == F32 and name in F32_INTERMEDIATE_OVERFLOW:
        pytest.skip("float32 intermediate overflow: compared with torch")
    for reduction in reductions_of(func):
        check_reference(func, x, t, what=name, reduction=reduction, **kwargs)


@pytest.mark.parametrize(("dtype", "case"), SPECIAL_CASES, ids=SPECIAL_IDS)
def test_special_values_match_torch(torch1, dtype, case):
    name, func, x, t, kwargs = case
    for reduction in reductions_of(func):
        check_torch(torch1, func, x, t, what=name, reduction=reduction, **kwargs)


def _loss_and_grad(func, x, t, reduction="none", **kwargs):
    """(loss, grad) for grad_output 1 / ones, checked to agree across the three entry points."""
    x, t = np.asarray(x), np.asarray(t)
    with expected_warnings_ignored():
        loss = np.asarray(getattr(fl, func)(x, t, reduction=reduction, **kwargs))
    return fastloss_all(func, x, t, ones_like_loss(loss), reduction=reduction, **kwargs)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_kl_div_exact_values(dtype):
    x = np.array([-INF, 1.0, 2.0, 0.5, -INF], dtype)
    t = np.array([0.0, 0.0, -0.5, 0.25, 0.5], dtype)
    loss, grad = _loss_and_grad(KL, x, t)
    assert np.isnan(loss[0]), "t = 0 at x = -inf: 0 * -inf"
    assert loss[1] == 0.0, "t = 0 with finite x"
    assert np.isnan(loss[2]), "t < 0"
    np.testing.assert_allclose(loss[3], 0.25 * (math.log(0.25) - 0.5), rtol=1e-6)
    assert loss[4] == INF
    np.testing.assert_array_equal(grad, -t)
    assert grad[0] == 0.0 and np.signbit(grad[0]), "torch's gradient at t = 0, x = -inf is -0.0"
    loss, grad = _loss_and_grad(KL, x, t, reduction="sum")
    assert np.isnan(loss)
    assert np.signbit(grad[0]) and np.signbit(grad[1])
    # log_target: t = -inf gives nan (0 * -inf), x = -inf with t = 0 gives +inf.
    x = np.array([0.5, -INF, 1.0], dtype)
    t = np.array([-INF, 0.0, math.log(0.5)], dtype)
    loss, grad = _loss_and_grad(KL, x, t, log_target=True)
    assert np.isnan(loss[0]) and loss[1] == INF
    np.testing.assert_allclose(loss[2], 0.5 * (math.log(0.5) - 1.0), rtol=1e-6)
    np.testing.assert_allclose(grad, [-0.0, -1.0, -0.5], rtol=1e-6)
    # 'batchmean' divides by input.shape[0]; a 0-d input is not divided.
    x, t = np.full((4, 3), -1.0, dtype), np.full((4, 3), 0.5, dtype)
    expected = 12 * 0.5 * (math.log(0.5) + 1.0)
    np.testing.assert_allclose(fl.kl_div(x, t, reduction="batchmean"), expected / 4, rtol=1e-6)
    np.testing.assert_allclose(fl.kl_div(x, t, reduction="sum"), expected, rtol=1e-6)
    with expected_warnings_ignored():
        np.testing.assert_allclose(fl.kl_div(x, t, reduction="mean"), expected / 12, rtol=1e-6)
    x0, t0 = np.asarray(-1.0, dtype), np.asarray(0.5, dtype)
    np.testing.assert_allclose(fl.kl_div(x0, t0, reduction="batchmean"), expected / 12, rtol=1e-6)
    np.testing.assert_allclose(fl.kl_div_backward(1.0, x0, t0, reduction="batchmean"), -0.5)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_binary_cross_entropy_exact_values(dtype):
    x = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.5], dtype)
    y = np.array([1.0, 0.0, 1.0, 0.5, 0.0, 0.5], dtype)
    loss, grad = _loss_and_grad(BCE, x, y)
    # log clamped at -100: x=0,y=1 -> 100; x=0,y=0 -> 0; x=1,y=1 -> -0.0; x=0,y=0.5 -> 50.
    np.testing.assert_allclose(loss, [100.0, 0.0, 0.0, 50.0, 100.0, math.log(2)], rtol=1e-6)
    # Gradient w (x - y) / max(x (1 - x), EPS), EPS = float32(1e-12) even in float64; 0 where
    # x equals y at 0 or 1.
    eps = float(np.float32(1e-12))
    np.testing.assert_allclose(grad, [-1 / eps, 0.0, 0.0, -0.5 / eps, 1 / eps, 0.0], rtol=1e-6)
    assert grad[1] == 0.0 and grad[2] == 0.0
    if dtype == F64:
        assert eps == 9.9999999600419720e-13
        np.testing.assert_allclose(grad[0], -1.0000000039958e12, rtol=1e-13)
    # The float32 denormal 1e-40 is not clamped: -log(1e-40) = 92.1034.
    if dtype == F32:
        loss = fl.binary_cross_entropy(np.array([1e-40], F32), np.array([1.0], F32))
        np.testing.assert_allclose(loss, 92.1034, rtol=1e-6)
        assert loss.dtype == F32
    # 'mean' divides by numel, never by the sum of the weights.
    w = np.array([2.0, 3.0], dtype)
    x2, y2 = np.array([0.5, 0.5], dtype), np.array([1.0, 0.0], dtype)
    np.testing.assert_allclose(
        fl.binary_cross_entropy(x2, y2, weight=w), 5 * math.log(2) / 2, rtol=1e-6
    )


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_binary_cross_entropy_with_logits_exact_values(dtype):
    x = np.array([INF, INF, -INF, -INF, NAN, 1e4, -1e4, 1e30, -1e30], dtype)
    y = np.array([0.0, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0], dtype)
    for pw in (None, 3.0):
        kwargs = {} if pw is None else {"pos_weight": np.asarray(pw, dtype)}
        p = 1.0 if pw is None else pw
        loss, grad = _loss_and_grad(BCE_LOGITS, x, y, **kwargs)
        assert loss[0] == INF and grad[0] == 1.0, "x = +inf, y = 0"
        assert np.isnan(loss[1]) and grad[1] == 0.0, "x = +inf, y = 1: 0 * inf"
        assert np.isnan(loss[2]) and np.isnan(loss[3]), "x = -inf"
        np.testing.assert_array_equal(grad[2:4], [0.0, -p])
        assert np.isnan(loss[4]) and np.isnan(grad[4])
        big = np.array([1e4, 1e4, 1e30, 1e30], dtype)  # |x|, rounded to dtype first
        factor = np.array([1.0, p, 1.0, p], dtype)
        np.testing.assert_array_equal(loss[5:], big * factor)
        np.testing.assert_array_equal(grad[5:], [1.0, -p, 1.0, -p])
    # x = -1e4, y = 1, pos_weight 3: 3e4, gradient -3 (the worked case of section 7).
    loss, grad = fl.binary_cross_entropy_with_logits_with_grad(
        np.array([-1e4], dtype),
        np.array([1.0], dtype),
        pos_weight=np.array([3.0], dtype),
        reduction="sum",
    )
    assert loss == 3e4 and grad[0] == -3.0
    # x = 100, y = 1: log1p(exp(-100)) = 3.7e-44, a float32 denormal (torch: 3.92e-44).
    loss = fl.binary_cross_entropy_with_logits(
        np.array([100.0], dtype), np.array([1.0], dtype), reduction="none"
    )
    if dtype == F32:
        denormal = np.float32(2**-149)
        assert 0 < loss[0] < np.finfo(F32).tiny
        assert abs(float(loss[0]) - 3.92e-44) <= 2 * float(denormal)
    else:
        np.testing.assert_allclose(loss[0], math.log1p(math.exp(-100.0)), rtol=1e-12)
    # The target is not validated; the loss can be negative.
    assert fl.binary_cross_entropy_with_logits(np.array([3.0], dtype), np.array([1.5], dtype)) < 0


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_mse_loss_exact_values(dtype):
    x = np.array([INF, 1e20, NAN, 2.0], dtype)
    y = np.array([INF, 0.0, 0.0, -1.0], dtype)
    loss, grad = _loss_and_grad(MSE, x, y)
    assert np.isnan(loss[0]), "inf - inf"
    assert loss[1] == (INF if dtype == F32 else 1e40), "(1e20)^2"
    assert np.isnan(loss[2]) and loss[3] == 9.0
    assert np.isnan(grad[0]) and grad[1] == np.asarray(2e20, dtype) and grad[3] == 6.0
    # With a weight, 'mean' divides by the sum of the weights.
    x, y, w = np.array([1.0, 3.0], dtype), np.array([0.0, 0.0], dtype), np.array([1.0, 3.0], dtype)
    loss, grad = fl.mse_loss_with_grad(x, y, weight=w)
    np.testing.assert_allclose(loss, (1 + 27) / 4, rtol=1e-6)
    np.testing.assert_allclose(grad, [2 * 1 * 1 / 4, 2 * 3 * 3 / 4], rtol=1e-6)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_multi_margin_loss_exact_values(dtype):
    def margin(x, t, **kwargs):
        return _loss_and_grad(MARGIN, np.array(x, dtype), np.array(t), **kwargs)

    # A NaN entry contributes 0 (nan > 0 is false): silently dropped.
    loss, grad = margin([[0.5, NAN, 0.1]], [0])
    np.testing.assert_allclose(loss, [(1 - 0.5 + 0.1) / 3], rtol=1e-6)
    np.testing.assert_allclose(grad, [[-1 / 3, 0.0, 1 / 3]], rtol=1e-6)
    # +inf at the target gives 0; +inf elsewhere gives inf.
    loss, grad = margin([[INF, 0.0, 1.0]], [0])
    assert loss[0] == 0.0
    np.testing.assert_array_equal(grad, 0.0)
    loss, _ = margin([[0.0, INF, 1.0]], [0])
    assert loss[0] == INF
    # C = 1 gives 0.
    loss, grad = margin([[3.0], [-1.0]], [0, 0], p=2)
    np.testing.assert_array_equal(loss, 0.0)
    np.testing.assert_array_equal(grad, 0.0)
    # The kink z = 0 has subgradient 0.
    loss, grad = margin([[1.0, 0.0, 0.5]], [0])  # z = [., 0, 0.5]
    np.testing.assert_allclose(loss, [0.5 / 3], rtol=1e-6)
    np.testing.assert_allclose(grad, [[-1 / 3, 0.0, 1 / 3]], rtol=1e-6)
    # The weight of the target class multiplies after the power; 'mean' divides by N only.
    x = np.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], dtype)
    w = np.array([1.0, 2.0, 3.0], dtype)
    loss = fl.multi_margin_loss(x, np.array([0, 1]), p=2, weight=w, reduction="none")
    np.testing.assert_allclose(loss, [1 * (2**2 + 0) / 3, 2 * (3**2 + 1) / 3], rtol=1e-6)
    mean = fl.multi_margin_loss(x, np.array([0, 1]), p=2, weight=w)
    np.testing.assert_allclose(mean, (4 / 3 + 20 / 3) / 2, rtol=1e-6)
    # 0-d input: loss 0, gradient 0.
    loss, grad = _loss_and_grad(MARGIN, np.asarray(1.5, dtype), np.asarray(0))
    assert loss.shape == () and loss == 0.0 and grad.shape == () and grad == 0.0


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_multi_margin_loss_empty_batch(dtype):
    """N = 0: torch returns uninitialised memory for 'mean'/'sum'; fastloss gives nan and 0
    (never compared with torch)."""
    x, t = np.zeros((0, 4), dtype), np.zeros(0, np.int64)
    for kwargs in ({}, {"p": 2, "weight": np.ones(4, dtype), "margin": 0.5}):
        none, grad = _loss_and_grad(MARGIN, x, t, **kwargs)
        assert none.shape == (0,) and none.dtype == dtype and grad.shape == (0, 4)
        loss, grad = _loss_and_grad(MARGIN, x, t, reduction="mean", **kwargs)
        assert np.isnan(loss) and loss.dtype == dtype and grad.shape == (0, 4)
        loss, grad = _loss_and_grad(MARGIN, x, t, reduction="sum", **kwargs)
        assert loss == 0.0 and loss.shape == () and grad.shape == (0, 4)


EMPTY_SHAPES = [(0,), (0, 3), (2, 0, 3)]


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=shape_id)
@pytest.mark.parametrize("func", ELEMENTWISE)
def test_empty_inputs(func, shape, dtype):
    """numel 0: 'none' is empty, 'mean' is nan, 'sum' is 0 (kl_div 'batchmean': sum / shape[0])."""
    x, t = elementwise_inputs(func, _rng("empty"), shape, dtype)
    weights = [{}]
    if func in (BCE, BCE_LOGITS, MSE):
        weights.append({"weight": np.ones(shape, dtype)})
    if func == BCE_LOGITS:
        weights.append({"pos_weight": np.ones(shape[-1:], dtype)})
    for kwargs in weights:
        none, grad = _loss_and_grad(func, x, t, **kwargs)
        assert none.shape == shape and none.dtype == dtype and grad.shape == shape
        loss, grad = _loss_and_grad(func, x, t, reduction="mean", **kwargs)
        assert loss.shape == () and np.isnan(loss) and grad.shape == shape
        loss, grad = _loss_and_grad(func, x, t, reduction="sum", **kwargs)
        assert loss.shape == () and loss == 0.0 and loss.dtype == dtype and grad.shape == shape
        if func == KL:
            loss, grad = _loss_and_grad(func, x, t, reduction="batchmean")
            assert np.isnan(loss) if shape[0] == 0 else loss == 0.0, shape
            assert grad.shape == shape
        for reduction in reductions_of(func):
            check_reference(func, x, t, what="empty", reduction=reduction, **kwargs)


@pytest.mark.parametrize("shape", [(0,), (0, 3)], ids=shape_id)
@pytest.mark.parametrize("func", ELEMENTWISE)
def test_empty_inputs_match_torch(torch1, func, shape):
    x, t = elementwise_inputs(func, _rng("empty"), shape, F32)
    for reduction in reductions_of(func):
        check_torch(torch1, func, x, t, what="empty", reduction=reduction)


# ---------------------------------------------------------------------------------------------
# The relations the seed documents state (fastloss on both sides)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_cross_entropy_is_entropy_plus_kl_divergence(dtype):
    """shared/seeds/004: H(p, q) = H(p) + D_KL(p || q), with q = softmax(x): cross_entropy with
    probability targets p equals the entropy of p plus kl_div(log_softmax(x), p), per row
    and for 'sum'; the gradients agree through log_softmax's backward."""
    rng = _rng("entropy", str(dtype))
    x = as_dtype(rng.standard_normal((6, 5)) * 2, dtype)
    p = rng.random((6, 5))
    p[0, 1] = 0.0  # 0 log 0 = 0
    p = as_dtype(p / p.sum(axis=1, keepdims=True), dtype)
    log_q = fl.log_softmax(x, 1)
    entropy = -np.sum(np.asarray(fl.kl_div(np.zeros_like(p), p, reduction="none")), axis=1)
    p64 = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_allclose(
            entropy, -np.sum(np.where(p64 > 0, p64 * np.log(p64), 0.0), axis=1), rtol=1e-6
        )
    rtol = 1e-12 if dtype == F64 else 2e-5
    per_row_kl = np.sum(np.asarray(fl.kl_div(log_q, p, reduction="none")), axis=1)
    np.testing.assert_allclose(
        fl.cross_entropy(x, p, reduction="none"), entropy + per_row_kl, rtol=rtol, atol=rtol
    )
    total = fl.cross_entropy(x, p, reduction="sum")
    np.testing.assert_allclose(
        total, entropy.sum() + fl.kl_div(log_q, p, reduction="sum"), rtol=rtol
    )
    # 'mean' over rows = mean entropy + 'batchmean' KL divergence.
    np.testing.assert_allclose(
        fl.cross_entropy(x, p),
        entropy.mean() + fl.kl_div(log_q, p, reduction="batchmean"),
        rtol=rtol,
    )
    # Gradients: d CE / dx = log_softmax_backward(d KL / d log q).
    for reduction, g in (("sum", 1.0), ("batchmean", 1.0)):
        kl_grad = fl.kl_div_backward(g, log_q, p, reduction=reduction)
        chained = fl.log_softmax_backward(kl_grad, x, 1)
        ce_grad = fl.cross_entropy_backward(
            g, x, p, reduction="sum" if reduction == "sum" else "mean"
        )
        assert_close(chained, _f64(ce_grad), dtype, grad=True, scale=2, what=reduction)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_seed_pig_dog_cat_via_kl_div(dtype):
    """shared/seeds/000: the two models' mean cross-entropies over (pig, dog, cat), 1.378 and
    0.639; with one-hot targets H(p) = 0 (seed 004), so 'batchmean' KL divergence equals them."""
    one_hot = np.eye(3, dtype=dtype)[[2, 1, 0]]
    for predictions, printed in (
        ([[0.3, 0.3, 0.4], [0.3, 0.4, 0.3], [0.1, 0.2, 0.7]], 1.378),
        ([[0.1, 0.2, 0.7], [0.1, 0.7, 0.2], [0.3, 0.4, 0.3]], 0.639),
    ):
        log_q = np.log(np.array(predictions)).astype(dtype)
        assert round(float(fl.kl_div(log_q, one_hot, reduction="batchmean")), 3) == printed
        assert round(float(fl.kl_div(log_q, one_hot, reduction="sum")) / 3, 3) == printed


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_bce_of_sigmoid_is_bce_with_logits(reduction, weighted):
    """BCE(sigmoid(x), y) = BCE_with_logits(x, y) for moderate x; the gradient of the former,
    chained through sigmoid's backward, is the latter's."""
    rng = _rng("sigmoid-relation", reduction, weighted)
    x = rng.uniform(-8, 8, (5, 4))
    y = rng.random((5, 4))
    kwargs = {"reduction": reduction}
    if weighted:
        kwargs["weight"] = rng.uniform(0.5, 2, 4)
    s = fl.sigmoid(x)
    g = upstream((5, 4), F64) if reduction == "none" else 0.7
    np.testing.assert_allclose(
        fl.binary_cross_entropy(s, y, **kwargs),
        fl.binary_cross_entropy_with_logits(x, y, **kwargs),
        rtol=1e-9,
        atol=1e-12,
    )
    chained = fl.sigmoid_backward(fl.binary_cross_entropy_backward(g, s, y, **kwargs), x)
    np.testing.assert_allclose(
        chained,
        fl.binary_cross_entropy_with_logits_backward(g, x, y, **kwargs),
        rtol=1e-8,
        atol=1e-12,
    )


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_is_two_class_cross_entropy(reduction, dtype):
    """shared/seeds/004: binary cross-entropy is the two-class cross-entropy -(y log p +
    (1-y) log(1-p)): cross_entropy on logits [log(1-p), log p] (already log-probabilities)
    with probability targets [1-y, y]. The gradients agree by the chain rule."""
    rng = _rng("two-class", reduction, str(dtype))
    p = rng.uniform(0.05, 0.95, 7)
    y = rng.random(7)
    logits = np.stack([np.log1p(-p), np.log(p)], axis=1).astype(dtype)
    targets = np.stack([1 - y, y], axis=1).astype(dtype)
    p, y = p.astype(dtype), y.astype(dtype)
    rtol = 1e-12 if dtype == F64 else 5e-5
    np.testing.assert_allclose(
        fl.binary_cross_entropy(p, y, reduction=reduction),
        fl.cross_entropy(logits, targets, reduction=reduction),
        rtol=rtol,
        atol=rtol,
    )
    g = upstream((7,), dtype) if reduction == "none" else 1.0
    grad_z = fl.cross_entropy_backward(g, logits, targets, reduction=reduction).astype(np.float64)
    p64 = p.astype(np.float64)
    grad_p = -grad_z[:, 0] / (1 - p64) + grad_z[:, 1] / p64
    np.testing.assert_allclose(
        fl.binary_cross_entropy_backward(g, p, y, reduction=reduction), grad_p, rtol=10 * rtol
    )


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_binary_hinge_is_two_class_multi_margin(dtype):
    """shared/seeds/004's hinge loss sum_i max(0, 1 - y_i h(x_i)), y = +-1, is multi_margin on
    scores [0, h] with target (y + 1) / 2, times C = 2."""
    rng = _rng("hinge", str(dtype))
    h = as_dtype(rng.standard_normal(9) * 2, dtype)
    y = np.where(rng.random(9) < 0.5, -1, 1)
    hinge = np.maximum(0.0, 1.0 - y * h.astype(np.float64))
    scores = np.stack([np.zeros_like(h), h], axis=1)
    target = (y + 1) // 2
    rtol = 1e-12 if dtype == F64 else 1e-5
    np.testing.assert_allclose(
        2 * fl.multi_margin_loss(scores, target, reduction="none"), hinge, rtol=rtol, atol=rtol
    )
    np.testing.assert_allclose(
        2 * fl.multi_margin_loss(scores, target, reduction="sum"), hinge.sum(), rtol=rtol
    )
    grad = fl.multi_margin_loss_backward(1.0, scores, target, reduction="sum")
    active = hinge > 0
    np.testing.assert_allclose(2 * grad[:, 1], np.where(active, -y, 0.0), rtol=rtol)


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis)


@st.composite
def loss_calls(draw):
    """(func, x, target, kwargs, grad_output) over the five losses and their options."""
    func = draw(st.sampled_from(LOSSES))
    dtype = draw(st.sampled_from([F32, F64]))
    if func == MARGIN:
        batched = draw(st.booleans())
        classes = draw(st.integers(1, 6))
        shape = (draw(st.integers(0, 4)), classes) if batched else (classes,)
        x = draw(hnp.arrays(np.float64, shape, elements=st.floats(-5, 5))).astype(dtype)
        tshape = shape[:1] if batched else draw(st.sampled_from([(), (1,)]))
        target = np.asarray(
            draw(hnp.arrays(np.int64, tshape, elements=st.integers(0, classes - 1)))
        )
        kwargs = {"p": draw(st.sampled_from([1, 2])), "margin": draw(st.sampled_from([1, 0, 0.5]))}
        if draw(st.booleans()):
            kwargs["weight"] = np.asarray(
                draw(hnp.arrays(dtype, (classes,), elements=st.floats(0, 3, width=32)))
            )
    else:
        shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
        low, high = (0.0, 1.0) if func == BCE else (-5.0, 5.0)
        x = np.asarray(draw(hnp.arrays(dtype, shape, elements=st.floats(low, high, width=32))))
        tlow = 0.0 if func in (BCE, KL) else -2.0
        target = np.asarray(draw(hnp.arrays(dtype, shape, elements=st.floats(tlow, 1.0, width=32))))
        kwargs = {}
        if func == KL:
            kwargs["log_target"] = draw(st.booleans())
        if func in (BCE, BCE_LOGITS, MSE) and draw(st.booleans()):
            wshape = (
                shape if func == MSE else draw(st.sampled_from(list(weight_kinds(shape).values())))
            )
            kwargs["weight"] = np.asarray(
                draw(hnp.arrays(dtype, wshape, elements=st.floats(0.125, 3, width=32)))
            )
        if func == BCE_LOGITS and draw(st.booleans()):
            pshape = draw(st.sampled_from(list(weight_kinds(shape).values())))
            kwargs["pos_weight"] = np.asarray(
                draw(hnp.arrays(dtype, pshape, elements=st.floats(0.125, 3, width=32)))
            )
    kwargs["reduction"] = draw(st.sampled_from(reductions_of(func)))
    grad_output = None
    if draw(st.booleans()):
        with expected_warnings_ignored():
            loss_shape = np.shape(getattr(reference, func)(x, target, **kwargs))
        grad_output = np.asarray(
            draw(hnp.arrays(dtype, loss_shape, elements=st.floats(-2, 2, width=32)))
        )
    return func, x, target, kwargs, grad_output


@given(call=loss_calls())
def test_with_grad_is_forward_plus_backward(call):
    func, x, target, kwargs, grad_output = call
    with expected_warnings_ignored():
        loss, grad = getattr(fl, func + "_with_grad")(x, target, grad_output=grad_output, **kwargs)
        forward = np.asarray(getattr(fl, func)(x, target, **kwargs))
        if grad_output is None:
            grad_output = ones_like_loss(forward)
        expected = getattr(fl, func + "_backward")(grad_output, x, target, **kwargs)
    np.testing.assert_array_equal(loss, forward)
    assert np.asarray(loss).dtype == forward.dtype and np.shape(loss) == forward.shape
    np.testing.assert_array_equal(grad, expected)
    assert grad.dtype == x.dtype and grad.shape == x.shape


@given(
    dtype=st.sampled_from([F32, F64]),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 8)),
    p=st.sampled_from([1, 2]),
    margin=st.sampled_from([1.0, 0.0, -0.5, 2.5]),
    data=st.data(),
)
def test_multi_margin_gradient_rows_sum_to_zero(dtype, shape, p, margin, data):
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-20, 20))).astype(dtype)
    t = data.draw(hnp.arrays(np.int64, shape[:1], elements=st.integers(0, shape[1] - 1)))
    w = data.draw(hnp.arrays(np.float64, shape[1:], elements=st.floats(0, 3))).astype(dtype)
    for kwargs in ({}, {"weight": w}):
        for grad in (
            fl.multi_margin_loss_with_grad(x, t, p=p, margin=margin, **kwargs)[1],
            fl.multi_margin_loss_backward(1.0, x, t, p=p, margin=margin, reduction="sum", **kwargs),
        ):
            assert np.isfinite(grad).all()
            grad64 = grad.astype(np.float64)
            scale = np.abs(grad64).sum(axis=1) + 1e-300
            tol = 1e-14 if dtype == F64 else 1e-6
            assert np.all(np.abs(grad64.sum(axis=1)) <= tol * scale * shape[1]), grad


# ---------------------------------------------------------------------------------------------
# Errors: raised before any kernel runs, with the input (and an aliasing out) unmodified


def _all_functions(func, x, t, g=1.0, **kwargs):
    """Calls of forward, backward and fused ``func``; the backward and fused calls write into
    ``out``, a copy of the input, when the input is a float array (checked unmodified)."""
    x = np.asarray(x)
    calls = {
        func: lambda out=None: getattr(fl, func)(x, t, **kwargs),
        func + "_backward": lambda out=None: getattr(fl, func + "_backward")(
            g, x, t, out=out, **kwargs
        ),
        func + "_with_grad": lambda out=None: getattr(fl, func + "_with_grad")(
            x, t, out=out, **kwargs
        ),
    }
    return calls


def _raises_everywhere(exc, match, func, x, t, g=1.0, **kwargs):
    x = np.asarray(x)
    snapshot = _snapshot(x, np.asarray(t), *kwargs.values())
    for name, call in _all_functions(func, x, t, g, **kwargs).items():
        out = None
        if name != func and x.dtype.kind == "f" and x.flags.writeable:
            out = x.copy()
        with expected_warnings_ignored(), pytest.raises(exc, match=match) as info:
            call(out=out)
        assert isinstance(info.value, exc), name
        if out is not None:
            np.testing.assert_array_equal(out, x, err_msg=f"{name}: out written before raising")
    _assert_unchanged(snapshot, f"{func} error {match}")


BAD_REDUCTIONS = ["foo", None, "MEAN", "", "elementwise"]


@pytest.mark.parametrize("reduction", BAD_REDUCTIONS, ids=repr)
@pytest.mark.parametrize("func", LOSSES)
def test_bad_reduction_raises_value_error(func, reduction):
    x, t, kwargs = _legacy_case(func)
    if func == MSE:
        kwargs = {}  # with a weight, mse_loss has its own message (tested below)
    _raises_everywhere(
        ValueError,
        f"{reduction} is not a valid value for reduction",
        func,
        x,
        t,
        reduction=reduction,
        **kwargs,
    )
    # Raised before any shape check, as in torch.
    bad_t = np.zeros(7, np.int64) if func == MARGIN else np.zeros((4, 7))
    _raises_everywhere(
        ValueError, "is not a valid value for reduction", func, x, bad_t, reduction=reduction
    )


@pytest.mark.parametrize("func", [BCE, BCE_LOGITS, MSE, MARGIN])
def test_batchmean_outside_kl_div_raises_value_error(func):
    x, t, kwargs = _legacy_case(func)
    if func == MSE:
        kwargs = {}
    _raises_everywhere(
        ValueError,
        "batchmean is not a valid value for reduction",
        func,
        x,
        t,
        reduction="batchmean",
        **kwargs,
    )


@pytest.mark.parametrize("reduction", ["foo", "batchmean", "elementwise_mean", None], ids=repr)
def test_mse_loss_with_weight_bad_reduction(reduction):
    x, t, kwargs = _legacy_case(MSE)
    _raises_everywhere(
        ValueError, f"Invalid reduction mode: {reduction}", MSE, x, t, reduction=reduction, **kwargs
    )


def test_kl_div_shape_errors():
    for shape, tshape in (((4, 6), (4, 5)), ((3,), (4, 5)), ((2, 3, 4), (3, 3, 4))):
        _raises_everywhere(
            ValueError, "must match the size", KL, np.zeros(shape), np.full(tshape, 0.5)
        )


def test_binary_cross_entropy_errors():
    x, y = np.full((4, 3), 0.5), np.full((4, 3), 0.25)
    for tshape in ((4, 1), (3,), (4, 3, 1), (12,), ()):
        _raises_everywhere(ValueError, "target size", BCE, x, np.full(tshape, 0.5))
    for bad in (1.5, -0.1, NAN, INF, -INF, 1 + 1e-12):
        xb = x.copy()
        xb[2, 1] = bad
        _raises_everywhere(
            ValueError, "all elements of input should be between 0 and 1", BCE, xb, y
        )
        yb = y.copy()
        yb[0, 2] = bad
        _raises_everywhere(
            ValueError, "all elements of target should be between 0 and 1", BCE, x, yb
        )
    for wshape in ((4,), (2, 4, 3), (4, 2), (3, 1, 1)):
        _raises_everywhere(ValueError, "weight", BCE, x, y, weight=np.ones(wshape))
    # -0.0 and the ends 0 and 1 pass.
    ok = np.array([[-0.0, 1.0, 0.0]])
    fl.binary_cross_entropy_with_grad(ok, ok[:, ::-1].copy())


def test_binary_cross_entropy_with_logits_errors():
    x, y = np.zeros((4, 3)), np.full((4, 3), 0.5)
    for tshape in ((4, 1), (3,), (4, 3, 1), ()):
        _raises_everywhere(ValueError, "Target size", BCE_LOGITS, x, np.full(tshape, 0.5))
    for name in ("pos_weight", "weight"):
        for wshape in ((4,), (4, 2), (2, 4, 3)):
            _raises_everywhere(ValueError, "weight", BCE_LOGITS, x, y, **{name: np.ones(wshape)})


def test_mse_loss_errors():
    x, y = np.zeros((4, 3)), np.ones((4, 3))
    for wshape in ((3,), (4, 1), (4, 3, 1), (1, 3), ()):
        _raises_everywhere(
            ValueError,
            "Weights and input must have the same size",
            MSE,
            x,
            y,
            weight=np.ones(wshape),
        )
    _raises_everywhere(
        ValueError,
        "Weights and input must have the same size",
        MSE,
        np.zeros((1, 3)),
        np.ones((4, 3)),
        weight=np.ones((4, 3)),
    )
    _raises_everywhere(ValueError, "must match the size", MSE, x, np.ones((4, 2)))


def test_multi_margin_loss_argument_errors():
    x, t = np.zeros((5, 4)), np.array([0, 1, 2, 3, 0])
    for p in (3, 0, 1.5, -1):
        _raises_everywhere(ValueError, r"only p == 1 and p == 2 supported", MARGIN, x, t, p=p)
    _raises_everywhere(
        ValueError, "weight must be one-dimensional", MARGIN, x, t, weight=np.ones((1, 4))
    )
    _raises_everywhere(
        ValueError, "weight must be one-dimensional", MARGIN, x, t, weight=np.asarray(1.0)
    )
    for length in (3, 5):
        _raises_everywhere(
            ValueError, "inconsistent weight size", MARGIN, x, t, weight=np.ones(length)
        )
    for shape, tshape in (((2, 3, 4), (2,)), ((2, 0), (2,)), ((0,), ())):
        _raises_everywhere(
            ValueError,
            "Expected non-empty vector or matrix",
            MARGIN,
            np.zeros(shape),
            np.zeros(tshape, np.int64),
        )
    for shape, tshape in (
        ((5, 4), (5, 1)),
        ((5, 4), (4,)),
        ((5, 4), ()),
        ((4,), (2,)),
        ((5, 4), (1, 5)),
    ):
        _raises_everywhere(
            ValueError,
            "target tensor should be 1-D",
            MARGIN,
            np.zeros(shape),
            np.zeros(tshape, np.int64),
        )
    for target in (t.astype(np.float64), t.astype(np.float32)):
        _raises_everywhere(TypeError, "target", MARGIN, x, target)


@pytest.mark.parametrize("value", [4, 5, -1, -100, 2**40])
@pytest.mark.parametrize("unbatched", [False, True], ids=["NxC", "C"])
def test_multi_margin_target_out_of_range(value, unbatched):
    """There is no ignore_index: any target outside [0, C), -100 included, is an error that is
    both an IndexError (the kind) and a ValueError (torch's RuntimeError)."""
    if unbatched:
        x, t = np.zeros(4), np.asarray(value)
    else:
        x, t = np.zeros((3, 4)), np.array([0, value, 1])
    for kwargs in ({}, {"reduction": "none", "weight": np.ones(4)}, {"p": 2, "reduction": "sum"}):
        g = np.ones(np.shape(t) if unbatched else 3) if kwargs.get("reduction") == "none" else 1.0
        _raises_everywhere(
            IndexError, rf"out of.*{value}|{value}.*out of", MARGIN, x, t, g, **kwargs
        )
        _raises_everywhere(
            ValueError, rf"out of.*{value}|{value}.*out of", MARGIN, x, t, g, **kwargs
        )


@pytest.mark.parametrize("func", LOSSES)
def test_grad_output_of_the_wrong_shape_raises_value_error(func):
    x, t, kwargs = _legacy_case(func)
    none_shape = (4,) if func == MARGIN else (4, 3)
    for reduction, g in (
        ("none", np.ones(4 if func != MARGIN else 3)),
        ("none", np.ones((3, 4))),
        ("none", 1.0),
        ("mean", np.ones(2)),
        ("sum", np.ones(none_shape)),
    ):
        with expected_warnings_ignored(), pytest.raises(ValueError, match="grad_output"):
            getattr(fl, func + "_backward")(g, x, t, reduction=reduction, **kwargs)
        with expected_warnings_ignored(), pytest.raises(ValueError, match="grad_output"):
            getattr(fl, func + "_with_grad")(x, t, reduction=reduction, grad_output=g, **kwargs)


@pytest.mark.parametrize("func", LOSSES)
def test_bad_out_raises(func):
    x, t, kwargs = _legacy_case(func)
    x = x.astype(F32)
    kwargs = {k: v.astype(F32) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    if t.dtype.kind == "f":
        t = t.astype(F32)
    kwargs["reduction"] = "sum"
    for out in (
        np.empty((3, 4), F32),
        np.empty((4, 3), F64),
        np.empty((4, 3, 1), F32),
        np.empty(12, F32),
        np.empty((4, 3), np.float16),
        np.empty((4, 3), np.int32),
    ):
        with pytest.raises(ValueError, match="out"):
            getattr(fl, func + "_backward")(1.0, x, t, out=out, **kwargs)
        with pytest.raises(ValueError, match="out"):
            getattr(fl, func + "_with_grad")(x, t, out=out, **kwargs)
    readonly = np.empty((4, 3), F32)
    readonly.flags.writeable = False
    for call in (
        lambda: getattr(fl, func + "_backward")(1.0, x, t, out=readonly, **kwargs),
        lambda: getattr(fl, func + "_with_grad")(x, t, out=readonly, **kwargs),
    ):
        with pytest.raises(ValueError, match="out"):
            call()
    with pytest.raises(TypeError, match="out"):
        getattr(fl, func + "_with_grad")(x, t, out=[[0.0] * 3] * 4, **kwargs)


# ---------------------------------------------------------------------------------------------
# Dtype rules: where torch rejects only a dtype, fastloss computes the obvious result


@pytest.mark.parametrize("target_dtype", TARGET_DTYPES, ids=lambda d: np.dtype(d).name)
def test_multi_margin_any_integer_target_dtype(target_dtype):
    rng = _rng("margin-int", np.dtype(target_dtype).name)
    x, t = margin_inputs(rng, (6, 5), (6,), F64)
    for kwargs in ({}, {"p": 2, "weight": positive(rng, (5,), F64), "reduction": "none"}):
        loss, grad = check_reference(MARGIN, x, t.astype(target_dtype), **kwargs)
        g = upstream(loss.shape, F64)
        np.testing.assert_array_equal(loss, fl.multi_margin_loss(x, t, **kwargs))
        np.testing.assert_array_equal(
            fl.multi_margin_loss_backward(g, x, t.astype(target_dtype), **kwargs),
            fl.multi_margin_loss_backward(g, x, t, **kwargs),
        )
    loss = fl.multi_margin_loss(x[0], np.asarray(3, target_dtype), reduction="none")
    assert loss.shape == ()


def test_multi_margin_weight_dtype_need_not_match():
    rng = _rng("margin-weight-dtype")
    x, t = margin_inputs(rng, (6, 5), (6,), F32)
    w = positive(rng, (5,), F64)
    loss, grad = check_reference(MARGIN, x, t, weight=w)
    assert loss.dtype == F32 and grad.dtype == F32


INT_PROMOTIONS = [
    # (func, input dtype, target dtype, result dtype)
    (KL, np.int64, np.int64, F32),
    (KL, np.int32, F32, F32),
    (KL, np.int64, F64, F64),
    (KL, F32, np.int64, F32),
    (KL, F64, np.int8, F64),
    (MSE, np.int64, np.int64, F32),
    (MSE, np.int16, F64, F64),
    (MSE, F32, np.int64, F32),
    (MSE, F64, np.uint8, F64),
    (BCE_LOGITS, np.int64, F32, F32),
    (BCE_LOGITS, np.int64, np.int64, F32),
    (BCE_LOGITS, F64, np.int64, F64),
    (BCE_LOGITS, F32, np.int32, F32),
    (BCE, F32, np.int64, F32),
    (BCE, F64, np.uint8, F64),
]


@pytest.mark.parametrize(
    ("func", "x_dtype", "t_dtype", "expected"),
    INT_PROMOTIONS,
    ids=[f"{f}-{np.dtype(a).name}-{np.dtype(b).name}" for f, a, b, _ in INT_PROMOTIONS],
)
def test_integer_inputs_are_promoted(func, x_dtype, t_dtype, expected):
    """Integers compute as float32 (NumPy-style promotion with float32 as the default float),
    instead of torch's 'not implemented for Long'."""
    rng = _rng("int-promotion", func, np.dtype(x_dtype).name, np.dtype(t_dtype).name)
    shape = (3, 4)
    if func == BCE:
        x = rng.uniform(0.05, 0.95, shape).astype(x_dtype)
    elif np.dtype(x_dtype).kind in "iu":
        x = rng.integers(-3, 4, shape).astype(x_dtype)
    else:
        x = rng.standard_normal(shape).astype(x_dtype)
    low = 0 if func in (KL, BCE, BCE_LOGITS) or np.dtype(t_dtype).kind == "u" else -3
    high = 2 if func in (BCE, BCE_LOGITS) else 4
    if np.dtype(t_dtype).kind in "iu":
        t = rng.integers(low, high, shape).astype(t_dtype)
    else:
        t = rng.uniform(0, 1, shape).astype(t_dtype)
    for reduction in reductions_of(func):
        with expected_warnings_ignored():
            loss, grad = fastloss_all(
                func,
                x,
                t,
                1.0 if reduction != "none" else np.ones(shape, expected),
                reduction=reduction,
            )
        assert loss.dtype == expected, (reduction, loss.dtype)
        assert grad.dtype.kind == "f" and grad.shape == shape
        if np.dtype(x_dtype).kind == "f":
            assert grad.dtype == x_dtype
        elif np.dtype(t_dtype) != F64:
            assert grad.dtype == F32
        ref_loss = getattr(reference, func)(_f64(x), _f64(t), reduction=reduction)
        ref_grad = getattr(reference, func + "_backward")(
            1.0, _f64(x), _f64(t), reduction=reduction
        )
        assert_close(loss, ref_loss, expected, what=f"{func} {reduction}")
        assert_close(grad, ref_grad, grad.dtype, grad=True, what=f"{func} {reduction} grad")


MIXED = [(func, a, b) for func in (KL, MSE, BCE, BCE_LOGITS) for a, b in ((F32, F64), (F64, F32))]


@pytest.mark.parametrize(
    ("func", "x_dtype", "t_dtype"), MIXED, ids=[f"{f}-{a}-{b}" for f, a, b in MIXED]
)
def test_mixed_float_dtypes(torch1, func, x_dtype, t_dtype):
    """float32 with float64 computes in float64 (kl_div, mse_loss, binary_cross_entropy);
    binary_cross_entropy_with_logits returns the target's dtype (torch's quirk). The gradient
    always has the input's dtype."""
    rng = _rng("mixed", func, str(x_dtype), str(t_dtype))
    x, t = elementwise_inputs(func, rng, (3, 4), F64)
    x, t = x.astype(x_dtype), t.astype(t_dtype)
    expected_dtype = t_dtype if func == BCE_LOGITS else F64
    for reduction in reductions_of(func):
        loss, grad = check_reference(func, x, t, reduction=reduction)
        assert loss.dtype == expected_dtype and grad.dtype == x_dtype
        if func == BCE:
            continue  # torch rejects mixed dtypes for binary_cross_entropy
        expected, expected_grad = torch_all(
            torch1, func, x, t, 1.0 if reduction != "none" else np.ones((3, 4)), reduction=reduction
        )
        assert expected.dtype == expected_dtype
        # torch computes part of the mixed expression in float32 (log of a float32 target,
        # logsigmoid of a float32 input) before promoting: compare at float32 accuracy (the
        # float64 accuracy of fastloss is checked against the reference above).
        assert_close(
            np.asarray(loss).astype(F32),
            np.asarray(expected).astype(F32),
            F32,
            scale=2,
            what=f"{func} {reduction} vs torch",
        )


# ---------------------------------------------------------------------------------------------
# float16 and bfloat16


def _half_cases(dtype):
    cases = []
    for func in ELEMENTWISE:
        for shape in ((6, 5), (7,)):
            for options in option_grid(func, shape)[:: 5 if func == BCE_LOGITS else 2]:
                cases.append((func, shape, None, options))
    for case in ("NxC", "C-target0d"):
        shape, tshape = MARGIN_SHAPES[case]
        for options in option_grid(MARGIN, shape)[::7]:
            cases.append((MARGIN, shape, tshape, options))
    return cases


HALF_CASES = [(dtype, case) for dtype in (F16, BF16) for case in _half_cases(dtype)]


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("func", LOSSES)
def test_half_dtypes_match_reference(func, dtype):
    """float16 / bfloat16 inputs (and targets, weights) work for all five losses: results and
    gradients have the input's dtype and are close to the float64 reference on the same
    values (torch has no multi_margin_loss for them; fastloss does)."""
    for _, (f, shape, tshape, options) in HALF_CASES:
        if f != func:
            continue
        x, t, kwargs = make_case(func, shape, F64, "contiguous", options, tshape, key="half")
        x = x.astype(dtype)
        if func != MARGIN:
            t = t.astype(dtype)
        for name in ("weight", "pos_weight"):
            if name in kwargs:
                kwargs[name] = kwargs[name].astype(dtype)
        snapshot = _snapshot(x, t)
        loss, grad = check_reference(func, x, t, what=f"{dtype} {shape_id(shape)}", **kwargs)
        assert loss.dtype == dtype and grad.dtype == dtype
        out = np.full(x.shape, 5.0, dtype)
        with expected_warnings_ignored():
            fused_loss, fused_grad = getattr(fl, func + "_with_grad")(x, t, out=out, **kwargs)
        assert fused_grad is out
        np.testing.assert_array_equal(
            _f64(out), _f64(getattr(fl, func + "_with_grad")(x, t, **kwargs)[1])
        )
        _assert_unchanged(snapshot, f"{func} {dtype}")


# ---------------------------------------------------------------------------------------------
# out= (including in place) and inputs never modified


def _out_cases():
    rng = _rng("out")
    cases = []
    x, t = elementwise_inputs(KL, rng, (4, 5), F32)
    cases.append(("kl", KL, x, t, {"log_target": False}))
    x5 = as_dtype(rng.standard_normal(5), F32)
    cases.append(("kl broadcast input (5,)", KL, x5, t, {}))
    x, t = elementwise_inputs(BCE, rng, (4, 5), F32)
    cases.append(("bce", BCE, x, t, {"weight": positive(rng, (4, 1), F32)}))
    x, t = elementwise_inputs(BCE_LOGITS, rng, (4, 5), F32)
    kwargs = {"weight": positive(rng, (5,), F32), "pos_weight": positive(rng, (4, 5), F32)}
    cases.append(("bce_logits", BCE_LOGITS, x, t, kwargs))
    x, t = elementwise_inputs(MSE, rng, (4, 5), F32)
    cases.append(("mse", MSE, x, t, {"weight": positive(rng, (4, 5), F32)}))
    cases.append(("mse broadcast input (1,5)", MSE, x[:1].copy(), t, {}))
    cases.append(("mse broadcast input (4,1)", MSE, x[:, :1].copy(), t[:1].copy(), {}))
    x, t = margin_inputs(rng, (4, 5), (4,), F32)
    cases.append(("margin", MARGIN, x, t, {"weight": positive(rng, (5,), F32)}))
    cases.append(("margin p=2 unbatched", MARGIN, x[1].copy(), np.array(t[1]), {"p": 2}))
    return cases


OUT_CASES = _out_cases()
OUT_IDS = [c[0].replace(" ", "_") for c in OUT_CASES]


@pytest.mark.parametrize("reduction", REDUCTIONS + ("batchmean",))
@pytest.mark.parametrize("case", OUT_CASES, ids=OUT_IDS)
def test_out_is_returned_and_equals_the_result(case, reduction):
    _, func, x, t, kwargs = case
    if reduction == "batchmean" and func != KL:
        pytest.skip("'batchmean' is kl_div's")
    kwargs = {**kwargs, "reduction": reduction}
    with expected_warnings_ignored():
        loss, expected = getattr(fl, func + "_with_grad")(x, t, **kwargs)
    g = ones_like_loss(loss)
    for layout in ("C", "F", "strided"):
        if layout == "C" or x.ndim == 0:
            out = np.full(x.shape, 7.0, F32)
        elif layout == "F":
            out = np.full(x.shape, 7.0, F32, order="F")
        else:
            out = np.full(x.shape[:-1] + (2 * x.shape[-1],), 7.0, F32)[..., ::2]
        with expected_warnings_ignored():
            got = getattr(fl, func + "_backward")(g, x, t, out=out, **kwargs)
        assert got is out
        np.testing.assert_array_equal(out, expected)
        out[...] = 7.0
        with expected_warnings_ignored():
            got_loss, got = getattr(fl, func + "_with_grad")(x, t, out=out, **kwargs)
        assert got is out
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(got_loss, loss)


@pytest.mark.parametrize("reduction", REDUCTIONS + ("batchmean",))
@pytest.mark.parametrize("case", OUT_CASES, ids=OUT_IDS)
def test_out_may_be_the_input(case, reduction):
    """out=input: the gradient overwrites the input only after every read of it (the loss,
    rows of multi_margin, broadcast sums of mse_loss)."""
    _, func, x, t, kwargs = case
    if reduction == "batchmean" and func != KL:
        pytest.skip("'batchmean' is kl_div's")
    kwargs = {**kwargs, "reduction": reduction}
    with expected_warnings_ignored():
        loss, expected = getattr(fl, func + "_with_grad")(x, t, **kwargs)
    g = ones_like_loss(loss)
    for layout in ("C", "F"):
        buffer = np.array(x, order=layout, copy=True)
        with expected_warnings_ignored():
            got = getattr(fl, func + "_backward")(g, buffer, t, out=buffer, **kwargs)
        assert got is buffer
        np.testing.assert_array_equal(buffer, expected, err_msg=f"{func}_backward in place")
        buffer = np.array(x, order=layout, copy=True)
        with expected_warnings_ignored():
            got_loss, got = getattr(fl, func + "_with_grad")(buffer, t, out=buffer, **kwargs)
        assert got is buffer
        np.testing.assert_array_equal(buffer, expected, err_msg=f"{func}_with_grad in place")
        np.testing.assert_array_equal(got_loss, loss, err_msg=f"{func}_with_grad in-place loss")


def _snapshot(*arrays):
    return [(a, a.copy()) for a in arrays if isinstance(a, np.ndarray)]


def _assert_unchanged(snapshot, what):
    for a, copy in snapshot:
        np.testing.assert_array_equal(a, copy, err_msg=f"{what}: an input was modified")


@pytest.mark.parametrize("reduction", REDUCTIONS + ("batchmean",))
@pytest.mark.parametrize("case", OUT_CASES, ids=OUT_IDS)
def test_inputs_are_not_modified(case, reduction):
    _, func, x, t, kwargs = case
    if reduction == "batchmean" and func != KL:
        pytest.skip("'batchmean' is kl_div's")
    kwargs = {**kwargs, "reduction": reduction}
    with expected_warnings_ignored():
        loss = np.asarray(getattr(fl, func)(x, t, **kwargs))
    for layout in ("contiguous", "strided"):
        xi, ti = (x, t) if layout == "contiguous" else (strided(x), strided(t, 1))
        kw = dict(kwargs)
        if layout == "strided":
            kw = {k: strided(v, 2) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        g = upstream(loss.shape, F32)
        snapshot = _snapshot(xi, ti, g, *kw.values())
        with expected_warnings_ignored():
            getattr(fl, func)(xi, ti, **kw)
            getattr(fl, func + "_backward")(g, xi, ti, **kw)
            getattr(fl, func + "_with_grad")(xi, ti, grad_output=g, **kw)
            getattr(fl, func + "_with_grad")(xi, ti, **kw)
        _assert_unchanged(snapshot, f"{func} {layout}")
    # Read-only inputs are accepted (and would raise if written).
    readonly = [np.array(a) for a in (x, t, *kwargs.values()) if isinstance(a, np.ndarray)]
    for a in readonly:
        a.flags.writeable = False
    xr, tr = readonly[:2]
    kw = dict(kwargs)
    for name in ("weight", "pos_weight"):
        if name in kw:
            kw[name] = np.array(kw[name])
            kw[name].flags.writeable = False
    with expected_warnings_ignored():
        getattr(fl, func + "_with_grad")(xr, tr, **kw)
        getattr(fl, func + "_backward")(upstream(loss.shape, F32), xr, tr, **kw)


def _address_cases():
    rng = _rng("address")
    n = 40
    cases = []
    for dtype in (F32, F64):
        for func in ELEMENTWISE:
            x, t = elementwise_inputs(func, rng, (n,), dtype)
            kwargs = {"pos_weight": positive(rng, (n,), dtype)} if func == BCE_LOGITS else {}
            cases.append((f"{func} {dtype}", func, x, t, kwargs))
        x, t = margin_inputs(rng, (8, 5), (8,), dtype)
        cases.append((f"{MARGIN} {dtype}", MARGIN, x, t, {"p": 2}))
    return cases


ADDRESS_CASES = _address_cases()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("case", ADDRESS_CASES, ids=[c[0].replace(" ", "-") for c in ADDRESS_CASES])
def test_loss_does_not_depend_on_where_the_gradient_is_written(case, reduction):
    """The loss is a function of the values only: ``_with_grad`` writing its gradient into an
    ``out`` that lies just after the input in memory (not overlapping it), or into the input
    itself, returns the forward's loss bitwise (a fresh gradient buffer can land there too)."""
    _, func, x, t, kwargs = case
    kwargs = {**kwargs, "reduction": reduction}
    with expected_warnings_ignored():
        expected = np.asarray(getattr(fl, func)(x, t, **kwargs))
        _, expected_grad = getattr(fl, func + "_with_grad")(x, t, **kwargs)
    n = x.size
    differing = []
    for gap in [-n, *range(0, 33)]:  # -n: out is the input itself
        storage_ = np.zeros(2 * n + 40, x.dtype)
        xs = storage_[:n].reshape(x.shape)
        xs[...] = x
        start = n + gap
        out = storage_[start : start + n].reshape(x.shape)
        with expected_warnings_ignored():
            loss, grad = getattr(fl, func + "_with_grad")(xs, t, out=out, **kwargs)
        assert grad is out
        np.testing.assert_array_equal(out, expected_grad, err_msg=f"gap {gap}")
        if np.asarray(loss).tobytes() != expected.tobytes():
            differing.append((gap, float(loss)))
    assert not differing, (
        f"{func} {kwargs}: forward loss {float(expected)!r}, but _with_grad gives "
        f"(gap between input and out, loss) {differing}"
    )


def test_array_likes_are_accepted(torch1):
    x, y = [[0.2, 0.7], [0.5, 0.9]], [[0.0, 1.0], [1.0, 0.5]]
    expected = fl.binary_cross_entropy(np.array(x), np.array(y))
    np.testing.assert_array_equal(fl.binary_cross_entropy(x, y), expected)
    xt = torch1.tensor(x, dtype=torch1.float64)
    np.testing.assert_array_equal(
        fl.binary_cross_entropy(xt, torch1.tensor(y, dtype=torch1.float64)), expected
    )
    loss, grad = fl.mse_loss_with_grad(xt, torch1.tensor(y, dtype=torch1.float64))
    assert isinstance(grad, np.ndarray) and grad.dtype == F64
    loss, grad = fl.multi_margin_loss_with_grad([[1.0, 2.0, 0.5]], [1], weight=[1.0, 2.0, 3.0])
    assert isinstance(grad, np.ndarray) and grad.shape == (1, 3)
    loss, grad = fl.kl_div_with_grad(x, y, reduction="batchmean")
    assert grad.shape == (2, 2)


# ---------------------------------------------------------------------------------------------
# Threads: every reduction and entry point is bitwise identical for 1 and 2 threads


def _thread_cases():
    rng = _rng("threads")
    shape = (256, 256)  # 65536 elements: the parallel path
    cases = []
    x, t = elementwise_inputs(KL, rng, shape, F32)
    x[3, :7] = -INF
    cases.append(("kl f32", KL, x, t, {}))
    x, t = elementwise_inputs(KL, rng, shape, F64, log_target=True)
    cases.append(("kl log_target f64", KL, x, t, {"log_target": True}))
    x, t = elementwise_inputs(BCE, rng, shape, F32)
    cases.append(("bce f32 weight (C,)", BCE, x, t, {"weight": positive(rng, shape[1:], F32)}))
    x, t = elementwise_inputs(BCE_LOGITS, rng, shape, F64)
    kwargs = {"weight": positive(rng, (256, 1), F64), "pos_weight": positive(rng, (256,), F64)}
    cases.append(("bce_logits f64 weights", BCE_LOGITS, x, t, kwargs))
    x, t = elementwise_inputs(BCE_LOGITS, rng, shape, F32)
    cases.append(("bce_logits f32", BCE_LOGITS, x, t, {}))
    x, t = elementwise_inputs(MSE, rng, shape, F32)
    cases.append(("mse f32", MSE, x, t, {}))
    cases.append(("mse f32 broadcast target", MSE, x, t[:1].copy(), {}))
    x, t = elementwise_inputs(MSE, rng, shape, F64)
    cases.append(("mse f64 weight", MSE, x, t, {"weight": positive(rng, shape, F64)}))
    x, t = margin_inputs(rng, (2048, 32), (2048,), F32)
    kwargs = {"weight": positive(rng, (32,), F32)}
    cases.append(("margin f32 p=1 weight", MARGIN, x, t, kwargs))
    x, t = margin_inputs(rng, (1024, 64), (1024,), F64)
    cases.append(("margin f64 p=2", MARGIN, x, t, {"p": 2, "margin": 0.5}))
    return cases


THREAD_CASES = _thread_cases()
THREAD_IDS = [c[0].replace(" ", "_") for c in THREAD_CASES]


def _thread_results(func, x, t, kwargs):
    results = {}
    with expected_warnings_ignored():
        for reduction in reductions_of(func):
            kw = {**kwargs, "reduction": reduction}
            results[reduction] = np.asarray(getattr(fl, func)(x, t, **kw))
            loss, grad = getattr(fl, func + "_with_grad")(x, t, **kw)
            results[reduction + " fused loss"] = np.asarray(loss)
            results[reduction + " fused grad"] = grad
            g = upstream(np.shape(loss), np.asarray(loss).dtype)
            results[reduction + " backward"] = getattr(fl, func + "_backward")(g, x, t, **kw)
    return results


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("case", THREAD_CASES, ids=THREAD_IDS)
def test_one_and_two_threads_agree_bitwise(case, monkeypatch):
    from fastloss import _kernels_losses as K

    label, func, x, t, kwargs = case
    # Spy on the parallel twins: the comparison means something only if they ran.
    parallel_calls = []
    for name, obj in vars(K).items():
        if hasattr(obj, "parallel") and hasattr(obj, "serial"):

            def spy(*args, _name=name, _twin=obj.parallel):
                parallel_calls.append(_name)
                return _twin(*args)

            monkeypatch.setattr(obj, "parallel", spy)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _thread_results(func, x, t, kwargs)
        numba.set_num_threads(2)
        two = _thread_results(func, x, t, kwargs)
    finally:
        numba.set_num_threads(previous)
    assert parallel_calls, f"{label}: no parallel kernel ran"
    for name in one:
        assert one[name].tobytes() == two[name].tobytes(), f"{label} {name}: not bitwise equal"


@pytest.mark.parametrize("case", THREAD_CASES, ids=THREAD_IDS)
def test_parallel_path_matches_reference(case):
    label, func, x, t, kwargs = case
    for reduction in reductions_of(func):
        check_reference(func, x, t, what=label, reduction=reduction, **kwargs)
