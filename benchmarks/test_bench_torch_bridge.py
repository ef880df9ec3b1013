"""The torch autograd bridge in a CPU training step: ``fastloss.torch.cross_entropy`` against
``torch.nn.functional.cross_entropy``, float32, at (4096, 32000) (rows x vocabulary).

Two groups, each timing both implementations on the same tensors:

* ``torch-bridge-loss|4096x32000``: the loss part alone, forward and ``backward()`` of the
  loss on fixed logits that require grad (the gradient is dropped after each call, so every
  call allocates it afresh, as a training step does);
* ``torch-bridge-step|4096x32000``: a whole step, ``Linear(HIDDEN, 32000)`` + loss +
  ``backward()`` into the layer's weight and bias; the matmuls are torch's in both.

Both libraries run with Numba's thread count (the ``torch_module`` fixture). Real run, with
the ratio of each group shown in parentheses by pytest-benchmark::

    python -m pytest benchmarks/test_bench_torch_bridge.py --benchmark-enable \\
        --benchmark-columns=min,mean,rounds --benchmark-group-by=group

By default (``--benchmark-disable``) this is a smoke test on a small stand-in shape that
checks fastloss.torch's loss and gradients against torch's.
"""

from __future__ import annotations

import pytest

ROWS, CLASSES, HIDDEN = 4096, 32000, 256
SMOKE_ROWS, SMOKE_CLASSES, SMOKE_HIDDEN = 16, 1000, 32
IMPLEMENTATIONS = ("fastloss.torch", "torch")

pytestmark = [pytest.mark.torch]


def _loss_function(torch, impl: str):
    if impl == "torch":
        return torch.nn.functional.cross_entropy
    import fastloss.torch as flt

    return flt.cross_entropy


def _shape(benchmark):
    if benchmark.disabled:
        return SMOKE_ROWS, SMOKE_CLASSES, SMOKE_HIDDEN
    return ROWS, CLASSES, HIDDEN


def _timed(benchmark, run):
    if benchmark.disabled:
        return benchmark(run)
    run()  # warm-up: JIT compile (or cache load), torch's thread pool, first-touch pages
    return benchmark.pedantic(run, rounds=5, iterations=1)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_loss_part(benchmark, torch_module, impl):
    torch = torch_module
    rows, classes, _ = _shape(benchmark)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator).requires_grad_()
    target = torch.randint(0, classes, (rows,), generator=generator)
    loss_function = _loss_function(torch, impl)

    def run():
        loss = loss_function(logits, target)
        loss.backward()
        grad, logits.grad = logits.grad, None
        return loss.detach(), grad

    benchmark.group = f"torch-bridge-loss|{rows}x{classes}|float32"
    benchmark.extra_info.update(implementation=impl, rows=rows, classes=classes)
    loss, grad = _timed(benchmark, run)
    if benchmark.disabled:
        reference = logits.detach().clone().requires_grad_()
        expected = torch.nn.functional.cross_entropy(reference, target)
        expected.backward()
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, reference.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_training_step(benchmark, torch_module, impl):
    torch = torch_module
    rows, classes, hidden = _shape(benchmark)
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(rows, hidden, generator=generator)
    target = torch.randint(0, classes, (rows,), generator=generator)
    torch.manual_seed(2)
    layer = torch.nn.Linear(hidden, classes)
    loss_function = _loss_function(torch, impl)

    def run():
        loss = loss_function(layer(features), target)
        loss.backward()
        grads = layer.weight.grad, layer.bias.grad
        layer.zero_grad(set_to_none=True)
        return loss.detach(), grads

    benchmark.group = f"torch-bridge-step|{rows}x{classes}|hidden={hidden}|float32"
    benchmark.extra_info.update(implementation=impl, rows=rows, classes=classes, hidden=hidden)
    loss, (weight_grad, bias_grad) = _timed(benchmark, run)
    if benchmark.disabled:
        expected = torch.nn.functional.cross_entropy(layer(features), target)
        expected.backward()
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(weight_grad, layer.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(bias_grad, layer.bias.grad, rtol=1e-4, atol=1e-7)
