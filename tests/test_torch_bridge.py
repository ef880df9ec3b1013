"""fastloss.torch: autograd Functions over the fastloss kernels, against torch itself.

Every function: ``torch.autograd.gradcheck`` in float64 on small shapes, and values and
gradients against ``torch.nn.functional`` in float32 for every reduction, 'none' with a random
upstream gradient included. Also: scalar losses hand autograd the gradient of the fused
forward (no backward kernel runs), ``retain_graph`` double backward, upstream scaling,
16-bit dtypes, zero-copy views, and the errors (non-CPU tensors, gradients of targets).
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import numpy as np
import pytest

try:
    import torch
except ImportError:  # pragma: no cover - CI installs torch
    if os.environ.get("FASTLOSS_REQUIRE_TORCH", "").strip() == "1":
        raise
    pytest.skip("torch is not installed; set FASTLOSS_REQUIRE_TORCH=1 to make this a failure",
                allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

import fastloss  # noqa: E402
import fastloss.torch as flt  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    # kl_div's reduction='mean' warns (as torch does); the cases use it on purpose.
    pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss:UserWarning"),
]

REDUCTIONS = ("none", "mean", "sum")


def _rng(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float64, seed=0, scale=1.0):
    return (torch.randn(shape, generator=_rng(seed), dtype=torch.float64) * scale).to(dtype)


# ---------------------------------------------------------------------------------------------
# Cases: (name, fastloss.torch call, torch call, input factory); the input is the only tensor
# that requires grad, everything else is closed over.


def _index_target(n, c, seed=1, ignore=None):
    t = torch.randint(0, c, (n,), generator=_rng(seed))
    if ignore is not None:
        t[0] = ignore
    return t


def _cases():
    cases = []
    t4 = _index_target(4, 5)
    t4_ignored = _index_target(4, 5, ignore=-100)
    w5 = torch.rand(5, generator=_rng(2), dtype=torch.float64) + 0.5
    spatial_t = torch.randint(0, 3, (2, 4), generator=_rng(3))
    probs = torch.softmax(randn(4, 5, seed=4), dim=1)

    def add(name, kwargs, fl_fn, torch_fn, make_input, target=None):
        cases.append(pytest.param(
            fl_fn, torch_fn, make_input, target, kwargs,
            id=f"{name}-" + "-".join(f"{k}={v}" for k, v in kwargs.items() if k != "weight")
            + ("-weight" if "weight" in kwargs else ""),
        ))

    add("logsumexp", {"dim": 1}, flt.logsumexp, torch.logsumexp, lambda: randn(3, 4))
    add("logsumexp", {"dim": (0, 2), "keepdim": True}, flt.logsumexp, torch.logsumexp,
        lambda: randn(2, 3, 4))
    for name in ("softmax", "log_softmax"):
        add(name, {"dim": 1}, getattr(flt, name), getattr(F, name), lambda: randn(3, 6))
        add(name, {"dim": 1}, getattr(flt, name), getattr(F, name), lambda: randn(2, 3, 4))
        add(name, {"dim": 0}, getattr(flt, name), getattr(F, name), lambda: randn(5))
    add("sigmoid", {}, flt.sigmoid, torch.sigmoid, lambda: randn(5, scale=3))
    add("logsigmoid", {}, flt.logsigmoid, F.logsigmoid, lambda: randn(5, scale=3))
    for red in REDUCTIONS:
        add("nll_loss", {"reduction": red}, flt.nll_loss, F.nll_loss,
            lambda: randn(4, 5), t4_ignored)
        add("nll_loss", {"reduction": red, "weight": w5}, flt.nll_loss, F.nll_loss,
            lambda: randn(4, 5), t4)
        add("cross_entropy", {"reduction": red}, flt.cross_entropy, F.cross_entropy,
            lambda: randn(4, 5, scale=2), t4)
        add("cross_entropy", {"reduction": red, "weight": w5, "label_smoothing": 0.2},
            flt.cross_entropy, F.cross_entropy, lambda: randn(4, 5, scale=2), t4_ignored)
        add("cross_entropy", {"reduction": red, "ignore_index": 2}, flt.cross_entropy,
            F.cross_entropy, lambda: randn(4, 5), t4)
        add("cross_entropy", {"reduction": red, "label_smoothing": 0.1}, flt.cross_entropy,
            F.cross_entropy, lambda: randn(2, 3, 4), spatial_t)
        add("cross_entropy", {"reduction": red, "label_smoothing": 0.1}, flt.cross_entropy,
            F.cross_entropy, lambda: randn(4, 5), probs)
        add("kl_div", {"reduction": red}, flt.kl_div, F.kl_div,
            lambda: torch.log_softmax(randn(4, 5), 1), probs)
        add("binary_cross_entropy", {"reduction": red, "weight": w5}, flt.binary_cross_entropy,
            F.binary_cross_entropy, lambda: torch.rand(4, 5, generator=_rng(5),
                                                       dtype=torch.float64) * 0.8 + 0.1, probs)
        add("binary_cross_entropy_with_logits",
            {"reduction": red, "weight": w5, "pos_weight": w5 * 2},
            flt.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits,
            lambda: randn(4, 5, scale=2), probs)
        add("mse_loss", {"reduction": red}, flt.mse_loss, F.mse_loss, lambda: randn(4, 5), probs)
        add("multi_margin_loss", {"reduction": red, "p": 2, "margin": 0.7, "weight": w5},
            flt.multi_margin_loss, F.multi_margin_loss, lambda: randn(4, 5), t4)
    add("kl_div", {"reduction": "batchmean", "log_target": True}, flt.kl_div, F.kl_div,
        lambda: torch.log_softmax(randn(4, 5), 1), torch.log(probs))
    add("multi_margin_loss", {"reduction": "mean"}, flt.multi_margin_loss,
        F.multi_margin_loss, lambda: randn(4, 5, scale=2), t4)
    return cases


CASES = _cases()


def _call(fn, x, target, kwargs, dtype=None):
    if dtype is not None:
        kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        if target is not None and target.is_floating_point():
            target = target.to(dtype)
    return fn(x, **kwargs) if target is None else fn(x, target, **kwargs)


@pytest.mark.parametrize(("fl_fn", "torch_fn", "make_input", "target", "kwargs"), CASES)
def test_gradcheck_float64(fl_fn, torch_fn, make_input, target, kwargs):
    x = make_input().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: _call(fl_fn, x, target, kwargs), (x,), eps=1e-6, atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize(("fl_fn", "torch_fn", "make_input", "target", "kwargs"), CASES)
def test_values_and_gradients_match_torch_float32(fl_fn, torch_fn, make_input, target, kwargs):
    x = make_input().float().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    ours = _call(fl_fn, x, target, kwargs, torch.float32)
    expected = _call(torch_fn, x_ref, target, kwargs, torch.float32)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=2e-5, atol=2e-6)
    upstream = randn(*expected.shape, dtype=torch.float32, seed=9) + 0.5
    (grad,) = torch.autograd.grad(ours, x, upstream)
    (grad_ref,) = torch.autograd.grad(expected, x_ref, upstream)
    torch.testing.assert_close(grad, grad_ref, rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# The gradient of a scalar loss comes from the fused forward


def test_scalar_loss_backward_hands_over_the_forward_gradient(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a scalar loss must not run a backward kernel")

    monkeypatch.setattr(fastloss, "cross_entropy_backward", refuse)
    x = randn(6, 7, dtype=torch.float32).requires_grad_()
    t = _index_target(6, 7)
    loss = flt.cross_entropy(x, t, label_smoothing=0.1)
    computed = loss.grad_fn.grad
    loss.backward()
    assert x.grad.data_ptr() == computed.ctypes.data  # adopted without a copy
    x_ref = x.detach().clone().requires_grad_()
    F.cross_entropy(x_ref, t, label_smoothing=0.1).backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_gradient_buffers_are_reused_only_once_released():
    flt._BUFFERS.clear()
    x = randn(8, 6, dtype=torch.float32).requires_grad_()
    t = _index_target(8, 6)
    x_ref = x.detach().clone().requires_grad_()
    F.cross_entropy(x_ref, t).backward()

    def step():
        flt.cross_entropy(x, t).backward()
        grad, x.grad = x.grad, None
        torch.testing.assert_close(grad, x_ref.grad)
        return grad

    held = step()
    snapshot = held.clone()
    second = step()
    assert second.data_ptr() != held.data_ptr()  # held by the caller: never overwritten
    torch.testing.assert_close(held, snapshot, rtol=0, atol=0)
    address = second.data_ptr()
    del second
    assert step().data_ptr() == address  # released: its memory takes the next gradient


def test_upstream_gradient_scales_and_retain_graph_recomputes():
    x = randn(5, 4).requires_grad_()
    t = _index_target(5, 4)
    x_ref = x.detach().clone().requires_grad_()
    loss, loss_ref = flt.cross_entropy(x, t), F.cross_entropy(x_ref, t)
    (3.5 * loss).backward(retain_graph=True)
    (3.5 * loss_ref).backward(retain_graph=True)
    torch.testing.assert_close(x.grad, x_ref.grad)
    loss.backward()  # second backward of the same graph: recomputed, not scaled twice
    loss_ref.backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_no_gradient_is_computed_when_autograd_will_not_ask_for_one(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the forward computed a gradient nobody will use")

    monkeypatch.setattr(fastloss, "cross_entropy_with_grad", refuse)
    x, t = randn(3, 4), _index_target(3, 4)
    assert not flt.cross_entropy(x, t).requires_grad
    x.requires_grad_()
    with torch.no_grad():  # an evaluation loop
        torch.testing.assert_close(flt.cross_entropy(x, t), F.cross_entropy(x, t))


def test_double_backward_is_refused():
    x, t = randn(3, 4).requires_grad_(), _index_target(3, 4)
    upstream = torch.ones((), dtype=x.dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(flt.cross_entropy(x, t), x, upstream, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


# ---------------------------------------------------------------------------------------------
# Layouts and dtypes


def test_non_contiguous_input_and_zero_copy_views():
    base = randn(6, 5, dtype=torch.float32)
    x = base.t().requires_grad_()  # (5, 6), transposed strides
    x_ref = x.detach().clone().requires_grad_()
    t = _index_target(5, 6)
    flt.cross_entropy(x, t).backward()
    F.cross_entropy(x_ref, t).backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    view = flt._numpy(base)
    assert np.shares_memory(view, base.numpy())
    out = flt._tensor(view)
    assert out.data_ptr() == base.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_dtypes(dtype):
    x32 = randn(4, 9, dtype=torch.float32, scale=2)
    x = x32.to(dtype).requires_grad_()
    t = _index_target(4, 9)
    loss = flt.cross_entropy(x, t)
    loss.backward()
    assert loss.dtype == dtype and x.grad.dtype == dtype
    x_ref = x.detach().float().requires_grad_()
    F.cross_entropy(x_ref, t).backward()
    # Outputs are rounded to the 16-bit type (bfloat16 keeps 8 bits): the log_softmax
    # gradient 1 - C p cancels, so its absolute error is about C ulps of p.
    tolerance = {"rtol": 2e-2, "atol": 2e-3 if dtype == torch.float16 else 4e-2}
    torch.testing.assert_close(loss.float(), F.cross_entropy(x_ref, t), **tolerance)
    torch.testing.assert_close(x.grad.float(), x_ref.grad, **tolerance)
    y = flt.log_softmax(x, dim=1)
    assert y.dtype == dtype
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    (grad_ref,) = torch.autograd.grad(F.log_softmax(x, dim=1), x, torch.ones_like(y))
    torch.testing.assert_close(grad.float(), grad_ref.float(), **tolerance)


def test_softmax_dtype_argument_and_implicit_dim_warning():
    x = randn(3, 4, dtype=torch.float32).requires_grad_()
    y = flt.softmax(x, dim=1, dtype=torch.float64)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert x.grad.dtype == torch.float32
    with pytest.warns(UserWarning, match="Implicit dimension choice for log_softmax") as caught:
        flt.log_softmax(x)
    assert caught[0].filename == __file__  # attributed to the caller, as torch does


def test_legacy_reduction_arguments_warn_once():
    x = randn(3, 4).requires_grad_()
    t = _index_target(3, 4)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        loss = flt.nll_loss(x, t, size_average=False)
    loss.backward()  # no second warning from the backward
    x_ref = x.detach().clone().requires_grad_()
    with pytest.warns(UserWarning):
        F.nll_loss(x_ref, t, size_average=False).backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


# ---------------------------------------------------------------------------------------------
# Errors


def test_non_cpu_tensors_are_refused_clearly():
    x = torch.empty(3, 4, device="meta")
    with pytest.raises(ValueError, match=r"input is on device 'meta'.*\.cpu\(\)"):
        flt.cross_entropy(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target is on device 'meta'"):
        flt.cross_entropy(randn(3, 4), torch.zeros(3, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match=r"torch\.logsumexp"):
        flt.logsumexp(x, dim=1)


def test_gradients_of_targets_and_weights_are_refused_clearly():
    x = randn(3, 4).requires_grad_()
    probs = torch.softmax(randn(3, 4), 1).requires_grad_()
    with pytest.raises(NotImplementedError, match=r"target requires grad.*target\.detach\(\)"):
        flt.cross_entropy(x, probs)
    with pytest.raises(NotImplementedError, match="target requires grad"):
        flt.mse_loss(x, probs)
    weight = torch.ones(4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match="weight requires grad"):
        flt.cross_entropy(x, _index_target(3, 4), weight=weight)
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor.*fastloss\.softmax"):
        flt.softmax(np.zeros((2, 3)), dim=1)


def test_fastloss_errors_pass_through():
    with pytest.raises(IndexError, match="Target 7 is out of bounds for 4 classes"):
        flt.cross_entropy(randn(2, 4), torch.tensor([0, 7]))


def test_import_fastloss_imports_neither_bridge():
    code = (
        "import sys, fastloss; "
        "bad = [m for m in ('fastloss.torch', 'fastloss.dask', 'torch', 'dask') "
        "if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", flt.__all__)
def test_docstring_is_numpydoc_with_an_example_that_runs(name):
    func = getattr(flt, name)
    doc = func.__doc__ or ""
    for section in ("Parameters", "Returns", "Examples"):
        assert section in doc, f"fastloss.torch.{name} needs a {section} section"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    for test in doctest.DocTestFinder(recurse=False).find(func, name, globs={}):
        runner.run(test)
    assert runner.failures == 0, f"the example of fastloss.torch.{name} does not run as shown"
