"""Check the NumPy reference (``fastloss.reference``) against torch in float64.

Forward values are compared with torch's, and each ``<name>_backward`` with torch autograd's
gradient for a random ``grad_output``, at rtol 1e-10 / atol 1e-12 with nan positions equal.
Random configurations cover every function and option; the special-value rows and edge
cases come from ``shared/reference/torch-semantics.md``.
"""

import itertools
import warnings
import zlib

import numpy as np
import pytest

from fastloss import reference

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch

RTOL, ATOL = 1e-10, 1e-12
INF, NAN = np.inf, np.nan

TORCH_FUNCTIONS = {
    "logsumexp": torch.logsumexp,
    "softmax": F.softmax,
    "log_softmax": F.log_softmax,
    "sigmoid": torch.sigmoid,
    "logsigmoid": F.logsigmoid,
    "nll_loss": F.nll_loss,
    "cross_entropy": F.cross_entropy,
    "kl_div": F.kl_div,
    "binary_cross_entropy": F.binary_cross_entropy,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
    "mse_loss": F.mse_loss,
    "multi_margin_loss": F.multi_margin_loss,
}


# --------------------------------------------------------------------------------------
# Comparison machinery
# --------------------------------------------------------------------------------------


def _to_torch(value):
    """NumPy arrays and scalars become tensors (integers as int64, floats as float64)."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.integer):
            return torch.from_numpy(value.astype(np.int64))
        return torch.from_numpy(value.astype(np.float64))
    return value


def torch_value_and_grad(name, x, args, kwargs, seed):
    """torch's forward result, its gradient w.r.t. ``x`` and the random grad_output used."""
    x_t = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    args_t = [_to_torch(a) for a in args]
    kwargs_t = {k: _to_torch(v) for k, v in kwargs.items()}
    # Legacy arguments, kl_div's 'mean' and mse_loss broadcasting warn in torch; the
    # reference must not, and is checked for that separately.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = TORCH_FUNCTIONS[name](x_t, *args_t, **kwargs_t)
    grad_output = np.random.default_rng(seed).standard_normal(tuple(out.shape))
    out.backward(torch.from_numpy(grad_output))
    grad = x_t.grad if x_t.grad is not None else torch.zeros_like(x_t)
    return out.detach().numpy(), grad.numpy(), grad_output


def assert_same(got, expected, what):
    got = np.asarray(got)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert got.dtype == np.float64, f"{what}: dtype {got.dtype}"
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=what)


def check(name, x, *args, seed=0, **kwargs):
    """Compare reference.<name> and reference.<name>_backward with torch on one input."""
    expected, expected_grad, grad_output = torch_value_and_grad(name, x, args, kwargs, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference emits no warnings at all
        got = getattr(reference, name)(x, *args, **kwargs)
        got_grad = getattr(reference, name + "_backward")(grad_output, x, *args, **kwargs)
    assert_same(got, expected, f"{name} forward {kwargs}")
    assert_same(got_grad, expected_grad, f"{name} backward {kwargs}")


def _rng(*key):
    """A generator seeded from the test's parameters, so every case is reproducible."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _logits(rng, shape):
    return rng.standard_normal(shape) * 3


REDUCTIONS = ["none", "mean", "sum"]


# --------------------------------------------------------------------------------------
# logsumexp, softmax, log_softmax
# --------------------------------------------------------------------------------------

LSE_CASES = [
    ((5,), 0),
    ((5,), -1),
    ((4, 6), 1),
    ((4, 6), 0),
    ((4, 6), (0, 1)),
    ((4, 6), (-1, 0)),
    ((2, 3, 4), 1),
    ((2, 3, 4), (0, 2)),
    ((2, 3, 4, 5), (3, 1)),
    ((2, 0), 1),
    ((0, 3), 0),
    ((2, 0, 3), (0, 2)),
    ((), 0),
    ((), -1),
    ((), (0,)),
]


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("shape, dim", LSE_CASES)
def test_logsumexp_random(shape, dim, keepdim):
    check("logsumexp", _logits(_rng(shape, dim), shape), dim, keepdim=keepdim)


SOFTMAX_SHAPES = [
    ((), 0),
    ((), -1),
    ((7,), 0),
    ((4, 5), 1),
    ((4, 5), 0),
    ((4, 5), -2),
    ((2, 3, 4), 0),
    ((2, 3, 4), 1),
    ((2, 3, 4), 2),
    ((2, 3, 2, 2), 1),
    ((3, 0), 1),
    ((0, 3), 1),
    ((2, 1), 1),
]


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, dim", SOFTMAX_SHAPES)
def test_softmax_random(name, shape, dim):
    check(name, _logits(_rng(name, shape, dim), shape), dim)


# Rows from the semantics file: -inf entries, all -inf, +inf (alone and with -inf), nan,
# huge logits, C = 1.
SPECIAL_ROWS = [
    [-INF, 0.0, 1.0],
    [-INF, -INF, -INF],
    [INF, 0.0, 1.0],
    [INF, -INF, 2.0],
    [INF, INF, 0.0],
    [NAN, 0.0, 1.0],
    [1e30, 0.0, -1e30],
    [1e4, 2e4, 3e4],
    [3.4e38, 3.4e38, 3.4e38],
    [0.5, 0.25, -0.75],
]


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("dim", [0, 1])
def test_special_rows_softmax_family(name, dim):
    rows = np.array(SPECIAL_ROWS)
    x = rows if dim == 1 else rows.T.copy()
    check(name, x, dim)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("value", [1.5, INF, -INF, NAN])
def test_zero_dim_softmax_family(name, value):
    check(name, np.array(value), 0)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_dtype_argument_casts_first(name):
    x = np.arange(12).reshape(3, 4)
    expected = getattr(F, name)(torch.from_numpy(x), 1, dtype=torch.float64).numpy()
    assert_same(getattr(reference, name)(x, 1, dtype=np.float64), expected, name)
    # The positional third argument is _stacklevel, as in torch.
    assert_same(getattr(reference, name)(x, 1, 3, np.float64), expected, name)


def test_softmax_gradient_is_typed_like_the_input():
    x = _logits(_rng("dtype"), (3, 4)).astype(np.float32)
    grad = reference.softmax_backward(np.ones((3, 4)), x, 1, dtype=np.float64)
    assert grad.dtype == np.float32


def test_float32_is_computed_in_float32():
    x = _logits(_rng("f32"), (3, 4)).astype(np.float32)
    t = np.array([0, 1, 2])
    assert reference.log_softmax(x, 1).dtype == np.float32
    assert reference.logsumexp(x, 1).dtype == np.float32
    assert reference.cross_entropy(x, t, label_smoothing=0.1).dtype == np.float32
    assert reference.cross_entropy_backward(np.float32(1), x, t).dtype == np.float32
    assert reference.multi_margin_loss_backward(np.float32(1), x, t).dtype == np.float32
    assert reference.kl_div(x, x, reduction="batchmean").dtype == np.float32
    assert reference.kl_div_backward(np.float32(1), x, x).dtype == np.float32


# --------------------------------------------------------------------------------------
# sigmoid, logsigmoid
# --------------------------------------------------------------------------------------

POINTWISE_SPECIAL = np.array(
    [-INF, -800, -745, -709, -100, -30, -1, -1e-8, 0, 1e-8, 1, 30, 100, 709, 745, 800, INF, NAN]
)


@pytest.mark.parametrize("name", ["sigmoid", "logsigmoid"])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 3, 4)])
def test_sigmoid_family_random(name, shape):
    check(name, _logits(_rng(name, shape), shape) * 5, seed=1)


@pytest.mark.parametrize("name", ["sigmoid", "logsigmoid"])
def test_sigmoid_family_special_values(name):
    check(name, POINTWISE_SPECIAL)


# --------------------------------------------------------------------------------------
# nll_loss and cross_entropy with class-index targets
# --------------------------------------------------------------------------------------


def _index_input_shape(rng, spatial_rank):
    """(C,) for spatial_rank None, else (N, C, d1..dK)."""
    num_classes = int(rng.integers(1, 6))
    if spatial_rank is None:
        return (num_classes,)
    spatial = tuple(int(d) for d in rng.integers(1, 3, size=spatial_rank))
    return (int(rng.integers(1, 4)), num_classes, *spatial)


def _index_target(rng, shape, ignore_index):
    """Random class indices shaped like the loss; some rows hold ignore_index."""
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    target = rng.integers(0, num_classes, size=target_shape)
    ignored = rng.random(target_shape) < 0.3
    return np.where(ignored, ignore_index, target)


def _index_configs():
    """(spatial_rank, reduction, weighted, ignore_kind) for the sweep; rank None is (C,)."""
    ranks = [None, 0, 1, 2, 3, 4, 5]
    ignore_kinds = ["default", "minus_one", "valid_class"]
    return list(itertools.product(ranks, REDUCTIONS, [False, True], ignore_kinds))


def _ignore_index_value(kind, num_classes):
    return {"default": -100, "minus_one": -1, "valid_class": num_classes - 1}[kind]


@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
@pytest.mark.parametrize("rank, reduction, weighted, ignore_kind", _index_configs())
def test_index_target_losses_random(name, rank, reduction, weighted, ignore_kind):
    rng = _rng(name, rank, reduction, weighted, ignore_kind)
    shape = _index_input_shape(rng, rank)
    num_classes = shape[0] if rank is None else shape[1]
    ignore_index = _ignore_index_value(ignore_kind, num_classes)
    x = _logits(rng, shape)
    target = _index_target(rng, shape, ignore_index)
    kwargs = {"reduction": reduction, "ignore_index": ignore_index}
    if weighted:
        kwargs["weight"] = rng.random(num_classes) + 0.1
    smoothings = [0.0, 0.15, 1.0] if name == "cross_entropy" else [None]
    for eps in smoothings:
        extra = {} if eps is None else {"label_smoothing": eps}
        check(name, x, target, **kwargs, **extra)


def test_worked_example_from_semantics():
    x = np.array([[1.0, 2.0, 3.0]] * 3)
    t = np.array([2, 1, 0])
    np.testing.assert_allclose(reference.cross_entropy(x, t), 1.4076059644443806, rtol=1e-12)
    expected_grad = [
        [0.0300, 0.0816, -0.1116],
        [0.0300, -0.2518, 0.2217],
        [-0.3033, 0.0816, 0.2217],
    ]
    np.testing.assert_allclose(
        reference.cross_entropy_backward(1.0, x, t), expected_grad, atol=1e-4
    )


@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_index_target_edge_cases(name, reduction, eps):
    kw = {"reduction": reduction}
    if name == "cross_entropy":
        kw["label_smoothing"] = eps
    x = _logits(_rng(name), (4, 3))
    w = np.array([0.0, 1.0, 2.0])
    cases = [
        (x, np.array([-100, -100, -100, -100]), {}),  # all ignored
        (x, np.array([0, 0, -100, -100]), {"weight": w}),  # W = 0 for non-ignored rows
        (x, np.array([0, 2, 1, 0]), {"weight": -w + 1}),  # negative weights
        (x[:, :1], np.array([0, 0, 0, 0]), {}),  # C = 1
        (x[0], np.array(1), {}),  # unbatched (C,)
        (x[0], np.array(-100), {}),  # unbatched, ignored
        (np.zeros((0, 3)), np.zeros(0, dtype=np.int64), {}),  # N = 0
        (np.zeros((0, 3, 2)), np.zeros((0, 2), dtype=np.int64), {}),
        (np.zeros((2, 3, 0)), np.zeros((2, 0), dtype=np.int64), {}),
        (np.zeros((2, 0)), np.array([-100, -100]), {}),  # C = 0, every row ignored
    ]
    for i, (inp, target, extra) in enumerate(cases):
        check(name, inp, target, seed=i, **kw, **extra)


@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched_input_with_target_of_shape_one(name, reduction):
    # torch's forward accepts a (1,) target for a (C,) input and gives a 0-d loss, but its
    # backward raises "size mismatch (got input: [3], target: [1])". The reference treats
    # it exactly like the 0-d target.
    x = _logits(_rng(name, reduction), (3,))
    expected, expected_grad, grad_output = torch_value_and_grad(
        name, x, (np.array(1),), {"reduction": reduction}, seed=0
    )
    with_shape_one = (x, np.array([1]))
    assert_same(getattr(reference, name)(*with_shape_one, reduction=reduction), expected, name)
    got_grad = getattr(reference, name + "_backward")(
        grad_output, *with_shape_one, reduction=reduction
    )
    assert_same(got_grad, expected_grad, name)


SPECIAL_TARGET_ROWS = [
    ([-INF, 0.0, 1.0], 0),  # target at a -inf logit: +inf, finite grad
    ([-INF, 0.0, 1.0], 2),  # -inf at a non-target logit
    ([-INF, -INF, -INF], 1),
    ([INF, 0.0, 1.0], 1),
    ([NAN, 0.0, 1.0], 2),
    ([1e4, 2e4, 3e4], 2),
    ([3e4, 2e4, 1e4], 1),
    ([1e30, 0.0, -1e30], 0),
    ([1e30, 0.0, -1e30], 1),
    ([NAN, 0.0, 1.0], -100),  # ignored rows: loss 0, but the CE grad row is nan
    ([INF, 0.0, 1.0], -100),
    ([-INF, 0.0, 1.0], -100),
    ([0.1, 0.2, 0.3], 0),
]


@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_index_target_special_rows(name, reduction, eps, weighted):
    x = np.array([row for row, _ in SPECIAL_TARGET_ROWS])
    target = np.array([t for _, t in SPECIAL_TARGET_ROWS])
    kw = {"reduction": reduction}
    if name == "cross_entropy":
        kw["label_smoothing"] = eps
    if weighted:
        kw["weight"] = np.array([0.5, 2.0, 1.5])
    check(name, x, target, **kw)
    # One special row at a time, so that a nan row does not hide the others in a mean.
    for i in range(len(target)):
        check(name, x[i : i + 1], target[i : i + 1], seed=i, **kw)


@pytest.mark.parametrize("eps", [-0.1, NAN])
def test_negative_or_nan_label_smoothing_means_zero(eps):
    rng = _rng("eps", eps)
    x, t = _logits(rng, (5, 4)), rng.integers(0, 4, size=5)
    assert_same(
        reference.cross_entropy(x, t, label_smoothing=eps), reference.cross_entropy(x, t), "eps"
    )
    check("cross_entropy", x, t, label_smoothing=eps)


# --------------------------------------------------------------------------------------
# cross_entropy with probability targets
# --------------------------------------------------------------------------------------


def _probability_target(rng, shape, kind):
    class_axis = 0 if len(shape) == 1 else 1
    if kind == "normalized":
        y = rng.random(shape)
        return y / np.sum(y, axis=class_axis, keepdims=True)
    if kind == "one_hot":
        num_classes = shape[class_axis]
        classes = rng.integers(0, num_classes, size=shape[:class_axis] + shape[class_axis + 1 :])
        one_hot = np.eye(num_classes)[classes]
        return np.moveaxis(one_hot, -1, class_axis).copy()
    return rng.standard_normal(shape)  # not validated: any values, even negative


@pytest.mark.parametrize("rank", [None, 0, 1, 2, 3, 5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["normalized", "one_hot", "unnormalized"])
def test_probability_targets_random(rank, reduction, kind):
    rng = _rng("prob", rank, reduction, kind)
    shape = _index_input_shape(rng, rank)
    num_classes = shape[0] if rank is None else shape[1]
    x, y = _logits(rng, shape), _probability_target(rng, shape, kind)
    for weighted, eps in itertools.product([False, True], [0.0, 0.25, 1.0]):
        weight = rng.random(num_classes) + 0.1 if weighted else None
        check("cross_entropy", x, y, weight=weight, reduction=reduction, label_smoothing=eps)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_target_special_values(reduction):
    x = np.array([[-INF, 0.0, 1.0], [-INF, 0.0, 1.0], [1e30, 0.0, -1e30], [NAN, 0.0, 1.0]])
    y = np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    for i in range(len(x)):
        check("cross_entropy", x[i : i + 1], y[i : i + 1], reduction=reduction, seed=i)
    empty = np.zeros((0, 3))
    check("cross_entropy", empty, empty, reduction=reduction)


def test_empty_probability_target_sum_is_negative_zero():
    result = reference.cross_entropy(np.zeros((0, 3)), np.zeros((0, 3)), reduction="sum")
    assert result == 0 and np.signbit(result)


# --------------------------------------------------------------------------------------
# kl_div
# --------------------------------------------------------------------------------------

KL_SHAPES = [
    ((4, 5), (4, 5)),
    ((5,), (4, 5)),
    ((4, 1), (4, 3)),
    ((2, 3, 4), (2, 3, 4)),
    ((), ()),
    ((3,), (3,)),
    ((0, 3), (0, 3)),
]


@pytest.mark.parametrize("input_shape, target_shape", KL_SHAPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_random(input_shape, target_shape, reduction, log_target):
    rng = _rng("kl", input_shape, target_shape, reduction, log_target)
    x = np.log(rng.random(input_shape) + 1e-3)
    y = rng.random(target_shape)
    y = np.log(y) if log_target else np.where(rng.random(target_shape) < 0.2, 0.0, y)
    check("kl_div", x, y, reduction=reduction, log_target=log_target)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_special_values(reduction, log_target):
    x = np.array([[-INF, -INF, 0.0, -1.0, NAN, 2.0]])
    y = np.array([[0.0, -INF, -INF, -0.5, 0.5, NAN]])
    if not log_target:
        y = np.array([[0.0, 0.5, -0.5, 0.0, 0.5, NAN]])
    for i in range(x.shape[1]):
        check(
            "kl_div", x[:, i : i + 1], y[:, i : i + 1], reduction=reduction, log_target=log_target
        )


# --------------------------------------------------------------------------------------
# binary_cross_entropy, binary_cross_entropy_with_logits
# --------------------------------------------------------------------------------------

BINARY_SHAPES = [(), (0,), (7,), (4, 3), (2, 3, 4)]


def _broadcast_weight_shapes(shape):
    """Weight shapes that broadcast to ``shape`` without enlarging it."""
    options = [None, shape]
    if len(shape) >= 1:
        options.append(shape[-1:])
    if len(shape) >= 2:
        options.append(shape[:1] + (1,) * (len(shape) - 1))
    options.append(())
    return options


@pytest.mark.parametrize("shape", BINARY_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_random(shape, reduction):
    rng = _rng("bce", shape, reduction)
    x = rng.random(shape)
    y = rng.random(shape)
    for weight_shape in _broadcast_weight_shapes(shape):
        weight = None if weight_shape is None else rng.random(weight_shape) + 0.1
        check("binary_cross_entropy", x, y, weight=weight, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_clamped_ends(reduction):
    # x = 0 and 1 hit the -100 log clamp and the EPS in the gradient; tiny x tests log1p.
    x = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1e-300, 1e-10, 1 - 1e-10, 0.5, 1e-6])
    y = np.array([1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5, 1e-6])
    check("binary_cross_entropy", x, y, reduction=reduction)


@pytest.mark.parametrize("shape", BINARY_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits_random(shape, reduction):
    rng = _rng("bcel", shape, reduction)
    x = _logits(rng, shape) * 2
    y = rng.random(shape)
    y = np.where(rng.random(shape) < 0.3, np.round(y), y)
    weight_shapes = _broadcast_weight_shapes(shape)
    for weight_shape, pos_weight_shape in itertools.product(weight_shapes, weight_shapes):
        weight = None if weight_shape is None else rng.random(weight_shape) + 0.1
        pos_weight = None if pos_weight_shape is None else rng.random(pos_weight_shape) * 3
        check(
            "binary_cross_entropy_with_logits",
            x,
            y,
            weight=weight,
            pos_weight=pos_weight,
            reduction=reduction,
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_pos_weight", [False, True])
def test_binary_cross_entropy_with_logits_special_values(reduction, with_pos_weight):
    values = np.array([INF, -INF, NAN, 1e4, -1e4, 1e30, -1e30, 100.0, -100.0, 0.0, 800.0])
    x = np.repeat(values, 3)
    y = np.tile([0.0, 1.0, 0.5], len(values))
    pos_weight = np.array(3.0) if with_pos_weight else None
    for i in range(len(x)):
        check(
            "binary_cross_entropy_with_logits",
            x[i : i + 1],
            y[i : i + 1],
            seed=i,
            pos_weight=pos_weight,
            reduction=reduction,
        )


# --------------------------------------------------------------------------------------
# mse_loss
# --------------------------------------------------------------------------------------

MSE_SHAPES = [
    ((4, 3), (4, 3)),
    ((4, 3), (1, 3)),
    ((4, 3), (3,)),
    ((1, 3), (4, 3)),
    ((3,), (2, 3)),
    ((), ()),
    ((0, 3), (0, 3)),
    ((2, 3, 4), (2, 3, 4)),
]


@pytest.mark.parametrize("input_shape, target_shape", MSE_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_mse_loss_random(input_shape, target_shape, reduction, weighted):
    rng = _rng("mse", input_shape, target_shape, reduction, weighted)
    x, y = rng.standard_normal(input_shape), rng.standard_normal(target_shape)
    weight = rng.random(input_shape) + 0.1 if weighted else None
    check("mse_loss", x, y, reduction=reduction, weight=weight)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_special_values(reduction):
    x = np.array([INF, INF, NAN, 1e200, -INF])
    y = np.array([INF, 0.0, 0.0, 0.0, 1.0])
    for i in range(len(x)):
        check("mse_loss", x[i : i + 1], y[i : i + 1], reduction=reduction, seed=i)


# --------------------------------------------------------------------------------------
# multi_margin_loss
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 4), (3, 1), (1, 6), (6,)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p", [1, 2])
def test_multi_margin_loss_random(shape, reduction, p):
    rng = _rng("margin", shape, reduction, p)
    x = rng.standard_normal(shape)
    num_classes = shape[-1]
    target_shape = () if len(shape) == 1 else shape[:1]
    target = rng.integers(0, num_classes, size=target_shape)
    for margin, weighted in itertools.product([1.0, 0.5, 0.0, -0.3, 2.5], [False, True]):
        weight = rng.random(num_classes) + 0.1 if weighted else None
        check(
            "multi_margin_loss", x, target, p=p, margin=margin, weight=weight, reduction=reduction
        )
    if len(shape) == 1:  # an unbatched input also takes a target of shape (1,)
        check("multi_margin_loss", x, target.reshape(1), p=p, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p", [1, 2.0, True])
def test_multi_margin_loss_special_values(reduction, p):
    x = np.array([[NAN, 0.0, 1.0], [INF, 0.0, 1.0], [0.0, INF, 1.0], [0.0, 0.5, 1.0]])
    target = np.array([1, 0, 0, 2])
    for i in range(len(x)):
        check(
            "multi_margin_loss", x[i : i + 1], target[i : i + 1], p=p, reduction=reduction, seed=i
        )
    # Exactly at the kink z = 0: no loss and a zero subgradient.
    check(
        "multi_margin_loss", np.array([[1.0, 0.0, -2.0]]), np.array([0]), p=p, reduction=reduction
    )
    check("multi_margin_loss", np.array(0.7), np.array(0), p=p, reduction=reduction)


def test_multi_margin_loss_empty_batch():
    # torch returns uninitialised memory for N = 0 with mean/sum; the reference is consistent.
    x, t = np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    assert np.isnan(reference.multi_margin_loss(x, t, reduction="mean"))
    assert reference.multi_margin_loss(x, t, reduction="sum") == 0
    check("multi_margin_loss", x, t, reduction="none")
    assert reference.multi_margin_loss_backward(1.0, x, t).shape == (0, 4)


# --------------------------------------------------------------------------------------
# Legacy size_average / reduce arguments
# --------------------------------------------------------------------------------------

LEGACY = [
    (None, False),
    (False, None),
    (True, None),
    (None, True),
    (False, False),
    (True, False),
    (False, True),
    (True, True),
]


def _legacy_inputs(name):
    rng = _rng("legacy", name)
    x = _logits(rng, (4, 3))
    probabilities = rng.random((4, 3))
    classes = np.array([0, 2, 1, 2])
    return {
        "nll_loss": (x, classes),
        "cross_entropy": (x, classes),
        "kl_div": (np.log(probabilities), rng.random((4, 3))),
        "binary_cross_entropy": (probabilities, rng.random((4, 3))),
        "binary_cross_entropy_with_logits": (x, rng.random((4, 3))),
        "mse_loss": (x, rng.standard_normal((4, 3))),
        "multi_margin_loss": (x, classes),
    }[name]


@pytest.mark.parametrize(
    "name",
    [
        "nll_loss",
        "cross_entropy",
        "kl_div",
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "mse_loss",
        "multi_margin_loss",
    ],
)
@pytest.mark.parametrize("size_average, reduce", LEGACY)
def test_legacy_arguments(name, size_average, reduce):
    x, target = _legacy_inputs(name)
    # The legacy arguments override reduction=; 'sum' here must be ignored.
    check(name, x, target, size_average=size_average, reduce=reduce, reduction="sum")


@pytest.mark.parametrize("reduce", [None, True, False])
def test_kl_div_legacy_with_batchmean_divides_twice(reduce):
    x, target = _legacy_inputs("kl_div")
    check("kl_div", x, target, reduce=reduce, size_average=True, reduction="batchmean")


def test_elementwise_mean_is_mean():
    x, target = _legacy_inputs("mse_loss")
    assert_same(
        reference.mse_loss(x, target, reduction="elementwise_mean"),
        np.asarray(reference.mse_loss(x, target)),
        "elementwise_mean",
    )
