"""linear_cross_entropy: cross-entropy of ``input @ weight.T + bias`` without the logits.

Checked against the unfused composition: ``fastloss.reference.cross_entropy`` on the float64
logits (the chain rule gives the input, weight and bias gradients) and torch autograd of
``F.cross_entropy(x @ W.T + b, t)``, over every option and chunking; and, with tracemalloc,
that the memory it allocates stays within its budget instead of the (N, V) logits.
"""

from __future__ import annotations

import itertools
import tracemalloc
import zlib

import numpy as np
import pytest

import fastloss as fl
from fastloss import reference

ROWS, HIDDEN, VOCAB = 23, 6, 40
OPTIONS = {
    "plain": {},
    "weight+ignore+smoothing": {"ignore_index": 2, "label_smoothing": 0.15},
    "extras": {"lse_square_scale": 1e-2, "softcap": 3.0},
}
# One row per chunk, uneven chunks, and everything in one chunk.
CHUNK_ROWS = (1, 5, ROWS)


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _inputs(rng, dtype, probabilities=False):
    x = rng.standard_normal((ROWS, HIDDEN)).astype(dtype)
    w = (rng.standard_normal((VOCAB, HIDDEN)) / 2).astype(dtype)
    b = rng.standard_normal(VOCAB).astype(dtype)
    if probabilities:
        t = rng.dirichlet(np.ones(VOCAB), ROWS).astype(dtype)
    else:
        t = rng.integers(0, VOCAB, ROWS)
        t[[0, 7]] = 2  # rows the "ignore" options skip
    return x, w, b, t


def _reference(x, w, b, t, reduction, g, class_weight=None, **options):
    """Loss and gradients of the composition, in float64, by the chain rule."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    logits = x64 @ w64.T + (0 if b is None else b.astype(np.float64))
    t64 = t.astype(np.float64) if t.dtype.kind == "f" else t
    kwargs = {"weight": class_weight, "reduction": reduction, **options}
    loss = reference.cross_entropy(logits, t64, **kwargs)
    g_logits = reference.cross_entropy_backward(g, logits, t64, **kwargs)
    grad_b = None if b is None else g_logits.sum(axis=0)
    return loss, g_logits @ w64, g_logits.T @ x64, grad_b


def _close(got, want, dtype, what):
    tol = 1e-10 if dtype == np.float64 else 1e-5
    want = np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))), 1e-30) if want.size else 1.0
    error = float(np.max(np.abs(np.asarray(got, np.float64) - want))) if want.size else 0.0
    assert error <= tol * scale, f"{what}: error {error:.3g} > {tol} * {scale:.3g}"


CASES = list(
    itertools.product(OPTIONS, ("none", "mean", "sum"), CHUNK_ROWS, (True, False), ("f4", "f8"))
)


@pytest.mark.parametrize(
    ("option", "reduction", "chunk_rows", "with_bias", "dtype"),
    CASES,
    ids=[f"{o}-{r}-chunk{c}-{'bias' if b else 'nobias'}-{d}" for o, r, c, b, d in CASES],
)
def test_matches_the_unfused_composition(option, reduction, chunk_rows, with_bias, dtype):
    dtype = np.dtype(dtype)
    rng = _rng(option, reduction, chunk_rows, with_bias, str(dtype))
    x, w, b, t = _inputs(rng, dtype)
    b = b if with_bias else None
    options = dict(OPTIONS[option])
    class_weight = rng.uniform(0.5, 2.0, VOCAB) if option != "plain" else None
    g = rng.standard_normal(ROWS) if reduction == "none" else np.float64(0.75)
    want = _reference(x, w, b, t, reduction, g, class_weight, **options)
    chunk = chunk_rows * VOCAB * dtype.itemsize
    kwargs = {"class_weight": class_weight, "reduction": reduction, "chunk_bytes": chunk}
    loss, gx, gw, gb = fl.linear_cross_entropy_with_grad(
        x, w, t, bias=b, grad_output=g, **kwargs, **options
    )
    _close(loss, want[0], dtype, "loss")
    _close(gx, want[1], dtype, "grad input")
    _close(gw, want[2], dtype, "grad weight")
    if with_bias:
        _close(gb, want[3], dtype, "grad bias")
    else:
        assert gb is None
    assert gx.shape == x.shape and gw.shape == w.shape and gx.dtype == gw.dtype == dtype
    forward = fl.linear_cross_entropy(x, w, t, bias=b, **kwargs, **options)
    _close(forward, want[0], dtype, "forward")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_probability_targets_and_returned_extras(reduction):
    rng = _rng("prob", reduction)
    x, w, b, t = _inputs(rng, np.float64, probabilities=True)
    g = rng.standard_normal(ROWS) if reduction == "none" else 1.0
    want = _reference(x, w, b, t, reduction, g, lse_square_scale=1e-3)
    loss, gx, gw, gb, lse, correct = fl.linear_cross_entropy_with_grad(
        x,
        w,
        t,
        bias=b,
        reduction=reduction,
        grad_output=g,
        lse_square_scale=1e-3,
        return_lse=True,
        return_accuracy=True,
        chunk_bytes=7 * VOCAB * 8,
    )
    for got, expected, what in zip(
        (loss, gx, gw, gb), want, ("loss", "gx", "gw", "gb"), strict=True
    ):
        _close(got, expected, np.float64, what)
    logits = x @ w.T + b
    want_loss, want_lse, want_correct = reference.cross_entropy(
        logits,
        t,
        reduction=reduction,
        lse_square_scale=1e-3,
        return_lse=True,
        return_accuracy=True,
    )
    _close(lse, want_lse, np.float64, "lse")
    np.testing.assert_array_equal(correct, want_correct)


def test_matches_torch_autograd(torch):
    rng = _rng("torch")
    x, w, b, t = _inputs(rng, np.float64)
    F = torch.nn.functional
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    loss_t = F.cross_entropy(xt @ wt.T + bt, torch.tensor(t), label_smoothing=0.1)
    loss_t.backward()
    loss, gx, gw, gb = fl.linear_cross_entropy_with_grad(
        x, w, t, bias=b, label_smoothing=0.1, chunk_bytes=4 * VOCAB * 8
    )
    _close(loss, loss_t.detach().numpy(), np.float64, "loss")
    _close(gx, xt.grad.numpy(), np.float64, "grad input")
    _close(gw, wt.grad.numpy(), np.float64, "grad weight")
    _close(gb, bt.grad.numpy(), np.float64, "grad bias")


def test_memory_stays_within_the_chunk_budget():
    rows, hidden, vocab = 2048, 16, 4096
    rng = _rng("memory")
    x = rng.standard_normal((rows, hidden), dtype=np.float32)
    w = rng.standard_normal((vocab, hidden), dtype=np.float32)
    t = rng.integers(0, vocab, rows)
    budget = 1 << 20  # 1 MiB: 64 rows of logits, where all of them would take 32 MiB
    fl.linear_cross_entropy_with_grad(x[:8], w, t[:8], chunk_bytes=budget)  # compile first
    tracemalloc.start()
    try:
        _, gx, gw, _ = fl.linear_cross_entropy_with_grad(x, w, t, chunk_bytes=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = gx.nbytes + gw.nbytes
    logits = rows * vocab * 4
    # One chunk of logits, one slice of G^T X, and small per-row arrays.
    assert peak - outputs <= 2 * budget + 64 * 1024, (peak - outputs, logits)
    assert peak - outputs < logits / 10


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, w, t: fl.linear_cross_entropy(x, w.T, t), ValueError, "input @ weight.T"),
        (lambda x, w, t: fl.linear_cross_entropy(x, w[0], t), ValueError, "must be 2-D"),
        (lambda x, w, t: fl.linear_cross_entropy(x, w, t[:-1]), ValueError, "target has shape"),
        (lambda x, w, t: fl.linear_cross_entropy(x, w, t + VOCAB), IndexError, "out of bounds"),
        (
            lambda x, w, t: fl.linear_cross_entropy(x, w, t, bias=np.zeros(3)),
            ValueError,
            "bias must have shape",
        ),
        (
            lambda x, w, t: fl.linear_cross_entropy(x, w, t, class_weight=np.ones(3)),
            ValueError,
            "class_weight must have shape",
        ),
        (
            lambda x, w, t: fl.linear_cross_entropy(x.astype(np.float16), w.astype(np.float16), t),
            TypeError,
            "float32 or float64",
        ),
        (
            lambda x, w, t: fl.linear_cross_entropy(x, w, t, chunk_bytes=0),
            ValueError,
            "chunk_bytes must be positive",
        ),
        (
            lambda x, w, t: fl.linear_cross_entropy(x, w, t, reduction="avg"),
            ValueError,
            "not a valid value for reduction",
        ),
    ],
)
def test_bad_input_raises(call, error, match):
    x, w, _, t = _inputs(_rng("errors"), np.float32)
    with pytest.raises(error, match=match):
        call(x, w, t)
