"""``python -m fastloss``: what is installed, whether it computes the right numbers, how fast.

    python -m fastloss              info, selfcheck, then a short bench (about a minute)
    python -m fastloss info         versions, threading layer, CPU and SIMD level, kernel cache
    python -m fastloss selfcheck    every registry case against fastloss.reference in float64
    python -m fastloss bench --functions logsumexp,log_softmax --shapes 4096x32000 \\
        --dtypes float32 --repeat 5 --json results.json
    python -m fastloss warmup       compile (or load from the cache) every kernel
    python -m fastloss coldstart    import and first-call times, in fresh processes

Exit codes: 0 ok, 1 a selfcheck failure (or a coldstart child process that failed), 2 a
usage error. The cases come from ``fastloss._registry.CASES``, the same registry the tests
and benchmarks use.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import glob
import importlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import numba
import numpy as np

from . import __version__
from ._config import CACHE, PARALLEL_MIN_ELEMENTS
from ._registry import CASES, Case, with_bench_kwargs
from ._threads import ENV_VAR as THREADS_ENV_VAR
from ._threads import get_num_threads, threading_layer

EXIT_OK, EXIT_SELFCHECK_FAILED, EXIT_USAGE = 0, 1, 2

# Selfcheck and warmup shapes: stand-ins of each case's benchmark shapes, one small (serial
# twin) and one above PARALLEL_MIN_ELEMENTS (parallel twin, when it has 2+ work items).
SMALL_ELEMENTS = 300
LARGE_ELEMENTS = max(100_000, 2 * PARALLEL_MIN_ELEMENTS)

# selfcheck passes when max |got - want| / max |want| (finite entries; inf and nan must sit
# where the reference has them) is below this.
TOLERANCE = {"float32": 2e-5, "float64": 1e-12}

# The default run's short bench: two large-vocabulary-ish shapes, float32, best of 3.
DEFAULT_BENCH_FUNCTIONS = ("logsumexp", "log_softmax", "cross_entropy")
DEFAULT_BENCH_SHAPES = ((2048, 32000), (16384, 1000))
BENCH_DTYPES = ("float16", "float32", "float64")


# ---------------------------------------------------------------------------------------------
# info


def _optional_version(module_name: str) -> str | None:
    try:
        return importlib.import_module(module_name).__version__
    except ImportError:
        return None


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, feature flags) from /proc/cpuinfo; ("", set()) where there is none."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


SIMD_LEVELS = (
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
    ("avx", "AVX"),
    ("sse4_2", "SSE4.2"),
    ("asimd", "NEON"),
)
# The extensions the kernels care about: 16-bit float conversion, bf16, byte/word ops.
SIMD_EXTRAS = ("avx512dq", "avx512bw", "avx512vl", "f16c", "avx512_bf16", "avx512_fp16", "fma")


def simd_level(flags: set[str]) -> str:
    level = next((name for flag, name in SIMD_LEVELS if flag in flags), "unknown")
    extras = [flag for flag in SIMD_EXTRAS if flag in flags]
    return f"{level} ({' '.join(extras)})" if extras else level


def _llvm_cpu() -> str:
    try:
        import llvmlite.binding as llvm

        host = llvm.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - a diagnostic, never fatal
        host = "unknown"
    override = numba.config.CPU_NAME
    return f"{override} (NUMBA_CPU_NAME; host {host})" if override else host


def cache_status() -> str:
    if not CACHE:
        return "off (FASTLOSS_CACHE=0, or no writable cache directory): kernels compile per process"
    from . import _kernels_softmax

    try:
        path = _kernels_softmax.lse_rows.serial._cache.cache_path  # Numba's chosen location
    except AttributeError:
        return "on (location unknown to this Numba version)"
    if not os.path.isdir(path):
        return f"on: {path} (empty: nothing compiled yet)"
    kernels = len(glob.glob(os.path.join(path, "*.nbi")))
    writable = "writable" if os.access(path, os.W_OK) else "NOT writable"
    return f"on: {path} ({writable}, {kernels} cached functions)"


def environment() -> dict:
    """Everything ``info`` prints, as a dict (also stored in ``bench --json`` files)."""
    model, flags = _cpuinfo()
    layer = threading_layer()  # starts Numba's thread pool, which fixes the layer
    return {
        "versions": {
            "fastloss": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "llvmlite": _optional_version("llvmlite"),
            "torch": _optional_version("torch"),
            "ml_dtypes": _optional_version("ml_dtypes"),
        },
        "threading_layer": layer,
        "threads": get_num_threads(),
        "max_threads": numba.config.NUMBA_NUM_THREADS,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "simd": simd_level(flags),
        "llvm_cpu": _llvm_cpu(),
        "cache": cache_status(),
    }


def info() -> dict:
    env = environment()
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if k != "fastloss")
    missing = [k for k, v in env["versions"].items() if v is None]
    print(f"fastloss {__version__} ({os.path.dirname(os.path.abspath(__file__))})")
    print(f"  versions   {versions.replace(' None', ' not installed')}")
    source = f"{THREADS_ENV_VAR}" if os.environ.get(THREADS_ENV_VAR) else "Numba's count"
    print(
        f"  threads    {env['threads']} of {env['max_threads']} ({source}; Numba "
        f"{env['threading_layer']} layer, {env['cpu_count']} CPUs; parallel twin from "
        f"{PARALLEL_MIN_ELEMENTS} elements)"
    )
    print(f"  cpu        {env['cpu_model']}; SIMD {env['simd']}; LLVM target {env['llvm_cpu']}")
    print(f"  cache      {env['cache']}")
    if "torch" in missing:
        print("  note       torch is not installed: bench shows no torch column")
    sys.stdout.flush()
    return env


# ---------------------------------------------------------------------------------------------
# Shapes and inputs shared by selfcheck, warmup and bench


def kept_axes(shape: tuple[int, ...], kwargs: dict) -> set[int]:
    """The axes a stand-in keeps whole: ``dim`` when given, else torch's class dim 1."""
    dim = kwargs.get("dim")
    if dim is None:
        return {1} if len(shape) > 1 else set()
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return {d % len(shape) for d in dims}


def stand_in(shape: tuple[int, ...], kwargs: dict, limit: int) -> tuple[int, ...]:
    """``shape`` with its largest other dims halved until it has at most ``limit`` elements."""
    dims = list(shape)
    kept = kept_axes(shape, kwargs)
    while math.prod(dims) > limit:
        candidates = [a for a, n in enumerate(dims) if n > 1 and a not in kept]
        candidates = candidates or [a for a, n in enumerate(dims) if n > 1]
        axis = max(candidates, key=lambda a: dims[a])
        dims[axis] = (dims[axis] + 1) // 2
    return tuple(dims)


def check_shapes(case: Case) -> list[tuple[tuple[int, ...], dict]]:
    """Small and large stand-ins of the case's benchmark shapes, without repeats."""
    shapes = []
    for shape, kwargs in case.bench_shapes:
        for limit in (SMALL_ELEMENTS, LARGE_ELEMENTS):
            candidate = (stand_in(shape, kwargs, limit), kwargs)
            if candidate not in shapes:
                shapes.append(candidate)
    return shapes


def _special_axis(x: np.ndarray, kwargs: dict) -> int:
    kept = kept_axes(x.shape, kwargs)
    return min(kept) if kept else x.ndim - 1


def with_special_values(x: np.ndarray, kwargs: dict) -> np.ndarray:
    """A copy of x whose first slices along the reduced/class axis hold special values.

    Slice 0 is all -inf, slice 1 has a NaN, slice 2 a +inf, slice 3 every other entry -inf
    (a mask), slice 4 is shifted by +100 (exp overflows float32 without the max subtraction;
    larger shifts only measure float32's spacing there, which torch's results share).
    """
    x = x.copy()
    if x.ndim == 0:
        return x
    rows = np.moveaxis(x, _special_axis(x, kwargs), -1)  # a view: writes reach x
    for k in range(min(5, math.prod(rows.shape[:-1]))):
        row = rows[np.unravel_index(k, rows.shape[:-1])]
        if k == 0:
            row[:] = -np.inf
        elif k == 1:
            row[0] = np.nan
        elif k == 2:
            row[-1] = np.inf
        elif k == 3:
            row[::2] = -np.inf
        else:
            row += 100
    return x


def _variant_inputs(case: Case, shape, bench_kwargs, dtype, rng):
    """(label, args, kwargs) for each variant of the case, clean and with special values."""
    for variant, extra in case.variants:
        args, kwargs = with_bench_kwargs(case, shape, np.dtype(dtype), rng, bench_kwargs)
        kwargs.update(extra(shape, np.dtype(dtype), rng))
        label = f"{'x'.join(map(str, shape))} {variant}"
        yield label, args, kwargs
        make_special = case.special_values or with_special_values
        special = (make_special(args[0], kwargs), *args[1:])
        yield label + " special", special, kwargs


def _float64(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(np.float64)
    return value


def max_error(got, want) -> float:
    """Normwise error of got against want; inf when shapes or inf/nan positions differ."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return math.inf
    same_nan = np.array_equal(np.isnan(got), np.isnan(want))
    infinite = np.isinf(want)
    if not same_nan or not np.array_equal(got[infinite], want[infinite]):
        return math.inf
    finite = np.isfinite(want)
    if not finite.any():
        return 0.0
    if not np.isfinite(got[finite]).all():
        return math.inf
    scale = max(float(np.max(np.abs(want[finite]))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(got[finite] - want[finite]))) / scale


# ---------------------------------------------------------------------------------------------
# selfcheck


def _compare(call, expected, dtype: str, label: str, caught: list) -> tuple[float, str]:
    """(error, description) of one fastloss call against the reference's result."""
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            got = np.asarray(call())
    except Exception as exc:  # noqa: BLE001 - reported as a FAIL line
        return math.inf, f"{label}: {type(exc).__name__}: {exc}"
    caught += [(label, record) for record in records]
    if got.dtype != np.dtype(dtype):
        return math.inf, f"{label}: result dtype {got.dtype}, expected {dtype}"
    error = max_error(got, expected)
    return error, f"{label}: error {error:.1e}"


def _check_case(case: Case, dtype: str, caught: list) -> dict[str, tuple[float, int, str]]:
    """{direction: (max error, inputs checked, worst input)} for one case and dtype.

    Warnings fastloss emits are appended to ``caught`` as (input label, warning).
    """
    rng = np.random.default_rng(0)
    worst = {"forward": (0.0, ""), "backward": (0.0, "")}
    count = 0
    for shape, bench_kwargs in check_shapes(case):
        for label, args, kwargs in _variant_inputs(case, shape, bench_kwargs, dtype, rng):
            count += 1
            args64 = tuple(_float64(a) for a in args)
            kwargs64 = {k: _float64(v) for k, v in kwargs.items()}
            want = case.reference(*args64, **kwargs64)
            grad_output = rng.standard_normal(np.shape(want)).astype(dtype)
            want_grad = case.reference_backward(_float64(grad_output), *args64, **kwargs64)
            checks = {
                "forward": (functools.partial(case.fastloss, *args, **kwargs), want),
                "backward": (
                    functools.partial(case.fastloss_backward, grad_output, *args, **kwargs),
                    want_grad,
                ),
            }
            for direction, (call, expected) in checks.items():
                result = _compare(call, expected, dtype, f"{label} {direction}", caught)
                if result[0] > worst[direction][0] or not worst[direction][1]:
                    worst[direction] = result
    return {d: (error, count, problem) for d, (error, problem) in worst.items()}


def selfcheck(cases: list[str] | None = None) -> bool:
    print("selfcheck: fastloss against fastloss.reference (float64 oracle), forward and backward")
    all_passed = True
    for name in cases or list(CASES):
        case = CASES[name]
        for dtype in ("float32", "float64"):
            print(f"compiling {name} {dtype}...", end="", flush=True)
            start = time.perf_counter()
            caught: list = []
            results = _check_case(case, dtype, caught)
            print(f" checked in {time.perf_counter() - start:.1f} s", flush=True)
            for direction, (error, count, problem) in results.items():
                passed = error < TOLERANCE[dtype]
                all_passed &= passed
                verdict = "PASS" if passed else f"FAIL  ({problem})"
                print(
                    f"  {name:<16} {dtype:<8} {direction:<8} {count:3d} inputs  "
                    f"max err {error:.1e}  {verdict}",
                    flush=True,
                )
            if caught:
                label, record = caught[0]
                print(
                    f"  note: {len(caught)} warning(s), first on {label}: "
                    f"{record.category.__name__}: {record.message}",
                    flush=True,
                )
    print("selfcheck:", "all passed" if all_passed else "FAILED", flush=True)
    return all_passed


# ---------------------------------------------------------------------------------------------
# bench


# A sample of a fast call times a batch of calls lasting at least this long, so the timer's
# resolution and the scheduler's jitter average out over a (32, 10) call of microseconds.
MIN_SAMPLE_SECONDS = 2e-3


def _best_time(function, repeat: int, warm_up: bool) -> float:
    """Best per-call seconds over ``repeat`` samples. The first call sizes the batches; it is
    a warm-up when ``warm_up`` is set, else one of the samples (the NumPy baseline is slow
    enough at large shapes that a discarded call would cost seconds)."""
    start = time.perf_counter()
    function()
    first = time.perf_counter() - start
    best = math.inf if warm_up else first
    calls = max(1, min(100_000, int(MIN_SAMPLE_SECONDS / max(first, 1e-7))))
    for _ in range(repeat if warm_up else repeat - 1):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(get_num_threads())  # the same threads as the Numba kernels
    return torch


def _torch_callable(torch, case: Case, args, kwargs, grad_output):
    function = case.torch_function()
    if function is None or args[0].dtype not in (np.float16, np.float32, np.float64):
        return None

    def convert(value):
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "iu" else value)
        return value

    x = convert(args[0])
    rest = [convert(a) for a in args[1:]]
    options = {k: convert(v) for k, v in kwargs.items()}
    if grad_output is None:
        return lambda: function(x, *rest, **options)
    x.requires_grad_(True)
    g = torch.from_numpy(grad_output)
    return lambda: torch.autograd.grad(function(x, *rest, **options), x, g)[0]


def _bench_one(case, shape, dim, dtype, repeat, backward, torch, fused=False) -> dict:
    """One timed row. ``backward`` times ``<name>_backward`` against the reference's backward
    and torch's forward + autograd backward; ``fused`` times ``<loss>_with_grad`` (loss and
    gradient) against the reference's forward + backward and the same torch call."""
    rng = np.random.default_rng(0)
    args, kwargs = case.make_args(shape, np.dtype(dtype), rng)
    shape_text = "x".join(map(str, shape))
    if dim is not None and "dim" in kwargs:
        kwargs["dim"] = dim
        shape_text += f":{dim}"
    result = np.asarray(case.fastloss(*args, **kwargs))  # also compiles the forward
    grad_output = None
    if fused:
        grad_output = np.ones(result.shape, result.dtype)
        fast = lambda: case.fastloss_with_grad(*args, **kwargs)  # noqa: E731

        def baseline():
            return (case.reference(*args, **kwargs),
                    case.reference_backward(grad_output, *args, **kwargs))

        grad_bytes = grad_output.nbytes + args[0].nbytes
        nbytes = grad_bytes + sum(a.nbytes for a in args if isinstance(a, np.ndarray))
    elif backward:
        grad_output = rng.standard_normal(result.shape).astype(result.dtype)
        fast = lambda: case.fastloss_backward(grad_output, *args, **kwargs)  # noqa: E731
        baseline = lambda: case.reference_backward(grad_output, *args, **kwargs)  # noqa: E731
        grad_bytes = grad_output.nbytes + args[0].nbytes
        nbytes = grad_bytes + sum(a.nbytes for a in args if isinstance(a, np.ndarray))
    else:
        fast = lambda: case.fastloss(*args, **kwargs)  # noqa: E731
        baseline = lambda: case.reference(*args, **kwargs)  # noqa: E731
        nbytes = case.traffic(args, kwargs, result) if case.traffic else args[0].nbytes
    seconds = {"fastloss": _best_time(fast, repeat, warm_up=True)}
    seconds["numpy"] = _best_time(baseline, repeat, warm_up=False)
    torch_call = _torch_callable(torch, case, args, kwargs, grad_output) if torch else None
    if torch_call is not None:
        seconds["torch"] = _best_time(torch_call, repeat, warm_up=True)
    return {
        "function": case.name + ("_with_grad" if fused else "_backward" if backward else ""),
        "shape": list(shape),
        "shape_text": shape_text,
        "kwargs": {k: v for k, v in kwargs.items() if not isinstance(v, np.ndarray)},
        "dtype": dtype,
        "repeat": repeat,
        "seconds": seconds,
        "bytes": int(nbytes),
        "elements": int(args[0].size),
        "gbps": nbytes / seconds["fastloss"] / 1e9,
        "vs_numpy": seconds["numpy"] / seconds["fastloss"],
        "vs_torch": seconds["torch"] / seconds["fastloss"] if "torch" in seconds else None,
    }


def _format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _format_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


BENCH_COLUMNS = (
    ("function", 24), ("shape", 16), ("dtype", 8), ("fastloss", 10), ("GB/s", 7),
    ("numpy", 10), ("vs numpy", 9), ("torch", 10), ("vs torch", 9),
)  # fmt: skip


def _bench_row(row: dict) -> str:
    cells = (
        row["function"],
        row["shape_text"],
        row["dtype"],
        _format_time(row["seconds"]["fastloss"]),
        f"{row['gbps']:.1f}",
        _format_time(row["seconds"]["numpy"]),
        _format_ratio(row["vs_numpy"]),
        _format_time(row["seconds"].get("torch")),
        _format_ratio(row["vs_torch"]),
    )
    return _columns(cells)


def _columns(cells) -> str:
    """Text columns left-aligned, numbers right-aligned, at BENCH_COLUMNS' widths."""
    widths = [width for _, width in BENCH_COLUMNS]
    return "  ".join(
        f"{c:<{w}}" if i < 3 else f"{c:>{w}}"
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def bench(functions, shapes, dtypes, repeat=3, json_path=None, backward=False,
          fused=False) -> list[dict]:
    """Time fastloss, the NumPy baseline and torch; print a table; optionally write JSON."""
    torch = _torch()
    print(
        f"bench: best of {repeat}, {get_num_threads()} threads; ratios are time(other) / "
        "time(fastloss): higher = fastloss faster" + ("" if torch else "; torch not installed")
    )
    header = _columns([name for name, _ in BENCH_COLUMNS])
    print(header + "\n" + "-" * len(header), flush=True)
    rows = []
    for name in functions:
        for shape, dim in shapes:
            for dtype in dtypes:
                directions = ["forward"] + ["backward"] * backward
                if fused and CASES[name].has_loss_grad:
                    directions.append("fused")
                for direction in directions:
                    shape_text = "x".join(map(str, shape))
                    print(
                        f"  ... {name} {direction} {shape_text} {dtype}",
                        file=sys.stderr,
                        flush=True,
                    )
                    row = _bench_one(
                        CASES[name], shape, dim, dtype, repeat, direction == "backward", torch,
                        fused=direction == "fused",
                    )
                    rows.append(row)
                    print(_bench_row(row), flush=True)
    if json_path:
        document = {
            "fastloss_version": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m fastloss", *sys.argv[1:]]),
            "environment": environment(),
            "results": rows,
        }
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
        print(f"bench: wrote {json_path}")
    return rows


# ---------------------------------------------------------------------------------------------
# warmup


def warmup(dtypes=("float32", "float64", "float16"), cases: list[str] | None = None) -> None:
    """Compile (or load from the cache) the serial and parallel kernels of every case."""
    print("warmup: every case, forward and backward, on small and large stand-in shapes")
    for name in cases or list(CASES):
        case = CASES[name]
        for dtype in dtypes:
            print(f"compiling {name} {dtype}...", end="", flush=True)
            start = time.perf_counter()
            rng = np.random.default_rng(0)
            try:
                for shape, bench_kwargs in check_shapes(case):
                    inputs = _variant_inputs(case, shape, bench_kwargs, dtype, rng)
                    for label, args, kwargs in inputs:
                        if label.endswith("special"):
                            continue  # the same kernels; only the values differ
                        result = np.asarray(case.fastloss(*args, **kwargs))
                        case.fastloss_backward(np.ones_like(result), *args, **kwargs)
                        if case.has_loss_grad:
                            case.fastloss_with_grad(*args, **kwargs)
            except (TypeError, NotImplementedError) as exc:
                print(f" skipped ({type(exc).__name__}: {exc})", flush=True)
                continue
            print(f" {time.perf_counter() - start:.1f} s", flush=True)
    print("warmup: done; " + cache_status())


# ---------------------------------------------------------------------------------------------
# coldstart

# What a service pays before its first loss value, in seconds beyond `import numba`.
COLDSTART_TARGETS = {
    "import_fastloss": 0.15,
    "warm_first_call": 0.5,
    "warm_first_call_without_scipy": 0.5,
}

# Run in a fresh interpreter: times from the start, printed as one JSON line. Inputs are made
# between `import numba` (which imports NumPy) and `import fastloss`, outside every interval.
_FIRST_CALL = """
import json, sys, time
{preamble}
start = time.perf_counter()
import numba
numba_done = time.perf_counter()
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal({shape}).astype(np.float32)
target = rng.integers(0, {shape}[1], {shape}[0])
inputs_done = time.perf_counter()
import fastloss
import_done = time.perf_counter()
fastloss.cross_entropy(x, target)
call_done = time.perf_counter()
print(json.dumps({{
    "import_numba": numba_done - start,
    "import_fastloss": import_done - inputs_done,
    "first_call": call_done - inputs_done,
    "scipy_imported": "scipy" in sys.modules,
}}))
"""

# Makes SciPy unimportable in a child, which then measures what a service pays with only
# fastloss's own dependencies (numba, numpy) installed: with SciPy present, Numba's BLAS
# probe imports scipy.linalg during its one-time setup.
_WITHOUT_SCIPY = """
class _NoScipy:
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("hidden by fastloss coldstart")
sys.meta_path.insert(0, _NoScipy())
"""

# Numba's own setup on its first compile or cache load in a process, which every cached
# function pays once: its target context loads all of Numba's implementations, and its BLAS
# probe imports scipy.linalg when SciPy is installed.
_NUMBA_SETUP = """
import json, time
import numba
start = time.perf_counter()
try:
    from numba.core.registry import cpu_target  # Numba internals: may move between versions
    cpu_target.target_context.refresh()
    seconds = time.perf_counter() - start
except Exception:
    seconds = None
print(json.dumps({"numba_setup": seconds}))
"""


def _child(code: str, env: dict, timeout: float = 900) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(f"coldstart child process failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def coldstart(shape=(256, 1000), repeat=3, json_path=None) -> dict:
    """Import and first-call times of fastloss, each in a fresh process; print and return them.

    The cold run compiles ``cross_entropy`` into an empty temporary ``NUMBA_CACHE_DIR``; the
    warm runs load it from there. Warm figures are the best of ``repeat`` processes.
    """
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shape_text = "x".join(map(str, shape))
    print(
        f"coldstart: cross_entropy on {shape_text} float32, each run a fresh process; "
        "times beyond `import numba`",
        flush=True,
    )
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="fastloss-coldstart-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, FASTLOSS_CACHE="1")
        # Bytecode as an installed package has it: the cold run writes it (into a private
        # prefix), the warm runs read it, whatever PYTHONDONTWRITEBYTECODE says here.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(cache_dir, "bytecode")
        # The children import this very fastloss, wherever the parent found it.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        code = _FIRST_CALL.format(shape=tuple(shape), preamble="")
        steps = [
            ("cold", code, 1, "empty cache: compiling, can take a minute"),
            ("warm", code, repeat, "cache from the cold run"),
            ("numba_setup", _NUMBA_SETUP, repeat, "Numba alone"),
        ]
        if importlib.util.find_spec("scipy") is not None:
            without = _FIRST_CALL.format(shape=tuple(shape), preamble=_WITHOUT_SCIPY)
            steps.append(("warm_without_scipy", without, repeat, "cache, SciPy hidden"))
        for name, step_code, count, what in steps:
            for k in range(count):
                print(f"  ... {name} run {k + 1}/{count} ({what})", file=sys.stderr, flush=True)
                runs.setdefault(name, []).append(_child(step_code, env))

    def best(name, key):
        values = [run[key] for run in runs[name] if run[key] is not None]
        return min(values) if values else None

    seconds = {
        "import_numba": best("warm", "import_numba"),
        "import_fastloss": best("warm", "import_fastloss"),
        "cold_first_call": runs["cold"][0]["first_call"],
        "warm_first_call": best("warm", "first_call"),
        "numba_setup": best("numba_setup", "numba_setup"),
        "warm_first_call_without_scipy": (
            best("warm_without_scipy", "first_call") if "warm_without_scipy" in runs else None
        ),
    }
    scipy = "yes: Numba's BLAS probe imported it" if runs["warm"][0]["scipy_imported"] else "no"

    def line(label, key, note=""):
        if seconds[key] is None:
            print(f"  {label:<40}     n/a   (not measurable with this Numba)", flush=True)
            return
        if key in COLDSTART_TARGETS:
            target = COLDSTART_TARGETS[key]
            verdict = "ok" if seconds[key] <= target else "OVER"
            note = f"target <= {target:.2f} s: {verdict}"
        print(f"  {label:<40} {seconds[key]:7.3f} s   {note}".rstrip(), flush=True)

    line("import numba", "import_numba", "(from the interpreter's start)")
    line("import fastloss", "import_fastloss")
    line("first call, cold cache (compiles)", "cold_first_call", "(import included)")
    line("first call, warm cache", "warm_first_call", "(import included)")
    line("  of which Numba's one-time setup", "numba_setup", f"(scipy installed: {scipy})")
    if seconds["warm_first_call_without_scipy"] is not None:
        line("first call, warm cache, SciPy hidden", "warm_first_call_without_scipy",
             "(fastloss's own dependencies only)")
    document = {
        "fastloss_version": __version__,
        "function": "cross_entropy",
        "shape": list(shape),
        "dtype": "float32",
        "repeat": repeat,
        "seconds": seconds,
        "targets": COLDSTART_TARGETS,
        "runs": runs,
    }
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
        print(f"coldstart: wrote {json_path}")
    return document


# ---------------------------------------------------------------------------------------------
# Command line


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_shape(text: str) -> tuple[tuple[int, ...], int | None]:
    """'4096x32000' -> ((4096, 32000), None); '16x21x256x256:1' -> (..., 1)."""
    dims_text, _, dim_text = text.partition(":")
    try:
        dims = tuple(int(d) for d in dims_text.lower().split("x"))
        dim = int(dim_text) if dim_text else None
    except ValueError:
        raise ValueError(f"bad shape {text!r}: write e.g. 4096x32000 or 16x21x256x256:1") from None
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"bad shape {text!r}: every dim must be a positive integer")
    return dims, dim


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastloss",
        description="fastloss diagnostics. Without a command: info, selfcheck, a short bench.",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="{info,selfcheck,bench,warmup,coldstart}"
    )
    commands.add_parser("info", help="versions, threading layer, CPU/SIMD, kernel cache")
    check = commands.add_parser("selfcheck", help="every case against the NumPy reference")
    check.add_argument("--functions", help="comma-separated case names (default: all)")
    timing = commands.add_parser("bench", help="time fastloss vs the NumPy baseline and torch")
    timing.add_argument(
        "--functions",
        default=",".join(f for f in DEFAULT_BENCH_FUNCTIONS if f in CASES),
        help=f"comma-separated, from: {', '.join(CASES)} (default: %(default)s)",
    )
    timing.add_argument(
        "--shapes",
        default=",".join("x".join(map(str, s)) for s in DEFAULT_BENCH_SHAPES),
        help="comma-separated shapes such as 4096x32000, optionally :DIM (default: %(default)s)",
    )
    timing.add_argument("--dtypes", default="float32", help=f"from {', '.join(BENCH_DTYPES)}")
    timing.add_argument("--repeat", type=int, default=3, help="timed calls; the best is kept")
    timing.add_argument("--backward", action="store_true", help="also time the backward")
    timing.add_argument(
        "--fused", action="store_true",
        help="also time <loss>_with_grad against forward + backward (NumPy, torch autograd)",
    )
    timing.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    warm = commands.add_parser("warmup", help="compile every kernel for float32/float64/float16")
    warm.add_argument("--functions", help="comma-separated case names (default: all)")
    cold = commands.add_parser(
        "coldstart", help="import and first-call times in fresh processes, cold and warm cache"
    )
    cold.add_argument(
        "--shape", default="256x1000", help="cross_entropy input (default: %(default)s)"
    )
    cold.add_argument("--repeat", type=int, default=3, help="warm processes; the best is kept")
    cold.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser


def _bench_options(parser, options) -> dict:
    functions = _csv(options.functions)
    unknown = [f for f in functions if f not in CASES]
    if unknown or not functions:
        parser.error(f"unknown function(s) {unknown}; choose from {', '.join(CASES)}")
    dtypes = _csv(options.dtypes)
    if not dtypes or any(d not in BENCH_DTYPES for d in dtypes):
        parser.error(f"bad --dtypes {options.dtypes!r}; choose from {', '.join(BENCH_DTYPES)}")
    try:
        shapes = [parse_shape(s) for s in _csv(options.shapes)]
    except ValueError as exc:
        parser.error(str(exc))
    if not shapes:
        parser.error("--shapes is empty")
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    return dict(
        functions=functions,
        shapes=shapes,
        dtypes=dtypes,
        repeat=options.repeat,
        json_path=options.json,
        backward=options.backward,
        fused=options.fused,
    )


def _cases(parser, options) -> list[str] | None:
    cases = _csv(options.functions) if options.functions else None
    unknown = [c for c in cases or [] if c not in CASES]
    if unknown:
        parser.error(f"unknown function(s) {unknown}; choose from {', '.join(CASES)}")
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)  # exits with 2 on a usage error
    if options.command == "info":
        info()
    elif options.command == "selfcheck":
        return EXIT_OK if selfcheck(_cases(parser, options)) else EXIT_SELFCHECK_FAILED
    elif options.command == "bench":
        bench(**_bench_options(parser, options))
    elif options.command == "warmup":
        warmup(cases=_cases(parser, options))
    elif options.command == "coldstart":
        try:
            shape, _ = parse_shape(options.shape)
        except ValueError as exc:
            parser.error(str(exc))
        if len(shape) != 2 or options.repeat < 1:
            parser.error("coldstart needs --shape ROWSxCLASSES (2 dims) and --repeat >= 1")
        try:
            coldstart(shape, options.repeat, options.json)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return EXIT_SELFCHECK_FAILED
    else:  # the default run
        info()
        print()
        if not selfcheck():
            return EXIT_SELFCHECK_FAILED
        print()
        functions = [f for f in DEFAULT_BENCH_FUNCTIONS if f in CASES]
        bench(functions, [(s, None) for s in DEFAULT_BENCH_SHAPES], ["float32"], repeat=3)
    return EXIT_OK
