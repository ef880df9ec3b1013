"""Conformance of the class-index losses: nll_loss and cross_entropy (forward, backward, fused).

Every function (``<name>``, ``<name>_backward``, ``<name>_with_grad``) is checked

* against ``fastloss.reference`` run in float64 on the upcast inputs, with the tolerances of
  shared/reference/torch-semantics.md section 12, over the option space (weight, ignore_index,
  label_smoothing, reduction, legacy size_average/reduce), index and probability targets,
  every rank from (C,) to (N, C, d1, d2, d3), float32 and float64, every integer target dtype
  and non-contiguous layouts: the full product on tiny shapes, a sample on bigger ones;
* against torch (forward values and autograd gradients for a random upstream gradient);
* on the special values of section 11 and the worked examples of the seed documents;
* by property tests (hypothesis): ``_with_grad`` is forward plus backward, and the gradient
  of mean cross-entropy sums to zero over the classes of each row;
* for errors, ``out=`` (including in place), input immutability, thread-count independence,
  float16/bfloat16 inputs and float32 accuracy against torch's.
"""

from __future__ import annotations

import itertools
import warnings
import zlib

import ml_dtypes
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastloss as fl
from fastloss import _registry, reference

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from .adversarial import adversarial_ids, adversarial_inputs
except ImportError:
    from adversarial import adversarial_ids, adversarial_inputs

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
INF, NAN = np.inf, np.nan

FUNCS = ("cross_entropy", "nll_loss")
REDUCTIONS = ("none", "mean", "sum")
TARGET_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8)
CLASSES = 5
# One tiny shape per rank: (C,), (N, C), (N, C, d1), (N, C, d1, d2), (N, C, d1, d2, d3).
RANK_SHAPES = {
    1: (CLASSES,),
    2: (4, CLASSES),
    3: (3, CLASSES, 2),
    4: (2, CLASSES, 3, 2),
    5: (2, CLASSES, 2, 1, 3),
}
LAYOUTS = ("contiguous", "strided")


# ---------------------------------------------------------------------------------------------
# Inputs


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def class_count(shape) -> int:
    return shape[1] if len(shape) > 1 else shape[0]


def target_shape(shape) -> tuple[int, ...]:
    """The class-index target's shape (and the 'none' loss shape) for an input ``shape``."""
    return (shape[0],) + tuple(shape[2:]) if len(shape) > 1 else ()


def logits(rng, shape, dtype) -> np.ndarray:
    return (rng.standard_normal(shape) * 3).astype(dtype)


def index_target(rng, shape, ignore_index=-100, dtype=np.int64) -> np.ndarray:
    """Random classes; one entry (of several) set to ``ignore_index`` when ``dtype`` holds it."""
    classes = class_count(shape)
    t = np.asarray(rng.integers(0, classes, target_shape(shape)))
    if t.ndim == 0:
        t = np.asarray(classes - 1)
    info = np.iinfo(dtype)
    if t.size >= 2 and info.min <= ignore_index <= info.max:
        t.flat[0] = ignore_index
    return t.astype(dtype)


def probability_target(rng, shape, dtype) -> np.ndarray:
    """Rows of probabilities along the class axis (torch does not require it; we do not)."""
    y = rng.random(shape)
    axis = 1 if len(shape) > 1 else 0
    return (y / y.sum(axis=axis, keepdims=True)).astype(dtype)


def class_weight(rng, shape, dtype) -> np.ndarray:
    return rng.uniform(0.5, 2.0, class_count(shape)).astype(dtype)


def strided(a: np.ndarray, kind: int = 0) -> np.ndarray:
    """The same values in a non-contiguous layout (a step slice, Fortran order or reversed)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a
    kind %= 3 if a.ndim >= 2 else 2
    if kind == 0:
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        view = wide[..., ::2]
    elif kind == 1:
        view = np.flip(np.flip(a).copy())
    else:
        view = np.asfortranarray(a)
    assert not view.flags.c_contiguous or a.size <= 1
    np.testing.assert_array_equal(view, a)
    return view


def upstream(shape, dtype, rng=None) -> np.ndarray:
    """A random upstream gradient of ``shape`` in ``dtype``."""
    rng = _rng("upstream", shape) if rng is None else rng
    return np.asarray(rng.standard_normal(shape)).astype(dtype)


def option_grid(func: str, kind: str = "index"):
    """Every combination of the options: weight, ignore_index, label_smoothing, reduction."""
    ignores = (-100, 1, -1) if kind == "index" else (-100, -1)
    smoothings = (0.0, 0.2, 1.0) if func == "cross_entropy" else (None,)
    grid = []
    for weighted, ii, eps, reduction in itertools.product(
        (False, True), ignores, smoothings, REDUCTIONS
    ):
        options = {"ignore_index": ii, "reduction": reduction}
        if eps is not None:
            options["label_smoothing"] = eps
        grid.append((weighted, options))
    return grid


# ---------------------------------------------------------------------------------------------
# Comparison machinery


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def forward_tolerance(dtype, classes: int) -> tuple[float, float]:
    """(rtol, atol) against the float64 reference (section 12)."""
    if np.dtype(dtype) == F64:
        return 1e-10, 1e-12
    tol = max(2e-5, 1e-8 * classes)
    return tol, tol


def grad_tolerance(classes: int) -> float:
    """Normwise float32 gradient bound: max|a - ref| <= tol * max|ref|."""
    return max(1e-5, 1e-8 * classes)


def _assert_specials(got64, expected, what):
    np.testing.assert_array_equal(np.isnan(got64), np.isnan(expected), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(np.isinf(got64), np.isinf(expected), err_msg=f"{what}: inf")
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(got64[infinite], expected[infinite], err_msg=f"{what}: inf sign")


def assert_close(got, ref, dtype, classes=1, *, grad=False, scale=1.0, what=""):
    """``got`` (computed in ``dtype``) against ``ref`` with the section 12 tolerances.

    Shapes and dtypes must match; NaN and inf positions must match exactly (after rounding
    ``ref`` to ``dtype``). float64: elementwise rtol 1e-10 / atol 1e-12. float32: forward
    rtol = atol = max(2e-5, 1e-8 C), gradients normwise. ``scale`` multiplies the tolerances
    (2 when ``ref`` is torch's float32 result).
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
        if grad and dtype != F64:
            error = np.max(np.abs(a - r))
            bound = scale * grad_tolerance(classes) * np.max(np.abs(r))
            assert error <= bound, f"{what}: normwise error {error:.3g} > {bound:.3g}"
        else:
            rtol, atol = forward_tolerance(dtype, classes)
            np.testing.assert_allclose(a, r, rtol=scale * rtol, atol=scale * atol, err_msg=what)


def fastloss_all(func, x, t, g, **kwargs):
    """fastloss's forward, backward and fused results; checks that the fused ones are the same.

    ``_with_grad`` must give the forward's loss and the backward's gradient exactly (they are
    documented as equal), bitwise, with NaN positions equal.
    """
    loss = getattr(fl, func)(x, t, **kwargs)
    grad = getattr(fl, func + "_backward")(g, x, t, **kwargs)
    fused_loss, fused_grad = getattr(fl, func + "_with_grad")(x, t, grad_output=g, **kwargs)
    np.testing.assert_array_equal(fused_loss, loss, err_msg=f"{func}_with_grad loss {kwargs}")
    np.testing.assert_array_equal(fused_grad, grad, err_msg=f"{func}_with_grad grad {kwargs}")
    assert fused_loss.dtype == loss.dtype and fused_grad.dtype == grad.dtype
    return loss, grad


def reference_all(func, x, t, g, **kwargs):
    """The float64 oracle on the upcast inputs."""
    kwargs = dict(kwargs)
    kwargs["weight"] = _f64(kwargs.get("weight"))
    t = _f64(t) if np.asarray(t).dtype.kind == "f" else t
    loss = getattr(reference, func)(_f64(x), t, **kwargs)
    grad = getattr(reference, func + "_backward")(_f64(g), _f64(x), t, **kwargs)
    return loss, grad


def check_reference(func, x, t, g=None, *, what="", **kwargs):
    """fastloss against the float64 reference; returns fastloss's (loss, grad)."""
    x = np.asarray(x)
    dtype = x.dtype
    if g is None:
        g = upstream(loss_shape_of(x, t, kwargs.get("reduction", "mean")), dtype)
    loss, grad = fastloss_all(func, x, t, g, **kwargs)
    ref_loss, ref_grad = reference_all(func, x, t, g, **kwargs)
    classes = class_count(x.shape) if x.ndim else 1
    what = f"{func} {what} {kwargs_repr(kwargs)}"
    assert_close(loss, ref_loss, dtype, classes, what=what)
    assert_close(grad, ref_grad, dtype, classes, grad=True, what=what + " grad")
    return loss, grad


def loss_shape_of(x, t, reduction) -> tuple[int, ...]:
    """The forward result's shape: the target's for index targets, the input's without the
    class axis for probability targets, () for 'mean'/'sum' and unbatched input."""
    if reduction != "none" or np.ndim(x) <= 1:
        return ()
    if np.shape(t) == np.shape(x):
        return x.shape[:1] + x.shape[2:]
    return np.shape(t)


def _ref_kwargs(kwargs):
    out = dict(kwargs)
    out["weight"] = _f64(out.get("weight"))
    return out


def kwargs_repr(kwargs) -> str:
    return str({k: (v if not isinstance(v, np.ndarray) else "array") for k, v in kwargs.items()})


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
    if a.dtype == BF16:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    elif a.dtype.kind in "iub":
        t = torch.from_numpy(a.astype(np.int64))
    else:
        t = torch.from_numpy(a)
    return t.requires_grad_(requires_grad)


def from_torch(torch, t) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.numpy()


def torch_all(torch, func, x, t, g, **kwargs):
    """torch's forward result and autograd gradient for the upstream gradient ``g``."""
    x = np.asarray(x)
    xt = to_torch(torch, x, requires_grad=True)
    kwargs = dict(kwargs)
    if kwargs.get("weight") is not None:
        kwargs["weight"] = to_torch(torch, np.asarray(kwargs["weight"]).astype(x.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy arguments warn in torch too
        out = getattr(torch.nn.functional, func)(xt, to_torch(torch, t), **kwargs)
    if g is None:  # forward only
        return from_torch(torch, out), None
    g = np.asarray(g).astype(from_torch(torch, out).dtype)
    out.backward(to_torch(torch, g))
    grad = xt.grad if xt.grad is not None else torch.zeros_like(xt)
    return from_torch(torch, out), from_torch(torch, grad)


def check_torch(torch, func, x, t, g=None, *, what="", **kwargs):
    x = np.asarray(x)
    dtype = x.dtype
    loss = getattr(fl, func)(x, t, **kwargs)
    if g is None:
        g = upstream(np.shape(loss), loss.dtype)
    grad = getattr(fl, func + "_backward")(g, x, t, **kwargs)
    expected, expected_grad = torch_all(torch, func, x, t, g, **kwargs)
    classes = class_count(x.shape) if x.ndim else 1
    what = f"{func} vs torch {what} {kwargs_repr(kwargs)}"
    scale = 1.0 if dtype == F64 else 2.0
    assert_close(loss, expected, expected.dtype, classes, scale=scale, what=what)
    assert_close(grad, expected_grad, dtype, classes, grad=True, scale=scale, what=what + " grad")
    return loss, grad


# ---------------------------------------------------------------------------------------------
# The option space against the reference


def _index_case(func, rank, dtype, layout, weighted, options, target_dtype=np.int64):
    shape = RANK_SHAPES[rank]
    rng = _rng(func, rank, str(dtype), layout, weighted, tuple(options.items()))
    x = logits(rng, shape, dtype)
    t = index_target(rng, shape, options["ignore_index"], target_dtype)
    kwargs = dict(options)
    if weighted:
        kwargs["weight"] = class_weight(rng, shape, dtype)
    if func == "nll_loss":
        x = reference.log_softmax(x.astype(np.float64), 1 if rank > 1 else 0).astype(dtype)
    if layout == "strided":
        x, t = strided(x, rank), strided(t, rank + 1)
        if weighted:
            kwargs["weight"] = strided(kwargs["weight"])
    return x, t, kwargs


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("rank", sorted(RANK_SHAPES))
@pytest.mark.parametrize("func", FUNCS)
def test_index_targets_match_reference(func, rank, dtype, layout):
    # The full product for C-contiguous inputs; a third of it (a different third per rank)
    # for the non-contiguous layouts.
    grid = option_grid(func)
    if layout == "strided":
        grid = grid[rank % 3 :: 3]
    for weighted, options in grid:
        x, t, kwargs = _index_case(func, rank, dtype, layout, weighted, options)
        loss, grad = check_reference(func, x, t, what=f"rank {rank} {layout}", **kwargs)
        assert loss.shape == (target_shape(x.shape) if options["reduction"] == "none" else ())
        assert grad.shape == x.shape


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("rank", sorted(RANK_SHAPES))
def test_probability_targets_match_reference(rank, dtype, layout):
    shape = RANK_SHAPES[rank]
    grid = option_grid("cross_entropy", "probability")
    if layout == "strided":
        grid = grid[rank % 3 :: 3]
    for weighted, options in grid:
        rng = _rng("prob", rank, str(dtype), layout, weighted, tuple(options.items()))
        x, y = logits(rng, shape, dtype), probability_target(rng, shape, dtype)
        if rank > 1:
            y.flat[0] = -0.25  # not validated: any floats, the loss is linear in y
        kwargs = dict(options)
        if weighted:
            kwargs["weight"] = class_weight(rng, shape, dtype)
        if layout == "strided":
            x, y = strided(x, rank), strided(y, rank + 1)
        loss, grad = check_reference("cross_entropy", x, y, what=f"prob rank {rank}", **kwargs)
        expected_shape = shape[:1] + shape[2:] if rank > 1 else ()
        assert loss.shape == (expected_shape if options["reduction"] == "none" else ())


@pytest.mark.parametrize("rank", sorted(RANK_SHAPES))
@pytest.mark.parametrize("target_dtype", TARGET_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("func", FUNCS)
def test_any_integer_target_dtype(func, target_dtype, rank):
    for weighted, options in option_grid(func)[rank::9]:
        x, t, kwargs = _index_case(func, rank, F64, "contiguous", weighted, options, target_dtype)
        assert t.dtype == target_dtype
        loss, grad = check_reference(func, x, t, what=f"target {t.dtype}", **kwargs)
        t64 = t.astype(np.int64)
        g = upstream(loss.shape, F64)
        np.testing.assert_array_equal(loss, getattr(fl, func)(x, t64, **kwargs))
        np.testing.assert_array_equal(
            getattr(fl, func + "_backward")(g, x, t, **kwargs),
            getattr(fl, func + "_backward")(g, x, t64, **kwargs),
        )


def test_bool_and_uint64_targets_are_class_indices():
    x = logits(_rng("bool"), (4, 3), F64)
    t = np.array([True, False, True, True])
    np.testing.assert_array_equal(fl.cross_entropy(x, t), fl.cross_entropy(x, t.astype(int)))
    t = np.array([2, 0, 1, 1], np.uint64)
    np.testing.assert_array_equal(fl.nll_loss(x, t), fl.nll_loss(x, t.astype(int)))


# Bigger shapes: the row kernels across several blocks (C > 512), the strided kernels across
# several tiles (inner > 1024) and a large class axis with spatial dims; a sample of options.
MEDIUM_SHAPES = [(3, 1100), (2, 7, 1030), (2, 600, 3, 5), (1, 3, 2, 700), (1100,)]


def _sampled_options(func, kind, key, count=6):
    grid = option_grid(func, kind)
    picks = _rng("sample", func, kind, key).choice(len(grid), size=count, replace=False)
    return [grid[i] for i in sorted(picks)]


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("shape", MEDIUM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["index", "nll", "probability"])
def test_bigger_shapes_match_reference(kind, shape, dtype):
    func = "nll_loss" if kind == "nll" else "cross_entropy"
    for n, (weighted, options) in enumerate(_sampled_options(func, kind, shape)):
        rng = _rng("medium", kind, shape, str(dtype), n)
        x = logits(rng, shape, dtype)
        if kind == "probability":
            t = probability_target(rng, shape, dtype)
        else:
            t = index_target(rng, shape, options["ignore_index"])
        kwargs = dict(options)
        if weighted:
            kwargs["weight"] = class_weight(rng, shape, dtype)
        if n % 2:
            x = strided(x, n)
        check_reference(func, x, t, what=f"{kind} {shape}", **kwargs)


# The shared adversarial arrays (tests/adversarial.py) as logits, class axis 1 (0 unbatched):
# special rows, -inf masks, huge values, C = 1, N = 0, C = 0, long rows, every layout.
ADVERSARIAL = [item for item in adversarial_inputs() if item.array.ndim >= 1]


@pytest.mark.parametrize("item", ADVERSARIAL, ids=adversarial_ids(ADVERSARIAL))
def test_adversarial_inputs_match_reference(item):
    x = item.array
    shape = x.shape
    snapshot = _snapshot(x)
    rng = _rng("adversarial", item.id)
    classes = class_count(shape)
    if classes == 0:  # every target must be ignored
        t = np.full(target_shape(shape), -100)
    else:
        t = index_target(rng, shape, 0)
    calls = [("nll_loss", t, {}), ("cross_entropy", t, {"ignore_index": 0 if classes else -100})]
    if classes > 0:
        weight = class_weight(rng, shape, x.dtype)
        calls += [
            ("cross_entropy", t, {"weight": weight, "label_smoothing": 0.3}),
            ("cross_entropy", probability_target(rng, shape, x.dtype), {"weight": weight}),
        ]
    reductions = REDUCTIONS
    if x.size > 32768:  # the big ones (parallel paths): fewer calls, to keep the file fast
        calls, reductions = calls[1:], ("none", "sum")
    for func, target, kwargs in calls:
        for reduction in reductions:
            check_reference(func, x, target, what=item.id, reduction=reduction, **kwargs)
    _assert_unchanged(snapshot, item.id)


@pytest.mark.parametrize(
    ("func", "x", "t", "kwargs"),
    [
        ("nll_loss", [[INF], [-INF]], [0, 0], {}),
        ("nll_loss", [[INF], [-INF]], [0, 0], {"reduction": "sum"}),
        ("cross_entropy", [[-INF, 0.0]], [0], {"label_smoothing": 1.0, "reduction": "none"}),
        ("cross_entropy", [[-INF, 0.0]], [0], {"label_smoothing": 1.0}),
        (
            "cross_entropy",
            [[-INF, 0.0], [0.0, -INF]],
            [0, 1],
            {"weight": [1.0, -1.0], "reduction": "sum"},
        ),
        ("cross_entropy", [[0.0, INF], [0.0, -INF]], [1, 1], {"reduction": "mean"}),
    ],
)
def test_special_values_emit_no_warnings(func, x, t, kwargs):
    """inf and NaN results are torch's results, not accidents: no RuntimeWarning on the way
    (torch warns nothing; under -W error a warning would be an exception)."""
    x, t = np.array(x), np.array(t)
    if "weight" in kwargs:
        kwargs = {**kwargs, "weight": np.array(kwargs["weight"])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = getattr(fl, func)(x, t, **kwargs)
        fused_loss, grad = getattr(fl, func + "_with_grad")(x, t, **kwargs)
        getattr(fl, func + "_backward")(np.ones(loss.shape), x, t, **kwargs)
    np.testing.assert_array_equal(fused_loss, loss)
    check_reference(func, x, t, **kwargs)


# ---------------------------------------------------------------------------------------------
# Against torch


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("rank", sorted(RANK_SHAPES))
@pytest.mark.parametrize("func", FUNCS)
def test_index_targets_match_torch(torch1, func, rank, dtype):
    # Half of the product per (rank, dtype): over the two dtypes each rank sees all of it.
    grid = option_grid(func)[(rank + (dtype == F32)) % 2 :: 2]
    for n, (weighted, options) in enumerate(grid):
        layout = LAYOUTS[n % 2]
        x, t, kwargs = _index_case(func, rank, dtype, layout, weighted, options)
        check_torch(torch1, func, x, t, what=f"rank {rank} {layout}", **kwargs)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("rank", sorted(RANK_SHAPES))
def test_probability_targets_match_torch(torch1, rank, dtype):
    shape = RANK_SHAPES[rank]
    for weighted, options in option_grid("cross_entropy", "probability"):
        rng = _rng("prob-torch", rank, str(dtype), weighted, tuple(options.items()))
        x, y = logits(rng, shape, dtype), probability_target(rng, shape, dtype)
        kwargs = dict(options)
        if weighted:
            kwargs["weight"] = class_weight(rng, shape, dtype)
        check_torch(torch1, "cross_entropy", x, y, what=f"prob rank {rank}", **kwargs)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("shape", MEDIUM_SHAPES[:4], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["index", "nll", "probability"])
def test_bigger_shapes_match_torch(torch1, kind, shape, dtype):
    func = "nll_loss" if kind == "nll" else "cross_entropy"
    for n, (weighted, options) in enumerate(_sampled_options(func, kind, shape, count=3)):
        rng = _rng("medium-torch", kind, shape, str(dtype), n)
        x = logits(rng, shape, dtype)
        if kind == "probability":
            t = probability_target(rng, shape, dtype)
        else:
            t = index_target(rng, shape, options["ignore_index"])
        kwargs = dict(options)
        if weighted:
            kwargs["weight"] = class_weight(rng, shape, dtype)
        check_torch(torch1, func, x, t, what=f"{kind} {shape}", **kwargs)


def test_probability_target_dtype_promotion(torch1):
    """A float32 input with a float64 target computes in float64 (torch's promotion); the
    gradient, like every gradient, is typed like the input (torch's autograd casts it)."""
    rng = _rng("promotion")
    x, y = logits(rng, (3, 4), F32), probability_target(rng, (3, 4), F64)
    expected, expected_grad = torch_all(torch1, "cross_entropy", x, y, 1.0)
    assert expected.dtype == F64 and expected_grad.dtype == F32
    loss = fl.cross_entropy(x, y)
    assert loss.dtype == F64
    # torch's log_softmax runs in float32 here: compare at float32 accuracy, and with the
    # float64 reference on the same values at float64 accuracy.
    assert_close(loss.astype(F32), expected.astype(F32), F32, 4, scale=2)
    assert_close(loss, reference.cross_entropy(_f64(x), y), F64, 4)
    for grad in (fl.cross_entropy_backward(1.0, x, y), fl.cross_entropy_with_grad(x, y)[1]):
        assert grad.dtype == F32, f"gradient dtype {grad.dtype} for a float32 input"
        assert_close(grad, expected_grad, F32, 4, grad=True, scale=2)


def test_weight_dtype_need_not_match(torch1):
    """torch insists on weight.dtype == input.dtype; fastloss computes the obvious result."""
    rng = _rng("weight-dtype")
    x, t = logits(rng, (6, 4), F32), index_target(rng, (6, 4))
    w64 = class_weight(rng, (6, 4), F64)
    for func in FUNCS:
        loss = getattr(fl, func)(x, t, weight=w64)
        assert loss.dtype == F32
        expected, _ = torch_all(torch1, func, x, t, 1.0, weight=w64.astype(F32))
        assert_close(loss, expected, F32, 4, scale=2)
        np.testing.assert_allclose(
            getattr(fl, func)(x, t, weight=[1, 2, 3, 4]),
            getattr(fl, func)(x, t, weight=np.array([1, 2, 3, 4], F32)),
        )


@pytest.mark.parametrize("variant", ["plain", "options"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("shape", [(5, 9), (9,), (2, 4, 3, 3), (3, 6, 1100)], ids=str)
@pytest.mark.parametrize("func", FUNCS)
def test_registry_cases(torch1, func, shape, dtype, variant):
    case = _registry.CASES[func]
    assert case.fastloss is getattr(fl, func) and case.has_loss_grad
    assert case.fastloss_with_grad is getattr(fl, func + "_with_grad")
    rng = _rng("registry", func, shape, str(dtype), variant)
    args, kwargs = case.make_args(shape, dtype, rng)
    kwargs = {**kwargs, **dict(case.variants)[variant](shape, dtype, rng)}
    check_reference(func, *args, what=f"registry {variant}", **kwargs)
    check_torch(torch1, func, *args, what=f"registry {variant}", **kwargs)


# ---------------------------------------------------------------------------------------------
# Legacy reduction arguments


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


@pytest.mark.parametrize(("size_average", "reduce"), LEGACY, ids=str)
@pytest.mark.parametrize("func", FUNCS)
def test_legacy_size_average_and_reduce(func, size_average, reduce):
    rng = _rng("legacy", func)
    x = logits(rng, (4, 3, 2), F64)
    t = index_target(rng, (4, 3, 2), 1)
    kwargs = {"weight": class_weight(rng, (4, 3, 2), F64), "ignore_index": 1}
    effective = _legacy_reduction(size_average, reduce)
    g = upstream((4, 2), F64) if effective == "none" else 0.7
    message = (
        "size_average and reduce args will be deprecated, please use "
        f"reduction='{effective}' instead."
    )
    for name, call in _three_calls(func, x, t, g, kwargs):
        expected = call(reduction=effective)
        # The legacy arguments override reduction=, whatever it says.
        for reduction in REDUCTIONS:
            with pytest.warns(UserWarning) as record:
                got = call(size_average=size_average, reduce=reduce, reduction=reduction)
            assert [str(w.message) for w in record] == [message], name
            assert record[0].filename == __file__, f"{name}: warning points at {record[0].filename}"
            _assert_same_results(got, expected, f"{name} legacy {size_average}, {reduce}")


@pytest.mark.parametrize("func", FUNCS)
def test_elementwise_mean_warns_and_means_mean(func):
    rng = _rng("elementwise_mean", func)
    x, t = logits(rng, (4, 3), F32), index_target(rng, (4, 3))
    for name, call in _three_calls(func, x, t, 1.0, {}):
        expected = call(reduction="mean")
        with pytest.warns(UserWarning, match="reduction='elementwise_mean' is deprecated") as rec:
            got = call(reduction="elementwise_mean")
        assert len(rec) == 1, name
        _assert_same_results(got, expected, name)


def test_legacy_warning_text_matches_torch(torch1):
    x, t = np.zeros((2, 3), F32), np.array([0, 1])
    for size_average, reduce in LEGACY:
        with warnings.catch_warnings(record=True) as torch_record:
            warnings.simplefilter("always")
            torch1.nn.functional.cross_entropy(
                to_torch(torch1, x),
                to_torch(torch1, t),
                size_average=size_average,
                reduce=reduce,
            )
        with pytest.warns(UserWarning) as record:
            fl.cross_entropy(x, t, size_average=size_average, reduce=reduce)
        assert [str(w.message) for w in record] == [str(w.message) for w in torch_record]


# ---------------------------------------------------------------------------------------------
# Special values (section 11) and section 4's exact results


def _special_cases(dtype):
    """(name, func, x, target, kwargs): the special rows of sections 3, 4 and 11."""
    dtype = np.dtype(dtype)
    finite = [0.5, -1.0, 2.0]
    rows = {
        "all-inf": [-INF, -INF, -INF],
        "+inf": [0.0, INF, 1.0],
        "nan": [0.0, NAN, 1.0],
        "-inf,+inf": [-INF, INF, 0.0],
    }
    cases = []
    for name, row in rows.items():
        x = np.array([finite, row, finite], dtype)
        for func in FUNCS:
            for t, tag in (([2, 0, 1], "kept"), ([2, 1, 1], "ignored")):
                for eps in (0.0, 0.3) if func == "cross_entropy" else (None,):
                    kwargs = {"ignore_index": 1 if tag == "ignored" else -100}
                    if eps is not None:
                        kwargs["label_smoothing"] = eps
                    cases.append((f"row {name} {tag}", func, x, np.array(t), kwargs))
        # The same row at one position of a spatial input (the strided kernels).
        xs = np.stack([np.array([finite, row, finite, finite], dtype).T] * 2)  # (2, 3, 4)
        for func in FUNCS:
            for ii in (-100, 1):
                t = np.array([[0, 1, 2, 0], [1, 2, 0, 2]])
                cases.append((f"spatial {name} ii={ii}", func, xs, t, {"ignore_index": ii}))
        if dtype == F64 or name == "+inf":
            cases.append(
                (f"prob row {name}", "cross_entropy", x, np.full((3, 3), 1 / 3, dtype), {})
            )
    target_inf = np.array([[-INF, 1.0, 2.0], [0.0, -INF, 1.0]], dtype)
    for eps in (0.0, 0.2):
        cases.append(
            (
                "target at -inf",
                "cross_entropy",
                target_inf,
                np.array([0, 1]),
                {"label_smoothing": eps},
            )
        )
        cases.append(
            (
                "-inf elsewhere",
                "cross_entropy",
                target_inf,
                np.array([2, 2]),
                {"label_smoothing": eps},
            )
        )
    cases.append(("nll at -inf", "nll_loss", target_inf, np.array([0, 2]), {}))
    prob_zero = np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype)
    cases.append(("prob 0 at -inf", "cross_entropy", target_inf, prob_zero, {}))
    cases.append(
        (
            "prob 0 at -inf smoothed",
            "cross_entropy",
            target_inf,
            prob_zero,
            {"label_smoothing": 0.1},
        )
    )
    huge = np.array([[1e30, 0.0, -1e30], [1e4, 2e4, 3e4], [3e4, 2e4, 1e4]], dtype)
    for t in ([0, 2, 1], [1, 2, 1]):
        cases.append((f"huge t={t}", "cross_entropy", huge, np.array(t), {}))
    zero_w = np.array([0.0, 0.0, 1.0], dtype)
    x3 = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0], [2.0, 0.0, 0.5]], dtype)
    for func in FUNCS:
        cases.append(("zero weight sum", func, x3, np.array([0, 1, 0]), {"weight": zero_w}))
        cases.append(
            (
                "zero weight sum, one ignored",
                func,
                x3,
                np.array([0, 1, 2]),
                {"weight": zero_w, "ignore_index": 2},
            )
        )
        # W = 0 with nonzero weights: 'mean' is +-inf. torch's cross_entropy gradient is
        # inf * p - inf = NaN at the target entries, and fastloss agrees; fastloss.reference
        # computes inf * (p - 1) = -inf there instead, so the reference comparison of this
        # case fails because of the reference (reported), while the torch comparison passes.
        cases.append(
            (
                "negative weights sum to zero",
                func,
                x3,
                np.array([0, 1, 2]),
                {"weight": np.array([1.0, 1.0, -2.0], dtype)},
            )
        )
        cases.append(("all ignored", func, x3, np.array([-100, -100, -100]), {}))
        cases.append(
            (
                "all ignored, valid class",
                func,
                x3,
                np.array([2, 2, 2]),
                {"ignore_index": 2, "weight": zero_w + 1},
            )
        )
        cases.append(("one class", func, x3[:, :1], np.array([0, 0, 0]), {}))
        cases.append(("unbatched ignored", func, x3[0], np.array(-100), {}))
        cases.append(("unbatched target (1,)", func, x3[0], np.array([2]), {}))
        cases.append(("ignore_index >= C", func, x3, np.array([7, 0, 7]), {"ignore_index": 7}))
        cases.append(("ignore_index < -1", func, x3, np.array([-5, 0, 2]), {"ignore_index": -5}))
    cases.append(
        (
            "zero weight sum smoothed",
            "cross_entropy",
            x3,
            np.array([0, 1, 0]),
            {"weight": zero_w, "label_smoothing": 0.2},
        )
    )
    cases.append(
        (
            "all ignored smoothed",
            "cross_entropy",
            x3,
            np.array([1, 1, 1]),
            {"ignore_index": 1, "label_smoothing": 0.2},
        )
    )
    cases.append(
        (
            "one class smoothed",
            "cross_entropy",
            x3[:, :1],
            np.array([0, 0, 0]),
            {"label_smoothing": 0.5},
        )
    )
    for shape in ((0, 3), (0, 3, 2), (2, 3, 0), (0, 3, 2, 2)):
        x = np.zeros(shape, dtype)
        for func in FUNCS:
            cases.append((f"empty {shape}", func, x, np.zeros(target_shape(shape), int), {}))
        cases.append(
            (
                f"empty {shape} smoothed weighted",
                "cross_entropy",
                x,
                np.zeros(target_shape(shape), int),
                {"label_smoothing": 0.1, "weight": np.ones(3, dtype)},
            )
        )
        cases.append((f"empty prob {shape}", "cross_entropy", x, np.zeros(shape, dtype), {}))
    with np.errstate(over="ignore"):
        overflow = (np.array([[2.0, 3.0]]) * 3e38).astype(dtype)
    cases.append(("3e38 * [2, 3]", "cross_entropy", overflow, np.array([0]), {}))
    return cases


SPECIAL_CASES = [(dtype, case) for dtype in (F32, F64) for case in _special_cases(dtype)]
SPECIAL_IDS = [
    f"{dtype}-{case[1]}-{case[0]}-{kwargs_repr(case[4])}".replace(" ", "_")
    for dtype, case in SPECIAL_CASES
]


@pytest.mark.parametrize(("dtype", "case"), SPECIAL_CASES, ids=SPECIAL_IDS)
def test_special_values_match_reference(dtype, case):
    name, func, x, t, kwargs = case
    for reduction in REDUCTIONS:
        check_reference(func, x, t, what=name, reduction=reduction, **kwargs)


@pytest.mark.parametrize(("dtype", "case"), SPECIAL_CASES, ids=SPECIAL_IDS)
def test_special_values_match_torch(torch1, dtype, case):
    name, func, x, t, kwargs = case
    for reduction in REDUCTIONS:
        if name == "unbatched target (1,)":
            # torch's forward accepts it, its backward raises "size mismatch (got input: [3],
            # target: [1])": compare the forward only.
            expected, _ = torch_all(torch1, func, x, t, None, **kwargs, reduction=reduction)
            got = getattr(fl, func)(x, t, reduction=reduction, **kwargs)
            assert_close(got, expected, dtype, 3, scale=2, what=name)
            continue
        check_torch(torch1, func, x, t, what=name, reduction=reduction, **kwargs)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize(
    "row",
    [[-INF, -INF, -INF], [0.0, INF, 1.0], [0.0, NAN, 1.0], [INF, INF, INF]],
    ids=["all-inf", "+inf", "nan", "all+inf"],
)
@pytest.mark.parametrize("spatial", [False, True])
def test_irregular_row_gives_nan_and_ignored_nan_row_gradient(row, dtype, spatial):
    """A row that is all -inf, has +inf or NaN: loss and gradient NaN. Ignored, its loss is 0;
    cross_entropy's gradient row is still NaN (torch's log_softmax backward of a NaN softmax),
    nll_loss's is 0."""
    x = np.array([[0.5, -1.0, 2.0], row], dtype)
    if spatial:
        x = np.ascontiguousarray(np.stack([x.T, x.T]))  # (2, 3, 2): the row is position 1

    def loss_at(loss, position):
        return loss[:, position] if spatial else loss[position]

    def grad_at(grad, position):
        return grad[:, :, position] if spatial else grad[position]

    def targets(kept, other):
        return np.array([[kept, other]] * 2) if spatial else np.array([kept, other])

    for eps in (0.0, 0.25):
        t = targets(2, 0)
        loss, grad = fl.cross_entropy_with_grad(x, t, reduction="none", label_smoothing=eps)
        assert np.isnan(loss_at(loss, 1)).all() and np.isfinite(loss_at(loss, 0)).all()
        assert np.isnan(grad_at(grad, 1)).all() and np.isfinite(grad_at(grad, 0)).all()
        for reduction in ("mean", "sum"):
            assert np.isnan(fl.cross_entropy(x, t, reduction=reduction, label_smoothing=eps))
        ignored = targets(2, -100)
        loss, grad = fl.cross_entropy_with_grad(x, ignored, reduction="none", label_smoothing=eps)
        np.testing.assert_array_equal(loss_at(loss, 1), 0.0)
        assert np.isnan(grad_at(grad, 1)).all() and np.isfinite(grad_at(grad, 0)).all()
        for reduction in ("mean", "sum"):
            loss, grad = fl.cross_entropy_with_grad(
                x, ignored, reduction=reduction, label_smoothing=eps
            )
            assert np.isfinite(loss)
            assert np.isnan(grad_at(grad, 1)).all()
    loss, grad = fl.nll_loss_with_grad(x, targets(2, -100), reduction="none")
    np.testing.assert_array_equal(loss_at(loss, 1), 0.0)
    np.testing.assert_array_equal(grad_at(grad, 1), 0.0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_section4_exact_results(dtype):
    x = np.array([-INF, 1.0, 2.0], dtype)
    p = np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()
    loss, grad = fl.cross_entropy_with_grad(x, np.array(0))
    assert loss == INF and loss.dtype == dtype
    np.testing.assert_allclose(grad, [-1.0, p[0], p[1]], rtol=1e-6)
    assert grad[0] == -1.0
    loss, grad = fl.cross_entropy_with_grad(x, np.array(2))
    np.testing.assert_allclose(loss, -np.log(p[1]), rtol=1e-6)
    assert grad[0] == 0.0

    x = np.array([[1e30, 0.0, -1e30]], dtype)
    loss, grad = fl.cross_entropy_with_grad(x, np.array([0]))
    assert loss == 0.0
    loss, grad = fl.cross_entropy_with_grad(x, np.array([1]))
    assert loss == np.asarray(1e30, dtype)  # f32: 1.0000000150e30
    np.testing.assert_array_equal(grad, [[1.0, -1.0, 0.0]])

    loss = fl.cross_entropy(np.array([[1e4, 2e4, 3e4]], dtype), np.array([2]))
    assert loss == 0.0
    loss, grad = fl.cross_entropy_with_grad(np.array([[3e4, 2e4, 1e4]], dtype), np.array([1]))
    assert loss == 1e4
    np.testing.assert_array_equal(grad, [[1.0, -1.0, 0.0]])

    with np.errstate(over="ignore"):
        overflow = (np.array([[2.0, 3.0]]) * 3e38).astype(dtype)
    assert np.isnan(fl.cross_entropy(overflow, np.array([0]))) == (dtype == F32)

    for func in FUNCS:
        loss, grad = getattr(fl, func + "_with_grad")(
            np.full((4, 1), 0.7, dtype), np.zeros(4, int), reduction="none"
        )
        if func == "cross_entropy":
            np.testing.assert_array_equal(loss, 0.0)  # torch: -0.0
            np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("value", [1e8, 1e17, 3.4e38, 1e300], ids=str)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_equal_huge_logits(value, eps, dtype):
    """Equal logits give log_softmax = -log(C) whatever their size (torch subtracts the max
    before anything else), for the loss and for the smoothing term."""
    if dtype == F32 and value > 3.4e38:
        pytest.skip("not a float32 value")
    x = np.full((2, 4), value, dtype)
    loss, grad = fl.cross_entropy_with_grad(x, np.array([0, 3]), label_smoothing=eps)
    np.testing.assert_allclose(loss, np.log(4), rtol=1e-6, err_msg=f"logits all {value:g}")
    np.testing.assert_allclose(grad, (0.25 - np.eye(4)[[0, 3]]) * (1 - eps) / 2, atol=1e-7)
    x = np.full((1, 2, 3), value, dtype)  # spatial
    np.testing.assert_allclose(
        fl.cross_entropy(x, np.zeros((1, 3), int), label_smoothing=eps, reduction="none"),
        np.full((1, 3), np.log(2)),
        rtol=1e-6,
    )


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5), (0, 4), (2, 4, 0)], ids=str)
def test_all_ignored_and_empty(func, shape, dtype):
    x = logits(_rng("ignored", shape), shape, dtype)
    t = np.full(target_shape(shape), 2)
    kwargs = {"ignore_index": 2, "weight": np.arange(1.0, 5.0)}
    if func == "cross_entropy":
        kwargs["label_smoothing"] = 0.1
    none = getattr(fl, func)(x, t, reduction="none", **kwargs)
    assert none.shape == t.shape and none.dtype == dtype
    np.testing.assert_array_equal(none, 0.0)
    assert np.isnan(getattr(fl, func)(x, t, reduction="mean", **kwargs))
    total = getattr(fl, func)(x, t, reduction="sum", **kwargs)
    assert total == 0.0 and total.shape == ()
    for reduction in REDUCTIONS:
        g = np.ones(t.shape, dtype) if reduction == "none" else 1.0
        grad = getattr(fl, func + "_backward")(g, x, t, reduction=reduction, **kwargs)
        assert grad.shape == x.shape and grad.dtype == dtype
        np.testing.assert_array_equal(grad, 0.0)  # not NaN, even for 'mean'


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("func", FUNCS)
def test_unbatched_ignored_target(func, dtype):
    x = np.array([1.0, 2.0, 3.0], dtype)
    for t in (np.array(-100), np.array([-100])):
        none = getattr(fl, func)(x, t, reduction="none")
        assert none.shape == () and none == 0.0
        assert getattr(fl, func)(x, t, reduction="sum") == 0.0
        assert np.isnan(getattr(fl, func)(x, t, reduction="mean"))
    assert getattr(fl, func)(x, np.array([2]), reduction="none").shape == ()


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_zero_weight_sum_mean_is_nan(dtype):
    x = logits(_rng("zero-w"), (4, 3), dtype)
    t = np.array([0, 1, 1, 0])
    w = np.array([0.0, 0.0, 5.0], dtype)
    for func, eps in (("nll_loss", None), ("cross_entropy", 0.0), ("cross_entropy", 0.2)):
        kwargs = {"weight": w} if eps is None else {"weight": w, "label_smoothing": eps}
        loss, grad = getattr(fl, func + "_with_grad")(x, t, **kwargs)
        assert np.isnan(loss), (func, eps)
        if func == "cross_entropy":
            assert np.isnan(grad).all()
        else:  # -0 * inf at the target entries only
            np.testing.assert_array_equal(np.isnan(grad), np.eye(3, dtype=bool)[t])


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("shape", [(0, 4), (0, 4, 3), (2, 4, 0), (0, 4, 2, 2)], ids=str)
def test_empty_batches(shape, dtype):
    x = np.zeros(shape, dtype)
    t = np.zeros(target_shape(shape), int)
    for func in FUNCS:
        none = getattr(fl, func)(x, t, reduction="none")
        assert none.shape == t.shape and none.dtype == dtype
        assert np.isnan(getattr(fl, func)(x, t))
        assert getattr(fl, func)(x, t, reduction="sum") == 0.0
        assert getattr(fl, func + "_with_grad")(x, t)[1].shape == shape
    y = np.zeros(shape, dtype)
    assert fl.cross_entropy(x, y, reduction="none").shape == shape[:1] + shape[2:]
    assert np.isnan(fl.cross_entropy(x, y, reduction="mean"))
    total = fl.cross_entropy(x, y, reduction="sum")
    assert total == 0.0 and total.dtype == dtype
    # Sections 0 and 11: probability-target 'sum' over nothing is -0.0 in torch.
    assert np.signbit(total), f"empty probability-target 'sum' is {total!r}, torch gives -0.0"


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_classes_with_probability_targets(reduction):
    """C = 0: each row's loss is an empty sum, -0.0 in torch ('mean' divides 0 by 0: NaN)."""
    for shape in ((2, 0), (2, 0, 3), (0,)):
        x = np.zeros(shape)
        loss, grad = fl.cross_entropy_with_grad(x, np.zeros(shape), reduction=reduction)
        assert grad.shape == shape
        if reduction == "mean":
            assert np.isnan(loss)
        else:
            expected_shape = shape[:1] + shape[2:] if reduction == "none" and len(shape) > 1 else ()
            assert loss.shape == expected_shape
            np.testing.assert_array_equal(
                loss, np.zeros(expected_shape), err_msg=f"C=0 probability target {shape}"
            )


def test_zero_classes_all_ignored():
    x = np.zeros((2, 0))
    t = np.array([-100, -100])
    np.testing.assert_array_equal(fl.cross_entropy(x, t, reduction="none"), [0.0, 0.0])
    assert fl.nll_loss(x, t, reduction="sum") == 0.0
    assert np.isnan(fl.cross_entropy(x, t))
    assert fl.cross_entropy_with_grad(x, t)[1].shape == (2, 0)


# ---------------------------------------------------------------------------------------------
# Seed documents: the worked examples


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_seed_worked_example_1_4076(dtype):
    """shared/seeds/002: input [[1,2,3]]*3, targets [2,1,0] (also as one-hot probabilities)."""
    x = np.array([[1.0, 2.0, 3.0]] * 3, dtype)
    t = np.array([2, 1, 0])
    printed_grad = [[0.0300, 0.0816, -0.1116], [0.0300, -0.2518, 0.2217], [-0.3033, 0.0816, 0.2217]]
    one_hot = np.eye(3, dtype=dtype)[t]
    log_probs = fl.log_softmax(x, 1)
    for loss, grad in (
        fl.cross_entropy_with_grad(x, t),
        fl.cross_entropy_with_grad(x, one_hot),
        (fl.cross_entropy(x, t), fl.cross_entropy_backward(1.0, x, t)),
    ):
        assert round(float(loss), 4) == 1.4076
        np.testing.assert_array_equal(np.round(grad.astype(np.float64), 4), printed_grad)
    # nll_loss on log_softmax, as the seed's NLLLoss variant: same loss.
    assert round(float(fl.nll_loss(log_probs, t)), 4) == 1.4076
    # The single-row variants: label 0, 1, 2.
    row = x[:1]
    for label, (printed_loss, printed_row) in enumerate(
        [
            (2.4076, [-0.9100, 0.2447, 0.6652]),
            (1.4076, [0.0900, -0.7553, 0.6652]),
            (0.4076, [0.0900, 0.2447, -0.3348]),
        ]
    ):
        loss, grad = fl.cross_entropy_with_grad(row, np.array([label]))
        assert round(float(loss), 4) == printed_loss
        np.testing.assert_array_equal(np.round(grad.astype(np.float64), 4), [printed_row])
    np.testing.assert_array_equal(
        np.round(fl.softmax(row, 1).astype(np.float64), 4), [[0.0900, 0.2447, 0.6652]]
    )
    np.testing.assert_array_equal(
        np.round(log_probs[0].astype(np.float64), 4), [-2.4076, -1.4076, -0.4076]
    )


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_seed_pig_dog_cat(dtype):
    """shared/seeds/000: two models' predictions of (pig, dog, cat); mean NLL 1.378 and 0.639."""
    t = np.array([2, 1, 0])  # one-hot rows [0,0,1], [0,1,0], [1,0,0]
    for predictions, printed in (
        ([[0.3, 0.3, 0.4], [0.3, 0.4, 0.3], [0.1, 0.2, 0.7]], 1.378),
        ([[0.1, 0.2, 0.7], [0.1, 0.7, 0.2], [0.3, 0.4, 0.3]], 0.639),
    ):
        log_p = np.log(np.array(predictions)).astype(dtype)
        assert round(float(fl.nll_loss(log_p, t)), 3) == printed
        # The rows sum to 1, so log_softmax(log p) = log p: cross_entropy agrees.
        assert round(float(fl.cross_entropy(log_p, t)), 3) == printed
        one_hot = np.eye(3, dtype=dtype)[t]
        assert round(float(fl.cross_entropy(log_p, one_hot)), 3) == printed
        np.testing.assert_allclose(
            fl.nll_loss(log_p, t, reduction="none"),
            -np.log(np.array(predictions))[[0, 1, 2], t],
            rtol=1e-6,
        )


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis)


@st.composite
def loss_calls(draw):
    """(func, x, target, kwargs, grad_output): small shapes, finite logits in +-50 with an
    optional -inf mask, index or probability targets and any options."""
    func = draw(st.sampled_from(FUNCS))
    dtype = draw(st.sampled_from([F32, F64]))
    rank = draw(st.integers(1, 4))
    classes = draw(st.integers(1, 6))
    batch = draw(st.integers(0, 4)) if rank > 1 else None
    spatial_rank = max(rank - 2, 0)
    spatial = draw(st.lists(st.integers(1, 3), min_size=spatial_rank, max_size=spatial_rank))
    shape = (classes,) if rank == 1 else (batch, classes, *spatial)
    x = draw(hnp.arrays(np.float64, shape, elements=st.floats(-50, 50)))
    if draw(st.booleans()):
        mask = draw(hnp.arrays(np.bool_, shape))
        x = np.where(mask, -INF, x)
    x = x.astype(dtype)
    kwargs = {"reduction": draw(st.sampled_from(REDUCTIONS))}
    if draw(st.booleans()):
        kwargs["weight"] = draw(hnp.arrays(dtype, (classes,), elements=st.floats(0, 3, width=32)))
    probabilities = func == "cross_entropy" and draw(st.booleans())
    if probabilities:
        target = draw(hnp.arrays(dtype, shape, elements=st.floats(0, 1, width=32)))
        kwargs["ignore_index"] = draw(st.sampled_from([-100, -1]))
    else:
        ii = draw(st.sampled_from([-100, -1, 0, classes - 1]))
        kwargs["ignore_index"] = ii
        tshape = target_shape(shape)
        target = draw(hnp.arrays(np.int64, tshape, elements=st.integers(0, classes - 1)))
        if draw(st.booleans()):
            ignored = draw(hnp.arrays(np.bool_, tshape))
            target = np.where(ignored, ii, target)
        target = np.asarray(target)
    if func == "cross_entropy":
        kwargs["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    loss_shape = loss_shape_of(x, target, kwargs["reduction"])
    grad_output = None
    if draw(st.booleans()):
        grad_output = draw(
            hnp.arrays(
                dtype,
                loss_shape if kwargs["reduction"] == "none" else (),
                elements=st.floats(-2, 2, width=32),
            )
        )
    return func, x, target, kwargs, grad_output


@settings(max_examples=50, deadline=None)
@given(call=loss_calls())
def test_with_grad_is_forward_plus_backward(call):
    func, x, target, kwargs, grad_output = call
    loss, grad = getattr(fl, func + "_with_grad")(x, target, grad_output=grad_output, **kwargs)
    np.testing.assert_array_equal(loss, getattr(fl, func)(x, target, **kwargs))
    assert loss.dtype == getattr(fl, func)(x, target, **kwargs).dtype
    if grad_output is None:
        grad_output = np.ones(loss.shape, x.dtype) if kwargs["reduction"] == "none" else 1.0
    expected = getattr(fl, func + "_backward")(grad_output, x, target, **kwargs)
    np.testing.assert_array_equal(grad, expected)
    assert grad.dtype == x.dtype and grad.shape == x.shape


@settings(max_examples=50, deadline=None)
@given(
    dtype=st.sampled_from([F32, F64]),
    shape=st.one_of(
        st.tuples(st.integers(1, 6), st.integers(1, 8)),
        st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 4)),
    ),
    data=st.data(),
)
def test_mean_cross_entropy_gradient_sums_to_zero_per_row(dtype, shape, data):
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-50, 50)))
    mask = data.draw(hnp.arrays(np.bool_, shape))
    x = np.where(mask, -INF, x)
    x[:, 0] = np.where(np.isinf(x[:, 0]), 0.0, x[:, 0])  # every row keeps a finite logit
    x = x.astype(dtype)
    t = data.draw(hnp.arrays(np.int64, target_shape(shape), elements=st.integers(0, shape[1] - 1)))
    for grad in (fl.cross_entropy_with_grad(x, t)[1], fl.cross_entropy_backward(1.0, x, t)):
        assert np.isfinite(grad).all()
        atol = (1e-14 if dtype == F64 else 1e-6) * shape[1]
        np.testing.assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0, atol=atol)


# ---------------------------------------------------------------------------------------------
# Errors


def _all_functions(func, x, t, **kwargs):
    """Calls of forward, backward and fused ``func`` (the backward's upstream is a scalar 1;
    a shape error must come first anyway)."""
    return {
        func: lambda: getattr(fl, func)(x, t, **kwargs),
        func + "_backward": lambda: getattr(fl, func + "_backward")(1.0, x, t, **kwargs),
        func + "_with_grad": lambda: getattr(fl, func + "_with_grad")(x, t, **kwargs),
    }


def _raises_everywhere(exc, match, func, x, t, **kwargs):
    for name, call in _all_functions(func, x, t, **kwargs).items():
        with pytest.raises(exc, match=match) as info:
            call()
        assert info.type is exc or issubclass(info.type, exc), name


OUT_OF_RANGE_OPTIONS = [
    {},
    {"reduction": "none"},
    {"reduction": "sum", "weight": "w"},
    {"ignore_index": 1},
    {"ignore_index": -1, "weight": "w", "label_smoothing": 0.3},
    {"label_smoothing": 1.0, "reduction": "none"},
]


@pytest.mark.parametrize("rank", sorted(RANK_SHAPES))
@pytest.mark.parametrize("func", FUNCS)
def test_out_of_range_target_raises_index_error(func, rank):
    shape = RANK_SHAPES[rank]
    x = logits(_rng("oob", rank), shape, F32)
    for options in OUT_OF_RANGE_OPTIONS:
        if func == "nll_loss" and "label_smoothing" in options:
            continue
        kwargs = dict(options)
        if "weight" in kwargs:
            kwargs["weight"] = np.ones(CLASSES, F32)
        for value in (CLASSES, CLASSES + 3, -2, 2**40, np.iinfo(np.int64).min):
            t = index_target(_rng("oob-t", rank), shape, kwargs.get("ignore_index", -100))
            t.flat[-1] = value
            _raises_everywhere(
                IndexError,
                rf"Target {value} is out of bounds for {CLASSES} classes",
                func,
                x,
                t,
                **kwargs,
            )


def test_uint8_target_255_raises_index_error():
    x = np.zeros((3, 4), F32)
    for func in FUNCS:
        _raises_everywhere(
            IndexError,
            "Target 255 is out of bounds for 4 classes",
            func,
            x,
            np.array([0, 255, 1], np.uint8),
        )
    # ... unless it is the ignore_index (the ignore check comes first, as in torch).
    t = np.array([0, 255, 1], np.uint8)
    np.testing.assert_array_equal(
        fl.cross_entropy(x, t, ignore_index=255, reduction="none"),
        fl.cross_entropy(x, np.array([0, -100, 1]), reduction="none"),
    )
    big = np.array([0, 2**63 + 5, 1], np.uint64)
    with pytest.raises(IndexError, match=f"Target {2**63 + 5} is out of bounds"):
        fl.cross_entropy(x, big)


def test_zero_classes_with_a_target_raises_index_error():
    for func in FUNCS:
        _raises_everywhere(
            IndexError,
            "Target 0 is out of bounds for 0 classes",
            func,
            np.zeros((2, 0)),
            np.array([0, 0]),
        )
        _raises_everywhere(
            IndexError,
            "Target 0 is out of bounds for 0 classes",
            func,
            np.zeros((2, 0, 3)),
            np.zeros((2, 3), int),
        )


def test_kernels_never_index_memory_with_an_unchecked_target(monkeypatch):
    """With validation bypassed, the kernels treat an out-of-range target as ignored."""
    from fastloss import _cross_entropy

    def unchecked(t, classes, ignore_index):
        return np.ascontiguousarray(t, dtype=np.int64)

    monkeypatch.setattr(_cross_entropy, "_index_target", unchecked)
    rng = _rng("unchecked")
    for shape in ((4, 3), (2, 3, 5)):
        x = logits(rng, shape, F64)
        t = index_target(rng, shape)
        bad = t.copy()
        bad.flat[0], bad.flat[-1] = 10**9, -(10**9)
        good = t.copy()
        good.flat[0] = good.flat[-1] = -100
        for func in FUNCS:
            for kwargs in ({}, {"label_smoothing": 0.2} if func == "cross_entropy" else {}):
                loss, grad = getattr(fl, func + "_with_grad")(x, bad, reduction="none", **kwargs)
                expected, expected_grad = getattr(fl, func + "_with_grad")(
                    x, good, reduction="none", **kwargs
                )
                np.testing.assert_array_equal(loss, expected)
                np.testing.assert_array_equal(grad, expected_grad)


SHAPE_ERRORS = [
    ((2, 3), (3,), r"Expected input batch_size \(2\) to match target batch_size \(3\)"),
    ((2, 3), (), r"Expected input batch_size \(2\) to match target batch_size \(0\)"),
    ((2, 3), (2, 1), "multi-target not supported"),
    ((3,), (2,), "For 1D input, 1D target must have size 1, but got target size: 2"),
    ((3,), (1, 1), "target"),
    ((2, 3, 4), (2, 5), r"Expected target size \[2, 4\], got \[2, 5\]"),
    ((2, 3, 4), (2,), r"Expected target size \[2, 4\], got \[2\]"),
    ((2, 3, 4), (3, 4), r"Expected target size \[2, 4\], got \[3, 4\]"),
    ((2, 3, 4, 5), (2, 4, 6), "target"),
    ((2, 3, 4, 5), (2, 20), "target"),
    ((2, 3, 4, 5, 2), (2, 4, 5), "target"),
]


@pytest.mark.parametrize(("shape", "tshape", "match"), SHAPE_ERRORS, ids=str)
@pytest.mark.parametrize("func", FUNCS)
def test_target_shape_mismatch_raises_value_error(func, shape, tshape, match):
    _raises_everywhere(ValueError, match, func, np.zeros(shape), np.zeros(tshape, int))


def test_long_target_of_the_input_shape():
    x = np.zeros((2, 3))
    # cross_entropy reads a target of the input's shape as probabilities: it must be floating.
    _raises_everywhere(
        ValueError,
        "Expected floating point type for target with class probabilities",
        "cross_entropy",
        x,
        np.zeros((2, 3), int),
    )
    _raises_everywhere(
        ValueError, "Expected floating point type", "cross_entropy", np.zeros(3), np.zeros(3, int)
    )
    _raises_everywhere(
        ValueError, "multi-target not supported", "nll_loss", x, np.zeros((2, 3), int)
    )
    # A float target that is not of the input's shape holds no class indices.
    _raises_everywhere(ValueError, "target", "cross_entropy", x, np.zeros(2))
    _raises_everywhere(ValueError, "target", "nll_loss", x, np.zeros(2))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4), (3,)], ids=str)
@pytest.mark.parametrize("func", FUNCS)
def test_weight_of_the_wrong_length_raises_value_error(func, shape):
    x = np.zeros(shape)
    t = np.zeros(target_shape(shape), int)
    for w in (np.ones(4), np.ones(2), np.ones((1, 3)), np.ones(0)):
        match = "weight tensor should be defined either for all"
        if len(shape) <= 2:
            match += " 3 classes"
        _raises_everywhere(ValueError, match, func, x, t, weight=w)
    if func == "cross_entropy":
        _raises_everywhere(ValueError, "weight", func, x, np.zeros(shape), weight=np.ones(4))


def test_label_smoothing_above_one_raises_value_error():
    x = np.zeros((2, 3))
    for t in (np.array([0, 1]), np.full((2, 3), 1 / 3)):
        _raises_everywhere(
            ValueError,
            "label_smoothing must be between 0.0 and 1.0. Got: 1.5",
            "cross_entropy",
            x,
            t,
            label_smoothing=1.5,
        )


@pytest.mark.parametrize("eps", [-0.1, NAN, -5.0])
def test_negative_or_nan_label_smoothing_means_zero(eps):
    rng = _rng("neg-eps")
    x, t = logits(rng, (4, 3), F64), index_target(rng, (4, 3))
    y = probability_target(rng, (4, 3), F64)
    for target in (t, y):
        a = fl.cross_entropy_with_grad(x, target, label_smoothing=eps)
        b = fl.cross_entropy_with_grad(x, target)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("ignore_index", [0, 2, 5])
def test_ignore_index_with_probability_targets_raises_value_error(ignore_index):
    _raises_everywhere(
        ValueError,
        "ignore_index is not supported for floating point target",
        "cross_entropy",
        np.zeros((2, 3)),
        np.full((2, 3), 1 / 3),
        ignore_index=ignore_index,
    )


@pytest.mark.parametrize("reduction", ["foo", None, "batchmean", "MEAN", ""])
@pytest.mark.parametrize("func", FUNCS)
def test_bad_reduction_raises_value_error(func, reduction):
    match = f"{reduction} is not a valid value for reduction"
    _raises_everywhere(
        ValueError, match, func, np.zeros((2, 3)), np.array([0, 1]), reduction=reduction
    )
    # Raised before any shape check, as in torch.
    _raises_everywhere(
        ValueError,
        "is not a valid value for reduction",
        func,
        np.zeros((2, 3)),
        np.array([0, 1, 2]),
        reduction=reduction,
    )


def test_nll_loss_zero_dim_input_raises_value_error():
    _raises_everywhere(
        ValueError,
        r"Expected 1 or more dimensions \(got 0\)",
        "nll_loss",
        np.array(1.0),
        np.array(0),
    )


def test_cross_entropy_zero_dim_input():
    _raises_everywhere(
        ValueError, "Expected floating point type", "cross_entropy", np.array(1.0), np.array(0)
    )
    _raises_everywhere(
        IndexError,
        "Dimension specified as 1 but tensor has no dimensions",
        "cross_entropy",
        np.array(1.0),
        np.array(0.5),
    )


@pytest.mark.parametrize("ignore_index", [1.0, -100.0, "1", None])
@pytest.mark.parametrize("func", FUNCS)
def test_non_integer_ignore_index_raises_type_error(func, ignore_index):
    _raises_everywhere(
        TypeError,
        "ignore_index",
        func,
        np.zeros((2, 3)),
        np.array([0, 1]),
        ignore_index=ignore_index,
    )


def test_numpy_integer_ignore_index_is_accepted():
    x, t = logits(_rng("np-ii"), (3, 4), F64), np.array([0, 2, 2])
    np.testing.assert_array_equal(
        fl.cross_entropy(x, t, ignore_index=np.int32(2)), fl.cross_entropy(x, t, ignore_index=2)
    )


@pytest.mark.parametrize("func", FUNCS)
def test_non_float_input_raises_type_error(func):
    for x in (np.zeros((2, 3), int), np.zeros((2, 3), bool)):
        for call in _all_functions(func, x, np.array([0, 1])).values():
            with pytest.raises(TypeError):
                call()


@pytest.mark.parametrize("func", FUNCS)
def test_grad_output_of_the_wrong_shape_raises_value_error(func):
    x, t = np.zeros((2, 3, 4)), np.zeros((2, 4), int)
    for reduction, g in (
        ("none", np.ones(2)),
        ("none", np.ones((4, 2))),
        ("none", 1.0),
        ("mean", np.ones(2)),
        ("sum", np.ones((2, 4))),
    ):
        with pytest.raises(ValueError, match="grad_output"):
            getattr(fl, func + "_backward")(g, x, t, reduction=reduction)
        with pytest.raises(ValueError, match="grad_output"):
            getattr(fl, func + "_with_grad")(x, t, reduction=reduction, grad_output=g)


# ---------------------------------------------------------------------------------------------
# out=


def _out_cases():
    rng = _rng("out")
    cases = []
    for shape in ((5, 4), (2, 4, 3), (2, 4, 3, 2)):
        x = logits(rng, shape, F32)
        cases.append(
            (
                f"index {shape}",
                "cross_entropy",
                x,
                index_target(rng, shape, 1),
                {"ignore_index": 1, "label_smoothing": 0.1},
            )
        )
        cases.append(
            (
                f"prob {shape}",
                "cross_entropy",
                x,
                probability_target(rng, shape, F32),
                {"weight": class_weight(rng, shape, F32)},
            )
        )
        cases.append((f"nll {shape}", "nll_loss", x, index_target(rng, shape), {}))
    return cases


OUT_CASES = _out_cases()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_out_is_returned_and_equals_the_result(case, reduction):
    _, func, x, t, kwargs = case
    kwargs = {**kwargs, "reduction": reduction}
    loss, expected = getattr(fl, func + "_with_grad")(x, t, **kwargs)
    g = np.ones(loss.shape, F32) if reduction == "none" else 1.0
    for layout in ("C", "F", "strided"):
        if layout == "C":
            out = np.full(x.shape, 7.0, F32)
        elif layout == "F":
            out = np.asfortranarray(np.full(x.shape, 7.0, F32))
        else:
            out = np.full(x.shape[:-1] + (2 * x.shape[-1],), 7.0, F32)[..., ::2]
        got = getattr(fl, func + "_backward")(g, x, t, out=out, **kwargs)
        assert got is out
        np.testing.assert_array_equal(out, expected)
        out[...] = 7.0
        got_loss, got = getattr(fl, func + "_with_grad")(x, t, out=out, **kwargs)
        assert got is out
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(got_loss, loss)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_out_may_be_the_input(case, reduction):
    _, func, x, t, kwargs = case
    kwargs = {**kwargs, "reduction": reduction}
    loss, expected = getattr(fl, func + "_with_grad")(x, t, **kwargs)
    g = np.ones(loss.shape, F32) if reduction == "none" else 1.0
    for layout in ("C", "F"):
        buffer = x.copy() if layout == "C" else np.asfortranarray(x)
        got = getattr(fl, func + "_backward")(g, buffer, t, out=buffer, **kwargs)
        assert got is buffer
        np.testing.assert_array_equal(buffer, expected, err_msg=f"{func}_backward in place")
        buffer = x.copy() if layout == "C" else np.asfortranarray(x)
        got_loss, got = getattr(fl, func + "_with_grad")(buffer, t, out=buffer, **kwargs)
        assert got is buffer
        np.testing.assert_array_equal(buffer, expected, err_msg=f"{func}_with_grad in place")
        np.testing.assert_array_equal(got_loss, loss, err_msg=f"{func}_with_grad in-place loss")


def test_out_overlapping_the_input_partially():
    """out = a shifted view of the same memory as the input: still the right gradient."""
    rng = _rng("overlap")
    storage = logits(rng, (7, 4), F64)
    x = storage[:6]
    t = index_target(rng, (6, 4))
    _, expected = fl.cross_entropy_with_grad(x.copy(), t)
    out = storage[1:]
    got = fl.cross_entropy_backward(1.0, x, t, out=out)
    assert got is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("func", FUNCS)
def test_out_of_the_wrong_shape_or_dtype_raises_value_error(func):
    x, t = np.zeros((2, 3), F32), np.array([0, 1])
    for out in (
        np.empty((3, 2), F32),
        np.empty((2, 3), F64),
        np.empty((2, 3, 1), F32),
        np.empty(6, F32),
        np.empty((2, 3), np.float16),
    ):
        with pytest.raises(ValueError, match="out"):
            getattr(fl, func + "_backward")(1.0, x, t, out=out)
        with pytest.raises(ValueError, match="out"):
            getattr(fl, func + "_with_grad")(x, t, out=out)
    readonly = np.empty((2, 3), F32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        getattr(fl, func + "_with_grad")(x, t, out=readonly)


# ---------------------------------------------------------------------------------------------
# Inputs are never modified


def _snapshot(*arrays):
    return [(a, a.copy()) for a in arrays if isinstance(a, np.ndarray)]


def _assert_unchanged(snapshot, what):
    for a, copy in snapshot:
        np.testing.assert_array_equal(a, copy, err_msg=f"{what}: an input was modified")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_inputs_are_not_modified(case, reduction):
    _, func, x, t, kwargs = case
    w = np.linspace(0.5, 2, x.shape[1], dtype=F32)
    kwargs = {**kwargs, "reduction": reduction, "weight": w}
    loss = getattr(fl, func)(x, t, **kwargs)
    for arrays in ((x, t, w), (strided(x), strided(t, 2), strided(w))):
        xi, ti, wi = arrays
        g = upstream(loss.shape, F32)
        snapshot = _snapshot(xi, ti, wi, g)
        kw = {**kwargs, "weight": wi}
        getattr(fl, func)(xi, ti, **kw)
        getattr(fl, func + "_backward")(g, xi, ti, **kw)
        getattr(fl, func + "_with_grad")(xi, ti, grad_output=g, **kw)
        getattr(fl, func + "_with_grad")(xi, ti, **kw)
        _assert_unchanged(snapshot, func)
    # Read-only inputs are accepted (and would raise if written).
    readonly = [a.copy() for a in (x, t, kwargs["weight"])]
    for a in readonly:
        a.flags.writeable = False
    xr, tr, wr = readonly
    getattr(fl, func + "_with_grad")(xr, tr, **{**kwargs, "weight": wr})
    getattr(fl, func + "_backward")(upstream(loss.shape, F32), xr, tr, **{**kwargs, "weight": wr})


def test_array_likes_are_accepted(torch1):
    x = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    t = [2, 0]
    expected = fl.cross_entropy(np.array(x), np.array(t))
    np.testing.assert_array_equal(fl.cross_entropy(x, t), expected)
    xt = torch1.tensor(x, dtype=torch1.float64)
    np.testing.assert_array_equal(fl.cross_entropy(xt, torch1.tensor(t)), expected)
    loss, grad = fl.cross_entropy_with_grad(xt, torch1.tensor(t), weight=torch1.ones(3))
    assert isinstance(grad, np.ndarray) and grad.dtype == F64
    np.testing.assert_array_equal(loss, expected)
    loss, grad = fl.nll_loss_with_grad(x, t, weight=[1.0, 2.0, 3.0])
    assert isinstance(grad, np.ndarray) and grad.shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# Threads: 'mean' and 'sum' (and everything else) are bitwise identical for any thread count


def _thread_cases():
    rng = _rng("threads")
    rows = logits(rng, (512, 130), F32)  # 66560 elements: the parallel path
    rows[3] = -INF
    rows[7, 5] = NAN
    rows[rng.random(rows.shape) < 0.05] = -INF
    spatial = logits(rng, (4, 16, 32, 24), F32)  # 49152 elements
    spatial[1, :, 3, 4] = -INF
    wide = logits(rng, (40, 1100), F64)  # several blocks per row
    cases = []
    for label, x in (("rows", rows), ("spatial", spatial), ("wide", wide)):
        shape = x.shape
        w = class_weight(rng, shape, x.dtype)
        t = index_target(rng, shape, 1)
        cases.append(
            (
                f"{label} ce",
                "cross_entropy",
                x,
                t,
                {"weight": w, "ignore_index": 1, "label_smoothing": 0.1},
            )
        )
        cases.append((f"{label} ce plain", "cross_entropy", x, index_target(rng, shape), {}))
        cases.append((f"{label} nll", "nll_loss", x, t, {"weight": w, "ignore_index": 1}))
        cases.append(
            (
                f"{label} prob",
                "cross_entropy",
                x,
                probability_target(rng, shape, x.dtype),
                {"weight": w, "label_smoothing": 0.2},
            )
        )
    return cases


THREAD_CASES = _thread_cases()


def _thread_results(func, x, t, kwargs):
    results = {}
    for reduction in REDUCTIONS:
        kw = {**kwargs, "reduction": reduction}
        results[reduction] = getattr(fl, func)(x, t, **kw)
        loss, grad = getattr(fl, func + "_with_grad")(x, t, **kw)
        results[reduction + " fused loss"], results[reduction + " fused grad"] = loss, grad
        g = upstream(loss.shape, x.dtype)
        results[reduction + " backward"] = getattr(fl, func + "_backward")(g, x, t, **kw)
    return results


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("case", THREAD_CASES, ids=[c[0] for c in THREAD_CASES])
def test_one_and_two_threads_agree_bitwise(case, monkeypatch):
    from fastloss import _kernels_ce as K

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


@pytest.mark.parametrize("case", THREAD_CASES, ids=[c[0] for c in THREAD_CASES])
def test_parallel_path_matches_reference(case):
    label, func, x, t, kwargs = case
    for reduction in REDUCTIONS:
        check_reference(func, x, t, what=label, reduction=reduction, **kwargs)


# ---------------------------------------------------------------------------------------------
# float16 and bfloat16


def half_tolerance(dtype) -> tuple[float, float]:
    return (1e-2, 1e-2) if dtype == F16 else (3e-2, 1e-1)


def _half_cases(dtype):
    rng = _rng("half", str(dtype))
    cases = []
    for shape in ((6, 5), (2, 5, 3, 2), (5,)):
        x64 = rng.standard_normal(shape) * 3
        x = x64.astype(dtype)
        w = class_weight(rng, shape, F32)
        cases.append(
            (
                f"index {shape}",
                "cross_entropy",
                x,
                index_target(rng, shape, 1),
                {"ignore_index": 1, "weight": w, "label_smoothing": 0.1},
            )
        )
        cases.append((f"plain {shape}", "cross_entropy", x, index_target(rng, shape), {}))
        cases.append((f"nll {shape}", "nll_loss", x, index_target(rng, shape), {"weight": w}))
        cases.append(
            (
                f"prob {shape}",
                "cross_entropy",
                x,
                probability_target(rng, shape, F32).astype(dtype),
                {"label_smoothing": 0.2},
            )
        )
    masked = (rng.standard_normal((4, 6)) * 3).astype(dtype)
    masked[0, 1] = -INF
    masked[1] = -INF
    cases.append(("masked", "cross_entropy", masked, np.array([0, 2, 3, 1]), {}))
    spatial = (rng.standard_normal((2, 4, 3, 5)) * 3).astype(dtype)
    cases.append(
        (
            "strided spatial",
            "cross_entropy",
            strided(spatial, 0),
            strided(index_target(rng, spatial.shape, 2), 0),
            {"ignore_index": 2, "label_smoothing": 0.3},
        )
    )
    return cases


HALF_CASES = [(dtype, case) for dtype in (F16, BF16) for case in _half_cases(dtype)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    ("dtype", "case"), HALF_CASES, ids=[f"{d}-{c[0]}".replace(" ", "") for d, c in HALF_CASES]
)
def test_half_dtypes_close_to_float32(dtype, case, reduction):
    name, func, x, t, kwargs = case
    kwargs = {**kwargs, "reduction": reduction}
    snapshot = _snapshot(x, t)
    x32 = x.astype(np.float32)
    t32 = t.astype(np.float32) if t.dtype in (F16, BF16) else t
    loss, grad = getattr(fl, func + "_with_grad")(x, t, **kwargs)
    loss32, grad32 = getattr(fl, func + "_with_grad")(x32, t32, **kwargs)
    assert loss.dtype == dtype and grad.dtype == dtype, name
    assert loss.shape == loss32.shape and grad.shape == x.shape
    np.testing.assert_array_equal(_f64(getattr(fl, func)(x, t, **kwargs)), _f64(loss))
    out = np.full(x.shape, 5.0, dtype)
    fused_loss, fused_grad = getattr(fl, func + "_with_grad")(x, t, out=out, **kwargs)
    assert fused_grad is out
    np.testing.assert_array_equal(_f64(out), _f64(grad))
    np.testing.assert_array_equal(_f64(fused_loss), _f64(loss))
    g = upstream(loss.shape, dtype)
    grad_g = getattr(fl, func + "_backward")(g, x, t, **kwargs)
    grad32_g = getattr(fl, func + "_backward")(g.astype(np.float32), x32, t32, **kwargs)
    assert grad_g.dtype == dtype
    rtol, atol = half_tolerance(dtype)
    for got, expected, what in (
        (loss, loss32, "loss"),
        (grad, grad32, "grad"),
        (grad_g, grad32_g, "grad with upstream"),
    ):
        with np.errstate(all="ignore"):
            got64, exp64 = _f64(got), _f64(expected)
            rounded = _f64(np.asarray(expected).astype(dtype))
        _assert_specials(got64, rounded, f"{name} {what}")
        finite = np.isfinite(rounded)
        np.testing.assert_allclose(
            got64[finite], exp64[finite], rtol=rtol, atol=atol, err_msg=f"{name} {what} {dtype}"
        )
    _assert_unchanged(snapshot, name)


# ---------------------------------------------------------------------------------------------
# float32 accuracy: at least as accurate as torch (section 12's preferred criterion)


def _errors(got, torch_result, ref):
    """(fastloss's max abs error, torch's, the bound 2 x torch's + 1e-7 max|ref|)."""
    fl_error = np.max(np.abs(np.asarray(got).astype(np.float64) - ref))
    torch_error = np.max(np.abs(np.asarray(torch_result).astype(np.float64) - ref))
    return fl_error, torch_error, 2 * torch_error + 1e-7 * np.max(np.abs(ref))


def _accuracy_inputs(case):
    rng = np.random.default_rng(2024)
    shape, offset = {
        "vocab_64x50257": ((64, 50257), 0.0),
        # Logits far from 0 (a shift changes nothing in exact arithmetic): the rounding of
        # x - max and of the log-sum must not depend on |max|.
        "rows_256x1000_offset1000": ((256, 1000), 1000.0),
        "spatial_4x100x8x8_offset300": ((4, 100, 8, 8), 300.0),
    }[case]
    x = (rng.standard_normal(shape) * 3 + offset).astype(np.float32)
    return x, index_target(rng, shape)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["vocab_64x50257", "rows_256x1000_offset1000", "spatial_4x100x8x8_offset300"]
)
def test_float32_at_least_as_accurate_as_torch(torch, case):
    """Section 12's preferred float32 criterion, on the loss ('none', 'mean') and the
    gradients ('mean', 'sum'): fastloss's error <= 2 x torch's + 1e-7 max|ref|."""
    x, t = _accuracy_inputs(case)
    x64 = x.astype(np.float64)
    F = torch.nn.functional
    failures = []
    for eps, reduction in itertools.product((0.0, 0.1), ("none", "mean", "sum")):
        kwargs = {"reduction": reduction, "label_smoothing": eps}
        what = f"{case} CE {kwargs}"
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        out = F.cross_entropy(xt, torch.from_numpy(t), **kwargs)
        if reduction != "sum":
            ref = reference.cross_entropy(x64, t, **kwargs)
            got = fl.cross_entropy(x, t, **kwargs)
            fl_error, torch_error, bound = _errors(got, out.detach().numpy(), ref)
            if not fl_error <= bound:
                failures.append(
                    f"{what}: fastloss error {fl_error:.3g} > 2 x torch's {torch_error:.3g} "
                    f"+ 1e-7 max|ref| = {bound:.3g}"
                )
        if reduction != "none":
            out.backward()
            ref_grad = reference.cross_entropy_backward(1.0, x64, t, **kwargs)
            got_grad = fl.cross_entropy_with_grad(x, t, **kwargs)[1]
            fl_error, torch_error, bound = _errors(got_grad, xt.grad.numpy(), ref_grad)
            if not fl_error <= bound:
                failures.append(
                    f"{what} gradient: fastloss error {fl_error:.3g} > 2 x torch's "
                    f"{torch_error:.3g} + 1e-7 max|ref| = {bound:.3g}"
                )
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# The small-call fast path (plain C-contiguous (N, C) float rows, int64 targets, no options)
# must give the general path's bits: the general path takes the same call made with a
# Fortran-ordered copy of the logits and int32 targets.


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape", [(1, 1), (32, 10), (7, 1000), (300, 130)])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_fast_path_matches_general_path(func, reduction, dtype, shape, ignore_index):
    rng = np.random.default_rng(zlib.crc32(f"{func}{reduction}{shape}".encode()))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x[0, 0] = -INF  # a masked logit takes the fast path too
    t = rng.integers(0, shape[1], shape[0])
    t[::3] = ignore_index if ignore_index < shape[1] else t[::3]
    general_x, general_t = np.asfortranarray(x), t.astype(np.int32)
    forward, with_grad = getattr(fl, func), getattr(fl, func + "_with_grad")
    kwargs = {"reduction": reduction, "ignore_index": ignore_index}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither path may warn on a NaN/inf loss
        loss = forward(x, t, **kwargs)
        fused_loss, grad = with_grad(x, t, **kwargs)
    np.testing.assert_array_equal(loss, forward(general_x, general_t, **kwargs))
    want_loss, want_grad = with_grad(general_x, general_t, **kwargs)
    np.testing.assert_array_equal(fused_loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    assert loss.dtype == want_loss.dtype == dtype and grad.flags.c_contiguous
    # An upstream gradient: a scalar for 'mean'/'sum', one value per row for 'none'.
    g = rng.standard_normal(shape[0]) if reduction == "none" else np.float32(0.75)
    backward = getattr(fl, func + "_backward")
    want = backward(g, general_x, general_t, **kwargs)
    np.testing.assert_array_equal(backward(g, x, t, **kwargs), want)
    np.testing.assert_array_equal(with_grad(x, t, grad_output=g, **kwargs)[1], want)
    check_reference(func, x, t, **kwargs)
    check_reference(func, x, t, g, **kwargs)


@pytest.mark.parametrize("func", FUNCS)
def test_fast_path_errors_are_the_general_paths(func):
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(IndexError, match="Target 3 is out of bounds for 3 classes"):
        getattr(fl, func)(x, np.array([0, 1, 2, 3]))
    with pytest.raises(IndexError, match="Target -1 is out of bounds"):
        getattr(fl, func + "_with_grad")(x, np.array([0, -1, 2, 2]))
    with pytest.raises(ValueError, match="Expected input batch_size"):
        getattr(fl, func)(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        getattr(fl, func)(x, np.array([0, 1, 2, 2]), reduction="avg")
    # Every target ignored: 'mean' is 0 / 0, as torch.
    assert np.isnan(getattr(fl, func)(x, np.full(4, -100)))
    with pytest.raises(ValueError, match="grad_output has shape"):
        getattr(fl, func + "_backward")(np.ones(3), x, np.array([0, 1, 2, 2]))
    with pytest.raises(ValueError, match="grad_output has shape"):
        getattr(fl, func + "_backward")(np.ones(3), x, np.array([0, 1, 2, 2]), reduction="none")


@pytest.mark.parametrize(
    "case", ["plain", "options", "spatial", "probabilities", "backward"],
)
def test_in_place_gradient_allocates_no_n_by_c_array(case):
    """cross_entropy_with_grad(..., out=input) needs O(N) extra memory: per-row terms, never
    an N x C temporary (tracemalloc sees every NumPy allocation of the Python layer)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    shape = (4, 50, 64, 40) if case == "spatial" else (4096, 500)
    x = rng.standard_normal(shape).astype(np.float32)
    rows = x.size // shape[1]
    if case == "probabilities":
        t = rng.dirichlet(np.ones(shape[1]), shape[0]).astype(np.float32)
    else:
        t = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    kwargs = {}
    if case == "options":
        kwargs = {"weight": rng.random(shape[1]), "label_smoothing": 0.1, "ignore_index": 3}
    expected = fl.cross_entropy_with_grad(x.copy(), t, **kwargs)
    tracemalloc.start()
    try:
        if case == "backward":
            result = fl.cross_entropy_backward(1.0, x, t, out=x, **kwargs)
        else:
            result = fl.cross_entropy_with_grad(x, t, out=x, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grad = result if case == "backward" else result[1]
    assert grad is x
    np.testing.assert_array_equal(grad, expected[1])
    assert peak <= 64 * rows + 256 * 1024, (peak, x.nbytes)  # x is 8 MB; rows take 64 B each


# Row lengths around every boundary of the row kernels: the vectorized sums' step (64), the
# online recurrence's block (512), and short rows that never fill one vector.
_ROW_LENGTHS = sorted({*range(1, 70), *range(120, 135), 447, 448, 449, *range(505, 521),
                       575, 576, 577, 1000, 1023, 1024, 1025, 1537, 2049})


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_loss_with_and_without_the_gradient_agree_bitwise_at_every_row_length(dtype):
    """The gradient path reads each row once and keeps its exponentials in the gradient; the
    forward path stores nothing. Their losses and lse must still be the same bits, and the
    gradient the same wherever out lies: in place, right after the input in one buffer
    (which defeats LLVM's runtime overlap checks), or elsewhere."""
    rng = _rng("row lengths", dtype.name)
    for classes in _ROW_LENGTHS:
        rows = 3
        x = (rng.standard_normal((rows, classes)) * 4).astype(dtype)
        x[1, rng.integers(0, classes, classes // 3)] = -np.inf  # masked logits
        if classes > 600:
            x[2, : classes // 2] -= 200.0  # the running maximum rises after the first block
        t = rng.integers(0, classes, rows)
        w = rng.uniform(0.5, 2.0, classes).astype(dtype)
        for kwargs in ({}, {"weight": w, "label_smoothing": 0.2}, {"lse_square_scale": 1e-3}):
            what = f"C={classes} {kwargs.keys()}"
            loss, lse = fl.cross_entropy(x, t, reduction="none", return_lse=True, **kwargs)
            fused_loss, grad, fused_lse = fl.cross_entropy_with_grad(
                x, t, reduction="none", return_lse=True, **kwargs
            )
            np.testing.assert_array_equal(fused_loss, loss, err_msg=what)
            np.testing.assert_array_equal(fused_lse, lse, err_msg=what)
            g = np.ones(rows, dtype)
            backward = fl.cross_entropy_backward(g, x, t, reduction="none", **kwargs)
            np.testing.assert_array_equal(backward, grad, err_msg=what)
            in_place = x.copy()
            got_loss, _ = fl.cross_entropy_with_grad(
                in_place, t, reduction="none", out=in_place, **kwargs
            )
            np.testing.assert_array_equal(in_place, grad, err_msg=f"{what} in place")
            np.testing.assert_array_equal(got_loss, loss, err_msg=f"{what} in place")
            buffer = np.empty(2 * x.size, dtype)
            near_x, near_out = buffer[: x.size].reshape(x.shape), buffer[x.size :]
            near_x[...] = x
            near_out = near_out.reshape(x.shape)
            fl.cross_entropy_with_grad(near_x, t, reduction="none", out=near_out, **kwargs)
            np.testing.assert_array_equal(near_out, grad, err_msg=f"{what} adjacent out")
        want = reference.cross_entropy(x.astype(F64), t, reduction="none")
        got = fl.cross_entropy(x, t, reduction="none")
        # lse - x_t cancels: the error is relative to the logits' size, not the loss's.
        eps = float(np.finfo(dtype).eps)
        size = np.max(np.abs(x[np.isfinite(x)]))
        np.testing.assert_allclose(got, want, rtol=4 * eps, atol=8 * eps * size)
