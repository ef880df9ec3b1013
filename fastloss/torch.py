r"""fastloss behind ``torch.autograd``: torch's signatures on CPU tensors, fastloss's kernels.

Every function of ``torch.nn.functional`` that fastloss implements (and ``torch.logsumexp``,
``torch.sigmoid``) is here as a call backed by a :class:`torch.autograd.Function`, so it can
replace the torch call inside a model and ``loss.backward()`` works as usual::

    import fastloss.torch as flt
    loss = flt.cross_entropy(logits, target)   # instead of F.cross_entropy
    loss.backward()

How the gradient is obtained, per function:

* losses with a scalar result ('mean', 'sum', 'batchmean'): when ``input`` requires grad,
  the forward runs the fused ``<loss>_with_grad`` kernel, which writes the gradient in the
  same pass that computes the loss; ``backward`` returns that gradient, multiplied in place
  by ``grad_output`` unless it is 1. Nothing is recomputed.
* losses with ``reduction='none'``: the upstream gradient is only known in ``backward``,
  which runs ``<loss>_backward(grad_output, ...)`` (one fused pass).
* softmax and log_softmax: from the saved output, one pass over it and ``grad_output``
  (:math:`y (g - \sum g y)` and :math:`g - e^{y} \sum g`).
* logsumexp, sigmoid, logsigmoid: ``<name>_backward`` on the saved input.

Tensors reach the kernels without a copy (``tensor.detach().numpy()``; bfloat16 as a bit
view, which needs ``ml_dtypes``), and results come back with ``torch.from_numpy``. Only CPU
tensors are accepted. Gradients are computed with respect to ``input`` only: a target, weight
or pos_weight that requires grad is refused with a clear error (torch differentiates
probability targets; detach them, or use ``torch.nn.functional`` for that). Backward functions
are once-differentiable (no double backward).

This module is not imported by ``import fastloss``; it needs torch
(``pip install 'fastloss[torch]'``).
"""

from __future__ import annotations

import sys
import threading
import warnings

import numpy as np
import torch
from torch.autograd.function import once_differentiable

import fastloss as _fl

from . import _kernels_autograd as _K
from ._arrays import _BFLOAT, canonical, normalize_dim, rows_or_strided, storage, tile_for
from ._reduction import legacy_reduction

__all__ = [
    "logsumexp",
    "softmax",
    "log_softmax",
    "sigmoid",
    "logsigmoid",
    "nll_loss",
    "cross_entropy",
    "kl_div",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "multi_margin_loss",
]

# Where users find the same function in torch (named in errors).
_TORCH_NAMES = {"logsumexp": "torch.logsumexp", "sigmoid": "torch.sigmoid"}


def _torch_name(func: str) -> str:
    return _TORCH_NAMES.get(func, f"torch.nn.functional.{func}")


# ---------------------------------------------------------------------------------------------
# Tensors <-> arrays, without copies


def _check_tensor(value, func: str, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"fastloss.torch.{func}: {name} must be a torch.Tensor, got "
            f"{type(value).__name__}; for NumPy arrays call fastloss.{func}"
        )
    if value.device.type != "cpu":
        raise ValueError(
            f"fastloss.torch.{func}: {name} is on device '{value.device}', but fastloss runs "
            f"on the CPU only; move it with {name}.cpu(), or call {_torch_name(func)} for "
            "tensors on an accelerator"
        )
    if value.layout != torch.strided:
        raise TypeError(
            f"fastloss.torch.{func}: {name} has layout {value.layout}; pass a dense tensor "
            f"({name}.to_dense())"
        )


def _check_operand(value, func: str, name: str) -> None:
    """A target / weight / pos_weight: on the CPU, and not asking for a gradient."""
    if not isinstance(value, torch.Tensor):
        return  # lists, arrays, numbers: fastloss converts them
    _check_tensor(value, func, name)
    if value.requires_grad:
        raise NotImplementedError(
            f"fastloss.torch.{func}: {name} requires grad, but fastloss.torch computes the "
            f"gradient with respect to input only (torch can differentiate {name} here); "
            f"pass {name}.detach(), or call {_torch_name(func)} when d(loss)/d({name}) is "
            "needed"
        )


def _numpy(t: torch.Tensor) -> np.ndarray:
    """The tensor's memory as an array (a view: no copy, whatever the strides)."""
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.dtype == torch.bfloat16:
        if _BFLOAT is None:
            raise TypeError(
                "bfloat16 tensors need the ml_dtypes package (pip install ml_dtypes), which "
                "gives NumPy a bfloat16 dtype"
            )
        return t.view(torch.int16).numpy().view(_BFLOAT)
    return t.numpy()


def _operand(value):
    return _numpy(value) if isinstance(value, torch.Tensor) else value


def _tensor(a) -> torch.Tensor:
    """An array as a tensor sharing its memory."""
    a = np.asarray(a)
    if not a.flags.writeable:  # torch.from_numpy warns on read-only memory
        a = a.copy()
    if _BFLOAT is not None and a.dtype == _BFLOAT:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


# ---------------------------------------------------------------------------------------------
# Gradient buffers


class _GradientBuffers:
    """Gradient arrays handed to autograd, reused once nothing references them any more.

    A fresh gradient array costs a page fault per 4 KB on its first write, which on this
    project's VM takes longer than the fused loss kernel itself (and slows down with more
    threads). A training step drops the previous step's gradient (autograd frees the
    logits' gradient after the layer below consumed it, or ``zero_grad`` drops a leaf's), so
    its memory can take the next one: the same idea as torch's caching allocator on GPUs.
    A buffer is reused only when this cache holds the last reference to it (a tensor or
    view sharing its memory keeps a reference), and at most ``KEEP`` buffers are kept.
    """

    KEEP = 2
    # Reference counts are CPython's: elsewhere, never reuse.
    ENABLED = sys.implementation.name == "cpython"

    def __init__(self):
        self._arrays: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape, dtype) -> np.ndarray | None:
        """A free buffer of this shape and dtype, or None."""
        if not self.ENABLED:
            return None
        with self._lock:
            for i in range(len(self._arrays)):
                # Unused: 2 references, the list's and getrefcount's argument (no local
                # name may hold the array while it is counted).
                if (sys.getrefcount(self._arrays[i]) == 2 and self._arrays[i].shape == shape
                        and self._arrays[i].dtype == dtype):
                    array = self._arrays.pop(i)
                    self._arrays.append(array)  # most recently used last
                    return array
        return None

    def keep(self, array: np.ndarray) -> None:
        if not self.ENABLED or not array.flags.c_contiguous or array.base is not None:
            return
        with self._lock:
            if not any(a is array for a in self._arrays):
                self._arrays.append(array)
                del self._arrays[: -self.KEEP]

    def clear(self) -> None:
        with self._lock:
            self._arrays.clear()


_BUFFERS = _GradientBuffers()


# ---------------------------------------------------------------------------------------------
# logsumexp, sigmoid, logsigmoid: backward on the saved input


class _InputBackward(torch.autograd.Function):
    """``fastloss.<op>`` forward; ``fastloss.<op>_backward`` on the saved input."""

    @staticmethod
    def forward(ctx, op, options, input):
        ctx.op, ctx.options = op, options
        ctx.save_for_backward(input)
        return _tensor(getattr(_fl, op)(_numpy(input), **options))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        backward = getattr(_fl, ctx.op + "_backward")
        return None, None, _tensor(backward(_numpy(grad_output), _numpy(input), **ctx.options))


def logsumexp(input, dim, keepdim=False):
    r"""``torch.logsumexp`` computed by :func:`fastloss.logsumexp`, differentiable.

    .. math::

        \operatorname{logsumexp}(x) = m + \log \sum_j e^{x_j - m}, \qquad
        \frac{\partial}{\partial x_j} = e^{x_j - \operatorname{logsumexp}(x)}

    Parameters
    ----------
    input : torch.Tensor
        A CPU tensor of any shape and floating dtype.
    dim : int or tuple of ints
        The dims to reduce.
    keepdim : bool, default False

    Returns
    -------
    torch.Tensor
        As ``torch.logsumexp`` returns; its backward runs :func:`fastloss.logsumexp_backward`.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    >>> y = flt.logsumexp(x, dim=1)
    >>> y.backward(torch.tensor([2.0], dtype=torch.float64))
    >>> y.detach(), x.grad
    (tensor([0.6931], dtype=torch.float64), tensor([[1., 1.]], dtype=torch.float64))
    """
    _check_tensor(input, "logsumexp", "input")
    return _InputBackward.apply("logsumexp", {"dim": dim, "keepdim": keepdim}, input)


def sigmoid(input):
    r"""``torch.sigmoid`` computed by :func:`fastloss.sigmoid`, differentiable.

    .. math::

        \sigma(x) = \frac{1}{1 + e^{-x}}, \qquad \sigma'(x) = \sigma(x)(1 - \sigma(x))

    Parameters
    ----------
    input : torch.Tensor
        A CPU tensor of any shape.

    Returns
    -------
    torch.Tensor
        Shaped like ``input``; its backward runs :func:`fastloss.sigmoid_backward`.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.zeros(2, requires_grad=True)
    >>> flt.sigmoid(x).sum().backward()
    >>> x.grad
    tensor([0.2500, 0.2500])
    """
    _check_tensor(input, "sigmoid", "input")
    return _InputBackward.apply("sigmoid", {}, input)


def logsigmoid(input):
    r"""``torch.nn.functional.logsigmoid`` computed by :func:`fastloss.logsigmoid`.

    .. math::

        \log \sigma(x) = \min(x, 0) - \log(1 + e^{-|x|}), \qquad
        \frac{\partial}{\partial x} = \sigma(-x)

    Parameters
    ----------
    input : torch.Tensor
        A CPU tensor of any shape and floating dtype.

    Returns
    -------
    torch.Tensor
        Shaped like ``input``; its backward runs :func:`fastloss.logsigmoid_backward`.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.tensor([0.0, -100.0], requires_grad=True)
    >>> flt.logsigmoid(x).sum().backward()
    >>> x.grad
    tensor([0.5000, 1.0000])
    """
    _check_tensor(input, "logsigmoid", "input")
    return _InputBackward.apply("logsigmoid", {}, input)


# ---------------------------------------------------------------------------------------------
# softmax, log_softmax: backward from the saved output


def _softmax_output_backward(g: np.ndarray, y: np.ndarray, dim: int, log: bool) -> np.ndarray:
    """d(loss)/d(input) of softmax / log_softmax from its output ``y``."""
    y3 = canonical(y.reshape(1) if y.ndim == 0 else y, dim)
    g3 = np.ascontiguousarray(g, dtype=y.dtype).reshape(y3.shape)
    out = np.empty(y.shape, y.dtype)
    if y.size:
        outer, channels, inner = y3.shape
        ys, gs = storage(rows_or_strided(y3)), storage(rows_or_strided(g3))
        outs = storage(rows_or_strided(out.reshape(y3.shape)))
        if inner == 1:
            _K.softmax_output_backward_rows(ys.size, outer, gs, ys, outs, log)
        else:
            tile = tile_for(channels, y.dtype, inner)
            items = outer * (-(-inner // tile))
            _K.softmax_output_backward_strided(ys.size, items, gs, ys, outs, tile, log)
    return out


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, dim, log):
        forward = _fl.log_softmax if log else _fl.softmax
        output = _tensor(forward(_numpy(input), dim))
        ctx.dim, ctx.log = dim, log
        ctx.save_for_backward(output)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        grad = _softmax_output_backward(_numpy(grad_output), _numpy(output), ctx.dim, ctx.log)
        return _tensor(grad), None, None


def _softmax_dim(func: str, ndim: int, stacklevel: int) -> int:
    # torch's deprecated implicit choice, with its warning (stacklevel counted from here).
    warnings.warn(
        f"Implicit dimension choice for {func} has been deprecated. "
        "Change the call to include dim=X as an argument.",
        UserWarning,
        stacklevel=stacklevel,
    )
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_call(func, input, dim, stacklevel, dtype, log):
    _check_tensor(input, func, "input")
    if dim is None:
        dim = _softmax_dim(func, input.dim(), stacklevel + 1)
    if dtype is not None:
        input = input.to(dtype)  # a torch op: autograd casts the gradient back
    return _Softmax.apply(input, normalize_dim(dim, input.dim()), log)


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    r"""``torch.nn.functional.softmax`` computed by :func:`fastloss.softmax`.

    .. math::

        y_j = \frac{e^{x_j}}{\sum_k e^{x_k}}, \qquad
        \frac{\partial L}{\partial x_j} = y_j \Big(g_j - \sum_k g_k y_k\Big)

    The backward reads the saved output ``y`` and ``grad_output`` once each (no exponential).

    Parameters
    ----------
    input : torch.Tensor
        A CPU tensor of any shape and floating dtype.
    dim : int, optional
        The dim to normalize over; None applies torch's deprecated implicit choice (warns).
    _stacklevel : int, default 3
        Stack level of that warning, as in torch.
    dtype : torch.dtype, optional
        Cast ``input`` to this dtype first.

    Returns
    -------
    torch.Tensor
        Shaped like ``input``.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    >>> y = flt.softmax(x, dim=1)
    >>> y[0, 2].backward()
    >>> y.detach(), x.grad
    (tensor([[0.0900, 0.2447, 0.6652]]), tensor([[-0.0599, -0.1628,  0.2227]]))
    """
    return _softmax_call("softmax", input, dim, _stacklevel, dtype, log=False)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    r"""``torch.nn.functional.log_softmax`` computed by :func:`fastloss.log_softmax`.

    .. math::

        y_j = x_j - \log \sum_k e^{x_k}, \qquad
        \frac{\partial L}{\partial x_j} = g_j - e^{y_j} \sum_k g_k

    The backward reads the saved output ``y`` and ``grad_output`` once each.

    Parameters
    ----------
    input, dim, _stacklevel, dtype
        As for :func:`softmax`.

    Returns
    -------
    torch.Tensor
        Shaped like ``input``.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    >>> flt.log_softmax(x, dim=1)[0, 0].backward()
    >>> x.grad
    tensor([[ 0.9100, -0.2447, -0.6652]])
    """
    return _softmax_call("log_softmax", input, dim, _stacklevel, dtype, log=True)


# ---------------------------------------------------------------------------------------------
# Losses: the fused gradient of the forward, or <loss>_backward for reduction='none'


class _Loss(torch.autograd.Function):
    """One loss. ``operands`` are the tensors after ``input`` (target, weight, pos_weight),
    named by ``names``; ``options`` the other keyword arguments."""

    @staticmethod
    def forward(ctx, func, fused, names, options, input, *operands):
        ctx.func, ctx.names, ctx.options = func, names, options
        x = _numpy(input)
        arrays = [_operand(v) for v in operands]
        kwargs = dict(zip(names[1:], arrays[1:], strict=True), **options)
        ctx.grad = None
        if fused and ctx.needs_input_grad[4]:
            # The gradient comes out of the same pass as the loss; backward only scales it.
            with_grad = getattr(_fl, func + "_with_grad")
            out = _BUFFERS.take(x.shape, x.dtype)
            loss, ctx.grad = with_grad(x, arrays[0], **kwargs, out=out)
            _BUFFERS.keep(ctx.grad)
        else:
            loss = getattr(_fl, func)(x, arrays[0], **kwargs)
        ctx.save_for_backward(input, *(v if isinstance(v, torch.Tensor) else None
                                       for v in operands))
        ctx.plain = [None if isinstance(v, torch.Tensor) else v for v in operands]
        return _tensor(loss)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        # Taken, not kept: the returned tensor must be the only reference for autograd to
        # adopt it as input.grad without a copy (and a second backward, with retain_graph,
        # recomputes below instead of scaling it twice).
        grad, ctx.grad = ctx.grad, None
        if grad is not None:
            result = _tensor(grad)
            if grad_output.item() != 1.0:
                result.mul_(grad_output)
        else:
            input, *saved = ctx.saved_tensors
            arrays = [
                _operand(s) if s is not None else p
                for s, p in zip(saved, ctx.plain, strict=True)
            ]
            kwargs = dict(zip(ctx.names[1:], arrays[1:], strict=True), **ctx.options)
            backward = getattr(_fl, ctx.func + "_backward")
            x = _numpy(input)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the forward already gave them
                grad = backward(_numpy(grad_output), x, arrays[0], **kwargs,
                                out=_BUFFERS.take(x.shape, x.dtype))
            _BUFFERS.keep(grad)
            result = _tensor(grad)
        return (None, None, None, None, result) + (None,) * len(ctx.names)


def _loss(func: str, input, operands: dict, options: dict):
    _check_tensor(input, func, "input")
    for name, value in operands.items():
        if value is not None:
            _check_operand(value, func, name)
    size_average, reduce = options.get("size_average"), options.get("reduce")
    if size_average is not None or reduce is not None:
        scalar = legacy_reduction(size_average, reduce) != "none"
    else:
        scalar = options.get("reduction", "mean") != "none"
    # Whether the forward computes the gradient: only for a scalar loss that autograd will
    # differentiate (forward runs in no-grad mode, so this is decided here).
    fused = scalar and input.requires_grad and torch.is_grad_enabled()
    return _Loss.apply(func, fused, tuple(operands), options, input, *operands.values())


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    r"""``torch.nn.functional.nll_loss`` computed by :func:`fastloss.nll_loss`.

    .. math::

        \ell_i = -w_{t_i} x_{i t_i}, \qquad
        \frac{\partial \ell_i}{\partial x_{ic}} = -w_{t_i} [c = t_i]

    Parameters
    ----------
    input : torch.Tensor
        Log-probabilities on the CPU, (C,), (N, C) or (N, C, d1, ..., dK).
    target : torch.Tensor
        Class indices, (), (N,) or (N, d1, ..., dK).
    weight, size_average, ignore_index, reduce, reduction
        As in torch.

    Returns
    -------
    torch.Tensor
        As ``F.nll_loss`` returns. With a scalar reduction and ``input.requires_grad``, the
        gradient is computed in the forward pass (``nll_loss_with_grad``).

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])).requires_grad_()
    >>> loss = flt.nll_loss(x, torch.tensor([0, 1]))
    >>> loss.backward()
    >>> loss.detach(), x.grad
    (tensor(0.2899), tensor([[-0.5000,  0.0000,  0.0000],
            [ 0.0000, -0.5000,  0.0000]]))
    """
    return _loss(
        "nll_loss", input, {"target": target, "weight": weight},
        dict(size_average=size_average, ignore_index=ignore_index, reduce=reduce,
             reduction=reduction),
    )


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    r"""``torch.nn.functional.cross_entropy`` computed by :func:`fastloss.cross_entropy`.

    .. math::

        \ell_i = \operatorname{lse}(x_i) - x_{i t_i}, \qquad
        \frac{\partial \ell_i}{\partial x_{ic}} = \operatorname{softmax}(x_i)_c - [c = t_i]

    (with weight and label smoothing as in :func:`fastloss.cross_entropy`). With a scalar
    reduction and ``input.requires_grad``, the forward runs the fused
    :func:`fastloss.cross_entropy_with_grad`: one pass writes the loss and the gradient, and
    ``loss.backward()`` hands that gradient to autograd without recomputing anything.

    Parameters
    ----------
    input : torch.Tensor
        Logits on the CPU, (C,), (N, C) or (N, C, d1, ..., dK).
    target : torch.Tensor
        Class indices (), (N,) or (N, d1, ..., dK), or class probabilities like ``input``
        (which must not require grad).
    weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As in torch.

    Returns
    -------
    torch.Tensor
        As ``F.cross_entropy`` returns.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> logits = torch.tensor([[1.0, 2.0, 3.0]] * 3, requires_grad=True)
    >>> loss = flt.cross_entropy(logits, torch.tensor([2, 1, 0]))
    >>> loss.backward()
    >>> loss.detach(), logits.grad
    (tensor(1.4076), tensor([[ 0.0300,  0.0816, -0.1116],
            [ 0.0300, -0.2518,  0.2217],
            [-0.3033,  0.0816,  0.2217]]))
    """
    return _loss(
        "cross_entropy", input, {"target": target, "weight": weight},
        dict(size_average=size_average, ignore_index=ignore_index, reduce=reduce,
             reduction=reduction, label_smoothing=label_smoothing),
    )


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    r"""``torch.nn.functional.kl_div`` computed by :func:`fastloss.kl_div`.

    .. math::

        \ell = y (\log y - x), \qquad \frac{\partial \ell}{\partial x} = -y

    Parameters
    ----------
    input : torch.Tensor
        Log-probabilities on the CPU.
    target : torch.Tensor
        Probabilities (or log-probabilities with ``log_target``); must not require grad.
    size_average, reduce, reduction, log_target
        As in torch ('batchmean' included).

    Returns
    -------
    torch.Tensor
        As ``F.kl_div`` returns.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> p = torch.tensor([[0.6, 0.3, 0.1]])
    >>> x = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).requires_grad_()
    >>> loss = flt.kl_div(x, p, reduction="batchmean")
    >>> loss.backward()
    >>> loss.detach(), x.grad
    (tensor(0.0401), tensor([[-0.6000, -0.3000, -0.1000]]))
    """
    return _loss(
        "kl_div", input, {"target": target},
        dict(size_average=size_average, reduce=reduce, reduction=reduction,
             log_target=log_target),
    )


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    r"""``torch.nn.functional.binary_cross_entropy`` by :func:`fastloss.binary_cross_entropy`.

    .. math::

        \ell = -w (y \log x + (1 - y) \log(1 - x)), \qquad
        \frac{\partial \ell}{\partial x} = w \frac{x - y}{x (1 - x)}

    Parameters
    ----------
    input : torch.Tensor
        Probabilities on the CPU.
    target : torch.Tensor
        Same shape, in [0, 1]; must not require grad.
    weight, size_average, reduce, reduction
        As in torch.

    Returns
    -------
    torch.Tensor
        As ``F.binary_cross_entropy`` returns.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.tensor([0.5, 0.8], requires_grad=True)
    >>> flt.binary_cross_entropy(x, torch.tensor([1.0, 0.0]), reduction="sum").backward()
    >>> x.grad
    tensor([-2.,  5.])
    """
    return _loss(
        "binary_cross_entropy", input, {"target": target, "weight": weight},
        dict(size_average=size_average, reduce=reduce, reduction=reduction),
    )


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None,
                                     reduce=None, reduction="mean", pos_weight=None):
    r"""``F.binary_cross_entropy_with_logits`` by
    :func:`fastloss.binary_cross_entropy_with_logits`.

    .. math::

        \ell = -w (p y \log \sigma(x) + (1 - y) \log(1 - \sigma(x))), \qquad
        \frac{\partial \ell}{\partial x} = w ((p y + 1 - y) \sigma(x) - p y)

    Parameters
    ----------
    input : torch.Tensor
        Logits on the CPU.
    target : torch.Tensor
        Same shape; must not require grad.
    weight, size_average, reduce, reduction, pos_weight
        As in torch (weight and pos_weight must not require grad).

    Returns
    -------
    torch.Tensor
        As ``F.binary_cross_entropy_with_logits`` returns.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.zeros(2, requires_grad=True)
    >>> loss = flt.binary_cross_entropy_with_logits(x, torch.tensor([1.0, 0.0]))
    >>> loss.backward()
    >>> loss.detach(), x.grad
    (tensor(0.6931), tensor([-0.2500,  0.2500]))
    """
    return _loss(
        "binary_cross_entropy_with_logits", input,
        {"target": target, "weight": weight, "pos_weight": pos_weight},
        dict(size_average=size_average, reduce=reduce, reduction=reduction),
    )


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    r"""``torch.nn.functional.mse_loss`` computed by :func:`fastloss.mse_loss`.

    .. math::

        \ell = w (x - y)^2, \qquad \frac{\partial \ell}{\partial x} = 2 w (x - y)

    Parameters
    ----------
    input : torch.Tensor
        On the CPU.
    target : torch.Tensor
        Broadcasts with input; must not require grad.
    size_average, reduce, reduction, weight
        As in torch.

    Returns
    -------
    torch.Tensor
        As ``F.mse_loss`` returns.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> flt.mse_loss(x, torch.tensor([0.0, 0.0])).backward()
    >>> x.grad
    tensor([1., 2.])
    """
    return _loss(
        "mse_loss", input, {"target": target, "weight": weight},
        dict(size_average=size_average, reduce=reduce, reduction=reduction),
    )


def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, size_average=None,
                      reduce=None, reduction="mean"):
    r"""``torch.nn.functional.multi_margin_loss`` computed by
    :func:`fastloss.multi_margin_loss`.

    .. math::

        \ell_i = \frac{1}{C} \sum_{c \ne t_i} w_{t_i}\,
                 \max(0, \text{margin} - x_{i t_i} + x_{ic})^p

    Parameters
    ----------
    input : torch.Tensor
        Scores on the CPU, (C,) or (N, C).
    target : torch.Tensor
        Class indices.
    p, margin, weight, size_average, reduce, reduction
        As in torch.

    Returns
    -------
    torch.Tensor
        As ``F.multi_margin_loss`` returns.

    Examples
    --------
    >>> import torch, fastloss.torch as flt
    >>> x = torch.tensor([[0.1, 0.2, 0.4, 0.8]], requires_grad=True)
    >>> loss = flt.multi_margin_loss(x, torch.tensor([3]))
    >>> loss.backward()
    >>> loss.detach(), x.grad
    (tensor(0.3250), tensor([[ 0.2500,  0.2500,  0.2500, -0.7500]]))
    """
    return _loss(
        "multi_margin_loss", input, {"target": target, "weight": weight},
        dict(p=p, margin=margin, size_average=size_average, reduce=reduce,
             reduction=reduction),
    )
