"""Throughput benchmarks generated from the registry (``fastloss._registry.CASES``).

Every case x its ``bench_shapes`` x dtype (float32, float64) is one benchmark group,
``"<function>|<shape>|<dtype>"``, timing these implementations on the same arrays:

* ``fastloss``: the public function (warmed up first, so no JIT compile is timed), and for
  losses ``fastloss-fused``, ``<name>_with_grad`` (loss and gradient in one pass);
* ``numpy``: ``fastloss.reference`` on the same dtype, the NumPy baseline;
* ``torch``: the registry's torch equivalent with as many threads as Numba (when importable);
* ``scipy``: ``scipy.special`` for logsumexp/softmax/log_softmax (when importable);
* ``roofline-read`` / ``roofline-rw`` / ``roofline-rw-fresh``: the memory-bandwidth ceilings
  (``roofline.py``).

Each forward group has a backward twin, ``"<function>_backward|..."``, timing fastloss's
``<name>_backward`` against the reference's and torch autograd (forward + backward). Two
float16 groups (logsumexp, log_softmax at 4096x32000) show elements/s against float32.
``extra_info`` holds ``bytes`` (the case's ``traffic``) and ``elements``; GB/s = bytes / time.

Real run::

    python -m pytest benchmarks --benchmark-enable --benchmark-json=results.json
    python benchmarks/report.py results.json > table.md

By default (pyproject's ``--benchmark-disable``) this is a smoke test: each benchmark runs
once, on a stand-in of its shape with at most ``SMOKE_MAX_ELEMENTS`` elements, and every
implementation's result is checked against fastloss's, so a benchmark can never time the
wrong thing. Shapes of ``BIG_ELEMENTS`` or more are marked ``slow``: with benchmarks enabled,
``-m "not slow"`` skips them, and ``-k "log_softmax and 4096"`` picks a few groups (the full
enabled suite takes hours on 2 cores: the NumPy baseline alone needs seconds per call).
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numba
import numpy as np
import pytest
from roofline import PROBES

from fastloss._cli import stand_in  # halves the largest dims other than dim / class dim
from fastloss._registry import CASES, with_bench_kwargs

DTYPES = ("float32", "float64")
FLOAT16_SHAPES = {"logsumexp": (4096, 32000), "log_softmax": (4096, 32000)}
SCIPY_FUNCTIONS = ("logsumexp", "softmax", "log_softmax")
BIG_ELEMENTS = 10_000_000
SMOKE_MAX_ELEMENTS = 200_000
# Smoke-mode agreement between implementations (rtol = atol), loose: it catches a benchmark
# timing the wrong function or dim, not last-ulp differences (the tests do that).
SMOKE_TOLERANCE = {"float16": 3e-2, "float32": 1e-4, "float64": 1e-9}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One benchmark: a registry case, a direction, a shape, a dtype and an implementation."""

    case_name: str
    backward: bool
    shape: tuple[int, ...]
    kwargs: tuple[tuple[str, object], ...]
    dtype: str
    impl: str

    @property
    def function(self) -> str:
        return self.case_name + ("_backward" if self.backward else "")

    @property
    def shape_text(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def group(self) -> str:
        return f"{self.function}|{self.shape_text}|{self.dtype}"

    @property
    def id(self) -> str:
        return f"{self.function}-{self.shape_text}-{self.dtype}-{self.impl}"


def _implementations(case, backward: bool) -> list[str]:
    impls = ["fastloss", "numpy"]
    if backward and case.has_loss_grad:
        impls.insert(1, "fastloss-fused")  # <name>_with_grad: loss and gradient in one pass
    if case.torch_name is not None:
        impls.append("torch")
    if not backward and case.name in SCIPY_FUNCTIONS:
        impls.append("scipy")
    return impls + list(PROBES)


def _group_specs(case, shape, kwargs, dtype, backward):
    items = tuple(sorted(kwargs.items()))
    return [
        Spec(case.name, backward, shape, items, dtype, impl)
        for impl in _implementations(case, backward)
    ]


def _all_specs() -> list[Spec]:
    """Group-major order, so consecutive benchmarks share one group's (large) arrays."""
    specs = []
    for case in CASES.values():
        for backward in (False, True):
            for shape, kwargs in case.bench_shapes:
                for dtype in DTYPES:
                    specs += _group_specs(case, shape, kwargs, dtype, backward)
    for name, shape in FLOAT16_SHAPES.items():
        case = CASES[name]
        kwargs = next((kw for s, kw in case.bench_shapes if s == shape), {})
        specs += _group_specs(case, shape, kwargs, "float16", backward=False)
    return specs


def _param(spec: Spec):
    marks = []
    if math.prod(spec.shape) >= BIG_ELEMENTS:
        # Calls of 0.05-50 s: the explicit warm-up call below replaces pytest-benchmark's
        # warm-up loop, and 3 rounds are enough for a min (a full run still takes hours).
        marks += [pytest.mark.slow, pytest.mark.benchmark(min_rounds=3, warmup=False)]
    if spec.impl == "torch":
        marks.append(pytest.mark.torch)
    return pytest.param(spec, id=spec.id, marks=marks)


SPECS = _all_specs()


# ---------------------------------------------------------------------------------------------
# One group's arrays, shared by its implementations


@dataclasses.dataclass
class GroupData:
    args: tuple
    kwargs: dict
    grad_output: np.ndarray | None  # backward groups only
    nbytes: int  # bytes one call must move (the case's traffic)
    roofline: str  # the probe that bounds this kernel: "roofline-read" or "roofline-rw"
    expected: np.ndarray | None  # fastloss's result, kept in smoke mode to check the others


# Only the latest group is kept: at 4096x32000 float64 one input is 1 GB.
_LATEST: dict[tuple, GroupData] = {}


def _array_bytes(args, kwargs) -> int:
    values = list(args) + list(kwargs.values())
    return sum(v.nbytes for v in values if isinstance(v, np.ndarray))


def group_data(spec: Spec, shape, smoke: bool) -> GroupData:
    key = (spec.case_name, spec.backward, shape, spec.kwargs, spec.dtype, smoke)
    if key in _LATEST:
        return _LATEST[key]
    _LATEST.clear()
    case = CASES[spec.case_name]
    rng = np.random.default_rng(zlib.crc32(spec.group.encode()))
    args, kwargs = with_bench_kwargs(case, shape, np.dtype(spec.dtype), rng, dict(spec.kwargs))
    # Running fastloss here also compiles it before anything is timed.
    result = np.asarray(case.fastloss(*args, **kwargs))
    if spec.backward:
        grad_output = rng.standard_normal(result.shape).astype(result.dtype)
        result = case.fastloss_backward(grad_output, *args, **kwargs)
        nbytes = grad_output.nbytes + _array_bytes(args, kwargs) + result.nbytes
        roofline = "roofline-rw"
    else:
        grad_output = None
        traffic = case.traffic or (lambda a, k, r: _array_bytes(a, k) + r.nbytes)
        nbytes = traffic(args, kwargs, result)
        writes_array = 2 * result.nbytes >= args[0].nbytes
        roofline = "roofline-rw" if writes_array else "roofline-read"
    data = GroupData(args, kwargs, grad_output, nbytes, roofline, result if smoke else None)
    _LATEST[key] = data
    return data


# ---------------------------------------------------------------------------------------------
# The timed callables


def _to_torch(torch, value):
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iu":
            value = value.astype(np.int64)  # torch's class-index dtype
        return torch.from_numpy(value)
    return value


def _torch_callable(torch, case, data: GroupData, backward: bool):
    function = case.torch_function()
    x = torch.from_numpy(data.args[0])
    rest = [_to_torch(torch, a) for a in data.args[1:]]
    kwargs = {k: _to_torch(torch, v) for k, v in data.kwargs.items()}
    if not backward:
        return lambda: function(x, *rest, **kwargs)
    x = x.requires_grad_(True)
    grad_output = torch.from_numpy(data.grad_output)

    def forward_backward():
        y = function(x, *rest, **kwargs)
        return torch.autograd.grad(y, x, grad_output)[0]

    return forward_backward


def _scipy_callable(special, case, data: GroupData):
    function = getattr(special, case.name)
    options = {"axis": data.kwargs["dim"]}
    if "keepdim" in data.kwargs:
        options["keepdims"] = data.kwargs["keepdim"]
    return lambda: function(data.args[0], **options)


def timed_callable(spec: Spec, data: GroupData, request):
    """-> (zero-argument callable, bytes it moves)."""
    case = CASES[spec.case_name]
    if spec.impl in PROBES:
        return PROBES[spec.impl](data.args[0])
    if spec.impl == "torch":
        torch = request.getfixturevalue("torch_module")
        return _torch_callable(torch, case, data, spec.backward), data.nbytes
    if spec.impl == "scipy":
        special = request.getfixturevalue("scipy_special")
        return _scipy_callable(special, case, data), data.nbytes
    if spec.impl == "fastloss-fused":
        function = case.fastloss_with_grad
        args, kwargs = data.args, {**data.kwargs, "grad_output": data.grad_output}
        return (lambda: function(*args, **kwargs)[1]), data.nbytes
    if spec.impl == "fastloss":
        function = case.fastloss_backward if spec.backward else case.fastloss
    elif spec.impl == "numpy":
        function = case.reference_backward if spec.backward else case.reference
    else:  # pragma: no cover - _implementations and this function disagree
        raise AssertionError(f"unknown implementation {spec.impl!r}")
    args, kwargs = data.args, data.kwargs
    if spec.backward:
        args = (data.grad_output, *args)
    return (lambda: function(*args, **kwargs)), data.nbytes


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().numpy()
    return np.asarray(value, dtype=np.float64)


@pytest.mark.parametrize("spec", [_param(s) for s in SPECS])
def test_benchmark(benchmark, request, spec: Spec):
    smoke = benchmark.disabled
    shape = stand_in(spec.shape, dict(spec.kwargs), SMOKE_MAX_ELEMENTS) if smoke else spec.shape
    data = group_data(spec, shape, smoke)
    run, nbytes = timed_callable(spec, data, request)

    benchmark.group = spec.group
    benchmark.extra_info.update(
        table="throughput",
        function=spec.function,
        shape=spec.shape_text,
        dtype=spec.dtype,
        implementation=spec.impl,
        bytes=int(nbytes),
        elements=int(data.args[0].size),
        roofline=data.roofline,
        threads=numba.get_num_threads(),
    )
    if not smoke:
        run()  # warm-up: JIT compile, torch's thread pool, first touch of fresh buffers
    result = benchmark(run)

    if smoke and spec.impl not in PROBES:
        tolerance = SMOKE_TOLERANCE[spec.dtype]
        np.testing.assert_allclose(
            _as_numpy(result),
            _as_numpy(data.expected),
            rtol=tolerance,
            atol=tolerance,
            equal_nan=True,
            err_msg=f"{spec.id}: {spec.impl} disagrees with fastloss on shape {shape}",
        )


def test_stand_in_keeps_reduced_dim_and_limit():
    limit = SMOKE_MAX_ELEMENTS
    assert stand_in((4096, 32000), {"dim": -1}, limit) == (4, 32000)
    assert stand_in((32, 10), {"dim": -1}, limit) == (32, 10)
    spatial = stand_in((16, 21, 256, 256), {"dim": 1}, limit)
    assert spatial[1] == 21 and math.prod(spatial) <= SMOKE_MAX_ELEMENTS
    assert math.prod(stand_in((1, 10**6), {"dim": -1}, limit)) <= SMOKE_MAX_ELEMENTS
    assert stand_in((4096, 32000), {}, limit) == (4, 32000)  # a loss keeps its class dim 1


def test_every_registry_case_is_benchmarked_both_ways():
    groups = {s.group for s in SPECS}
    for case in CASES.values():
        for shape, _ in case.bench_shapes:
            text = "x".join(map(str, shape))
            for dtype in DTYPES:
                assert f"{case.name}|{text}|{dtype}" in groups
                assert f"{case.name}_backward|{text}|{dtype}" in groups
