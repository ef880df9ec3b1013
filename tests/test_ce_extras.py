"""cross_entropy's options beyond torch: z-loss, softcapping, returned lse and accuracy.

Each is checked against the float64 reference (``fastloss.reference``) and against torch
autograd of the composed expression: ``softcap * tanh(x / softcap)`` before the softmax,
``lse_square_scale * logsumexp(x')**2`` added to every counted row's loss (ignored rows
contribute nothing; 'mean' divides by the same denominator as the cross-entropy),
``logsumexp(x')`` per row and ``argmax(x') == target`` per row (NaN for ignored rows).
"""

from __future__ import annotations

import itertools
import zlib

import numba
import numpy as np
import pytest

import fastloss as fl
from fastloss import reference
from fastloss._math import BLOCK, cap_into, capped

F32, F64, F16 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)
CLASSES = 7
SHAPES = {"rows": (6, CLASSES), "spatial": (3, CLASSES, 2, 3), "unbatched": (CLASSES,)}
EXTRAS = {
    "z": {"lse_square_scale": 1e-2},
    "softcap": {"softcap": 3.0},
    "z+softcap": {"lse_square_scale": 0.05, "softcap": 2.0},
}
OPTIONS = {
    "plain": {},
    "weight+smoothing+ignore": {"label_smoothing": 0.2, "ignore_index": 1},
}


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _inputs(shape, dtype, probabilities, rng):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    target_shape = (shape[0],) + shape[2:] if len(shape) > 1 else ()
    if probabilities:
        y = rng.dirichlet(np.ones(CLASSES), target_shape)
        return x, np.moveaxis(y, -1, 1 if len(shape) > 1 else 0).astype(dtype)
    t = np.asarray(rng.integers(0, CLASSES, target_shape))
    if t.ndim:
        t.flat[0] = 1  # a row the 'ignore' options skip
    else:
        t = np.asarray(3)  # counted (all-ignored batches: test_all_ignored_rows)
    return x, t


def _options(name, probabilities, rng, dtype):
    options = dict(OPTIONS[name])
    if name != "plain":
        options["weight"] = rng.uniform(0.5, 2.0, CLASSES).astype(dtype)
    if probabilities:
        options.pop("ignore_index", None)
    return options


def _close(got, want, dtype, what):
    rtol = atol = 1e-10 if dtype == F64 else 2e-5
    np.testing.assert_allclose(
        np.asarray(got, np.float64),
        np.asarray(want, np.float64),
        rtol=rtol,
        atol=atol,
        equal_nan=True,
        err_msg=what,
    )


def _close_grad(got, want, dtype, what):
    """Normwise (section 12 of torch-semantics.md), with NaN exactly where the reference has
    NaN (a 'mean' over a zero weight sum)."""
    got = np.asarray(got, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    finite = ~np.isnan(want)
    if not finite.any():
        return
    scale = max(float(np.max(np.abs(want[finite]))), 1e-30)
    tol = 1e-10 if dtype == F64 else 1e-5
    error = float(np.max(np.abs(got[finite] - want[finite])))
    assert error <= tol * scale, f"{what}: gradient error {error:.3g} > {tol} * {scale:.3g}"


# Probability targets need a batch (a (C,) target for a (C,) input is the rows case).
CASES = [
    case
    for case in itertools.product(
        SHAPES, (False, True), OPTIONS, EXTRAS, ("none", "mean", "sum"), (F32, F64)
    )
    if not (case[0] == "unbatched" and case[1])
]
IDS = [f"{s}-{'prob' if p else 'index'}-{o}-{e}-{r}-{d}" for s, p, o, e, r, d in CASES]


@pytest.mark.parametrize(
    ("shape_name", "probabilities", "option", "extra", "reduction", "dtype"), CASES, ids=IDS
)
def test_matches_reference(shape_name, probabilities, option, extra, reduction, dtype):
    shape = SHAPES[shape_name]
    rng = _rng(shape_name, probabilities, option, extra, reduction, str(dtype))
    x, t = _inputs(shape, dtype, probabilities, rng)
    kwargs = {
        **_options(option, probabilities, rng, dtype),
        **EXTRAS[extra],
        "reduction": reduction,
    }
    x64 = x.astype(np.float64)
    t64 = t.astype(np.float64) if probabilities else t
    k64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    want_loss, want_lse, want_correct = reference.cross_entropy(
        x64, t64, return_lse=True, return_accuracy=True, **k64
    )
    g = np.asarray(rng.standard_normal(np.shape(want_loss)))
    want_grad = reference.cross_entropy_backward(g, x64, t64, **k64)

    loss, lse, correct = fl.cross_entropy(x, t, return_lse=True, return_accuracy=True, **kwargs)
    _close(loss, want_loss, dtype, "loss")
    _close(lse, want_lse, dtype, "lse")
    np.testing.assert_array_equal(correct, want_correct.astype(dtype))
    assert loss.dtype == lse.dtype == correct.dtype == dtype
    _close_grad(
        fl.cross_entropy_backward(g.astype(dtype), x, t, **kwargs), want_grad, dtype, "backward"
    )
    fused_loss, fused_grad, fused_lse, fused_correct = fl.cross_entropy_with_grad(
        x, t, grad_output=g.astype(dtype), return_lse=True, return_accuracy=True, **kwargs
    )
    _close(fused_loss, want_loss, dtype, "fused loss")
    _close_grad(fused_grad, want_grad, dtype, "fused grad")
    np.testing.assert_array_equal(fused_lse, lse)
    np.testing.assert_array_equal(fused_correct, correct)


def _torch_composed(
    torch,
    x,
    t,
    reduction,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    lse_square_scale=0.0,
    softcap=None,
):
    """The torch expression the extras fuse, with autograd."""
    F = torch.nn.functional
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    probabilities = t.shape == x.shape
    tt = torch.tensor(t, dtype=torch.float64) if probabilities else torch.tensor(t)
    wt = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    capped = softcap * torch.tanh(xt / softcap) if softcap else xt
    class_dim = 1 if x.ndim > 1 else 0
    per_row = F.cross_entropy(
        capped,
        tt,
        weight=wt,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction="none",
    )
    lse = torch.logsumexp(capped, class_dim)
    counted = torch.ones_like(lse) if probabilities else (tt != ignore_index).double()
    per_row = per_row + lse_square_scale * lse**2 * counted
    if reduction == "none":
        loss = per_row
    elif reduction == "sum":
        loss = per_row.sum()
    elif probabilities:
        loss = per_row.sum() / lse.numel()
    else:
        w_t = torch.ones_like(lse) if wt is None else wt[tt.clamp(min=0)]
        loss = per_row.sum() / (w_t * counted).sum()
    upstream = torch.ones_like(loss) * 0.7
    loss.backward(upstream)
    predicted = capped.argmax(class_dim)
    wanted = tt.argmax(class_dim) if probabilities else tt
    correct = (predicted == wanted).double()
    if not probabilities:
        correct = torch.where(tt == ignore_index, torch.nan, correct)
    return (
        loss.detach().numpy(),
        xt.grad.numpy(),
        lse.detach().numpy(),
        correct.numpy(),
        upstream.numpy(),
    )


TORCH_CASES = [
    case
    for case in itertools.product(SHAPES, (False, True), OPTIONS, EXTRAS, ("none", "mean"))
    if not (case[0] == "unbatched" and case[1])
]


@pytest.mark.parametrize(
    ("shape_name", "probabilities", "option", "extra", "reduction"),
    TORCH_CASES,
    ids=["-".join(map(str, c)) for c in TORCH_CASES],
)
def test_matches_torch_autograd_of_the_composition(
    torch, shape_name, probabilities, option, extra, reduction
):
    shape = SHAPES[shape_name]
    rng = _rng("torch", shape_name, probabilities, option, extra, reduction)
    x, t = _inputs(shape, F64, probabilities, rng)
    kwargs = {**_options(option, probabilities, rng, F64), **EXTRAS[extra]}
    want_loss, want_grad, want_lse, want_correct, upstream = _torch_composed(
        torch, x, t, reduction, **kwargs
    )
    loss, grad, lse, correct = fl.cross_entropy_with_grad(
        x,
        t,
        reduction=reduction,
        grad_output=upstream,
        return_lse=True,
        return_accuracy=True,
        **kwargs,
    )
    _close(loss, want_loss, F64, "loss")
    _close_grad(grad, want_grad, F64, "grad")
    _close(lse, want_lse, F64, "lse")
    np.testing.assert_array_equal(correct, want_correct)


def test_defaults_leave_torch_behaviour_and_return_types_untouched():
    rng = _rng("defaults")
    x, t = _inputs((5, CLASSES), F32, False, rng)
    plain = fl.cross_entropy(x, t)
    assert isinstance(plain, np.ndarray) and plain.shape == ()
    same = fl.cross_entropy(x, t, lse_square_scale=0.0, softcap=None)
    assert same.tobytes() == plain.tobytes()
    loss, grad = fl.cross_entropy_with_grad(x, t)
    assert loss.tobytes() == plain.tobytes()
    assert isinstance(fl.cross_entropy_backward(1.0, x, t), np.ndarray)
    # Returned extras come after the loss (and after the gradient in _with_grad).
    loss2, lse = fl.cross_entropy(x, t, return_lse=True)
    assert loss2.tobytes() == plain.tobytes() and lse.shape == (5,)
    _, grad2, correct = fl.cross_entropy_with_grad(x, t, return_accuracy=True)
    assert grad2.tobytes() == grad.tobytes() and correct.shape == (5,)


def test_accuracy_semantics_ties_nan_and_ignored_rows():
    x = np.array(
        [
            [1.0, 3.0, 3.0],  # tie: torch.argmax takes the first maximum
            [1.0, 3.0, 3.0],
            [0.0, np.nan, 5.0],  # NaN counts as the maximum
            [-np.inf, -np.inf, -np.inf],  # all -inf: argmax 0
            [np.inf, 1.0, np.inf],  # first +inf
            [9.0, 0.0, 0.0],  # ignored
        ]
    )
    t = np.array([1, 2, 1, 0, 0, -100])
    _, correct = fl.cross_entropy(x, t, reduction="none", return_accuracy=True)
    np.testing.assert_array_equal(correct, [1.0, 0.0, 1.0, 1.0, 1.0, np.nan])
    _, want = reference.cross_entropy(x, t, reduction="none", return_accuracy=True)
    np.testing.assert_array_equal(correct, want)
    # The token accuracy over counted rows:
    assert np.nanmean(correct) == 0.8


def test_all_ignored_rows_behave_as_torch_cross_entropy():
    # torch: an all-ignored 'mean' is NaN with a zero gradient; the z-loss of ignored rows
    # is 0 too, so the extras keep exactly that.
    x = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    t = np.array([-100, -100])
    for reduction, want in (("mean", np.nan), ("sum", 0.0)):
        loss, grad, lse = fl.cross_entropy_with_grad(
            x, t, reduction=reduction, lse_square_scale=0.1, softcap=2.0, return_lse=True
        )
        np.testing.assert_array_equal(loss, want)
        np.testing.assert_array_equal(grad, 0.0)
        np.testing.assert_allclose(lse, reference.logsumexp(2.0 * np.tanh(x / 2.0), 1))


def test_lse_of_special_rows_is_torch_logsumexp():
    x = np.array([[0.0, -np.inf], [-np.inf, -np.inf], [1.0, np.inf], [np.nan, 1.0]])
    _, lse = fl.cross_entropy(x, np.array([0, 0, 0, 0]), reduction="none", return_lse=True)
    np.testing.assert_array_equal(lse, fl.logsumexp(x, dim=1))


def test_softcap_bounds_the_logits_and_keeps_large_ones_finite():
    x = np.array([[1e30, 0.0, -1e30], [np.inf, 0.0, -np.inf]], dtype=np.float32)
    t = np.array([1, 1])
    loss, grad = fl.cross_entropy_with_grad(x, t, reduction="none", softcap=5.0)
    capped = np.array([5.0, 0.0, -5.0])  # 5 tanh(x / 5) at x = +-1e30 (or +-inf) and 0
    want = reference.cross_entropy(capped[None].repeat(2, 0), t, reduction="none")
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    # d(cap)/dx = 0 where tanh saturates: only the uncapped middle logit learns.
    np.testing.assert_allclose(grad[:, [0, 2]], 0.0, atol=1e-30)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("softcap", [5.0, 30.0, 100.0])  # 100: beyond float32's fixed shift
@pytest.mark.parametrize("dtype", [F32, F64])
def test_softcap_rows_longer_than_a_block_in_chunks(softcap, dtype):
    # Many blocks per row and many rows per work item, special rows among them: the capped
    # kernel caps the next row while it writes this row's gradient.
    rng = _rng("long rows", softcap, str(dtype))
    rows, classes = 70, 1300
    x = (rng.standard_normal((rows, classes)) * 4).astype(dtype)
    x[3, 5], x[4], x[9, 700], x[10, -1] = np.inf, -np.inf, np.nan, 1e30
    t = rng.integers(0, classes, rows)
    t[[6, 20, 69]] = -100
    t[10] = classes - 1
    kwargs = {
        "weight": rng.uniform(0.5, 2.0, classes).astype(dtype),
        "label_smoothing": 0.1,
        "lse_square_scale": 1e-3,
        "softcap": softcap,
        "reduction": "none",
    }
    k64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    x64 = x.astype(np.float64)
    want_loss, want_lse, want_correct = reference.cross_entropy(
        x64, t, return_lse=True, return_accuracy=True, **k64
    )
    g = rng.standard_normal(rows)
    want_grad = reference.cross_entropy_backward(g, x64, t, **k64)
    loss, grad, lse, correct = fl.cross_entropy_with_grad(
        x, t, grad_output=g.astype(dtype), return_lse=True, return_accuracy=True, **kwargs
    )
    _close(loss, want_loss, dtype, "loss")
    _close(lse, want_lse, dtype, "lse")
    np.testing.assert_array_equal(correct, want_correct.astype(dtype))
    _close_grad(grad, want_grad, dtype, "grad")
    # The forward alone caps every row by itself: the same bits.
    loss2, lse2, correct2 = fl.cross_entropy(x, t, return_lse=True, return_accuracy=True, **kwargs)
    assert loss2.tobytes() == loss.tobytes() and lse2.tobytes() == lse.tobytes()
    assert correct2.tobytes() == correct.tobytes()
    inplace = x.copy()
    fl.cross_entropy_with_grad(inplace, t, grad_output=g.astype(dtype), out=inplace, **kwargs)
    assert inplace.tobytes() == grad.tobytes()


@pytest.mark.parametrize("softcap", [5.0, 30.0])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_softcap_loss_and_gradient_keep_their_bits_with_or_without_the_lse(softcap, dtype):
    # Targets at and across block edges, one in a block that takes the rational tanh (a
    # logit beyond the cap): asking for an extra must not change the loss or the gradient
    # by a bit, nor must the forward alone or the in-place call.
    rng = _rng("lean rows", softcap, str(dtype))
    rows, classes = 70, 1300
    x = (rng.standard_normal((rows, classes)) * 4).astype(dtype)
    x[3, 5], x[4], x[9, 700], x[10, -1], x[11, 600] = np.inf, -np.inf, np.nan, 1e30, 40.0
    t = rng.integers(0, classes, rows)
    t[[6, 20, 69]] = -100
    t[10], t[11], t[12], t[13] = classes - 1, 600, 0, 511  # targets at and across block edges
    g = rng.standard_normal(rows).astype(dtype)
    kwargs = {"softcap": softcap, "reduction": "none", "grad_output": g}
    loss, grad = fl.cross_entropy_with_grad(x, t, **kwargs)
    full_loss, full_grad, _ = fl.cross_entropy_with_grad(x, t, return_lse=True, **kwargs)
    assert loss.tobytes() == full_loss.tobytes() and grad.tobytes() == full_grad.tobytes()
    x64 = x.astype(np.float64)
    want = reference.cross_entropy(x64, t, softcap=softcap, reduction="none")
    _close(loss, want, dtype, "loss")
    want_grad = reference.cross_entropy_backward(
        g.astype(np.float64), x64, t, softcap=softcap, reduction="none"
    )
    _close_grad(grad, want_grad, dtype, "grad")
    alone = fl.cross_entropy(x, t, softcap=softcap, reduction="none")
    assert alone.tobytes() == loss.tobytes()
    inplace = x.copy()
    fl.cross_entropy_with_grad(inplace, t, out=inplace, **kwargs)
    assert inplace.tobytes() == grad.tobytes()


@pytest.mark.parametrize("shape_name", ["rows", "spatial"])
@pytest.mark.parametrize("probabilities", [False, True])
def test_in_place_and_out(shape_name, probabilities):
    rng = _rng("out", shape_name, probabilities)
    x, t = _inputs(SHAPES[shape_name], F32, probabilities, rng)
    kwargs = {"lse_square_scale": 1e-2, "softcap": 3.0, "return_lse": True}
    loss, grad, lse = fl.cross_entropy_with_grad(x, t, **kwargs)
    x_copy, t_copy = x.copy(), t.copy()
    out = np.empty_like(x)
    loss2, grad2, lse2 = fl.cross_entropy_with_grad(x, t, out=out, **kwargs)
    assert grad2 is out and np.array_equal(out, grad)
    assert np.array_equal(x, x_copy) and np.array_equal(t, t_copy)
    inplace = x.copy()
    loss3, grad3, lse3 = fl.cross_entropy_with_grad(inplace, t, out=inplace, **kwargs)
    assert grad3 is inplace
    np.testing.assert_allclose(inplace, grad, rtol=1e-6, atol=1e-9)
    assert loss3.tobytes() == loss.tobytes() and lse3.tobytes() == lse.tobytes()


def test_float16_inputs():
    rng = _rng("half")
    x, t = _inputs((6, CLASSES), F16, False, rng)
    kwargs = {"lse_square_scale": 1e-2, "softcap": 3.0}
    loss, grad, lse = fl.cross_entropy_with_grad(x, t, return_lse=True, **kwargs)
    assert loss.dtype == grad.dtype == lse.dtype == F16
    want_loss, want_lse = reference.cross_entropy(
        x.astype(np.float64), t, return_lse=True, **kwargs
    )
    np.testing.assert_allclose(loss.astype(np.float64), want_loss, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(lse.astype(np.float64), want_lse, rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("shape", [(4096, 40), (8, 40, 32, 32)], ids=["rows", "spatial"])
def test_one_and_two_threads_agree_bitwise(shape):
    rng = _rng("threads", shape)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    t = rng.integers(0, 40, (shape[0],) + shape[2:])
    kwargs = {
        "lse_square_scale": 1e-3,
        "softcap": 5.0,
        "label_smoothing": 0.1,
        "return_lse": True,
        "return_accuracy": True,
    }
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fl.cross_entropy_with_grad(x, t, **kwargs)
        numba.set_num_threads(2)
        two = fl.cross_entropy_with_grad(x, t, **kwargs)
    finally:
        numba.set_num_threads(previous)
    for a, b in zip(one, two, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"softcap": 0.0}, "softcap must be a positive finite number"),
        ({"softcap": -1.0}, "softcap must be a positive finite number"),
        ({"softcap": np.inf}, "softcap must be a positive finite number"),
        ({"lse_square_scale": np.nan}, "lse_square_scale must be a finite number"),
    ],
)
def test_bad_extras_raise(kwargs, match):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=match):
        fl.cross_entropy(x, np.array([0, 1]), **kwargs)
    with pytest.raises(ValueError, match=match):
        fl.cross_entropy_with_grad(x, np.array([0, 1]), **kwargs)


def test_tanh_series_constants_are_the_bernoulli_formula():
    from fractions import Fraction
    from math import comb, factorial

    from fastloss._math import TANH_SERIES

    bernoulli = [Fraction(1)]
    for n in range(1, 2 * len(TANH_SERIES) + 1):
        bernoulli.append(-sum(comb(n + 1, k) * bernoulli[k] for k in range(n)) / (n + 1))
    for n, constant in enumerate(TANH_SERIES, start=1):
        exact = 4**n * (4**n - 1) * bernoulli[2 * n] / factorial(2 * n)
        assert constant == float(exact), n


def test_float32_tanh_is_within_5_ulp_and_never_beyond_one():
    from fastloss._math import tanh_any

    @numba.njit
    def run(u, out):
        for j in range(u.shape[0]):
            out[j] = tanh_any(u[j])

    u = np.concatenate(
        [np.linspace(0, 12, 400001), np.geomspace(1e-30, 1, 100001), [1e-40, 9.05, 9.1, 1e30]]
    ).astype(np.float32)
    u = np.concatenate([u, -u])
    got = np.empty_like(u)
    run(u, got)
    want = np.tanh(u.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - want) / ulp) <= 5.0
    assert np.all(np.abs(got) <= 1.0)
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    out = np.empty_like(special)
    run(special, out)
    np.testing.assert_array_equal(out, [1.0, -1.0, np.nan, 0.0, 0.0])  # nsz: the sign of 0 is free


@numba.njit
def _cap_segments(x, softcap, out):
    for b0 in range(0, x.shape[0], BLOCK):
        b1 = min(b0 + BLOCK, x.shape[0])
        cap_into(x[b0:b1], out[b0:b1], softcap)


@numba.njit
def _cap_each(x, softcap, out):
    for j in range(x.shape[0]):
        out[j] = capped(x[j], softcap)


@pytest.mark.parametrize("softcap", [1e-3, 0.1, 1.0, 5.0, 30.0, 50.0, 1e4])
def test_float32_capping_within_the_cap_is_within_3_ulp_and_never_beyond_it(softcap):
    # Segments whose logits all lie within the cap take the division-free polynomial.
    c = np.float32(softcap)
    x = np.concatenate([np.linspace(-c, c, 1_000_192), np.geomspace(1e-30, c, 100_352)])
    x = x.astype(np.float32)
    x = x[np.abs(x) <= c]
    x = x[: x.size - x.size % 512]
    got = np.empty_like(x)
    _cap_segments(x, softcap, got)
    c64 = np.float64(c)
    want = c64 * np.tanh(x.astype(np.float64) / c64)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    nonzero = want != 0
    assert np.max(np.abs(got - want)[nonzero] / ulp[nonzero]) <= 3.0
    assert np.all(got[~nonzero] == 0.0)
    assert np.all(np.abs(got) <= c)  # so every slope 1 - (v / c)^2 is >= 0
    assert np.all(np.sign(got) == np.sign(x))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_a_segment_with_a_logit_beyond_the_cap_is_capped_exactly_as_capped(dtype):
    rng = _rng("beyond the cap", str(dtype))
    x = (rng.standard_normal(4 * 512 + 77) * 10).astype(dtype)
    x[5] = 31.0  # beyond: the first segment falls back to capped
    x[600], x[1100] = np.inf, -np.inf  # so do the next two
    x[1700] = np.nan  # not beyond: the fourth segment keeps the polynomial, and NaN stays NaN
    got, each = np.empty_like(x), np.empty_like(x)
    _cap_segments(x, 30.0, got)
    _cap_each(x, 30.0, each)
    beyond = slice(0, 3 * 512) if dtype == F32 else slice(None)  # float64: capped everywhere
    np.testing.assert_array_equal(got[beyond], each[beyond])
    np.testing.assert_array_equal(got[[600, 1100, 1700]], [30.0, -30.0, np.nan])
    # The segments within the cap: polynomial bits, a few ulp from capped's.
    np.testing.assert_allclose(got[3 * 512 :], each[3 * 512 :], rtol=6e-7, atol=0)
