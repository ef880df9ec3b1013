"""Load the torch golden vectors written by ``tests/make_golden.py``.

``tests/data/golden.npz`` holds the arrays, in one flat pool per dtype, and
``tests/data/golden_cases.json`` the index: one entry per case with the function name, its
JSON keyword arguments and, for each of its arrays, ``[pool, offset, shape]``.
``load_golden_cases()`` turns them into ``GoldenCase`` objects that any implementation with
fastloss's API (``fastloss.reference`` or ``fastloss`` itself) can be called on, and
``assert_forward_matches`` / ``assert_backward_matches`` compare the results.

No torch is needed to use the golden vectors, only to regenerate them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
NPZ_PATH = DATA_DIR / "golden.npz"
INDEX_PATH = DATA_DIR / "golden_cases.json"

# The arrays passed positionally, in this order; any other array (weight, pos_weight) is
# passed by keyword.
POSITIONAL_ARRAYS = ("input", "target")

# Tolerances. float64 cases: torch float64 and a float64 implementation agree to ~1e-15.
# float32 cases hold torch's float32 results; an implementation run in float64 on the
# upcast inputs must be within these (torch's own float32 error is below 1e-5 here).
FLOAT64_RTOL, FLOAT64_ATOL = 1e-10, 1e-12
FLOAT32_RTOL, FLOAT32_ATOL = 2e-5, 2e-5
FLOAT32_GRAD_NORMWISE = 2e-5


@dataclasses.dataclass(frozen=True)
class GoldenCase:
    """One torch result: ``func(*args.values(), **kwargs)`` and its gradient.

    ``args`` maps positional argument names to arrays, in call order (input, then target
    if the function has one). ``kwargs`` holds the options and the weight / pos_weight
    arrays. ``expected`` is torch's forward result and ``expected_grad`` torch's gradient
    with respect to ``input`` for the upstream gradient ``grad_output``. ``dtype`` is the
    floating dtype torch computed in ("float64" or "float32").
    """

    name: str
    func: str
    dtype: str
    args: dict
    kwargs: dict
    expected: np.ndarray
    expected_grad: np.ndarray
    grad_output: np.ndarray

    def forward(self, module):
        """Call ``module.<func>`` on this case's arguments."""
        return getattr(module, self.func)(*self.args.values(), **self.kwargs)

    def backward(self, module):
        """Call ``module.<func>_backward`` with this case's ``grad_output``."""
        backward = getattr(module, self.func + "_backward")
        return backward(self.grad_output, *self.args.values(), **self.kwargs)

    def upcast(self) -> GoldenCase:
        """The same case with every floating input (and grad_output) converted to float64.

        The expected results are unchanged: they stay torch's results in ``self.dtype``.
        """
        return dataclasses.replace(
            self,
            args={k: _to_float64(v) for k, v in self.args.items()},
            kwargs={k: _to_float64(v) for k, v in self.kwargs.items()},
            grad_output=_to_float64(self.grad_output),
        )


def _to_float64(value):
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float64)
    return value


def _decode_kwarg(name, value):
    # JSON has no tuples: logsumexp's tuple of dims is stored as a list.
    if name == "dim" and isinstance(value, list):
        return tuple(value)
    return value


def _load_array(pools, ref):
    """An array stored as ``[pool, offset, shape]`` (see tests/make_golden.py).

    Returned as a fresh copy, so that a function that wrongly modified its input could not
    corrupt other cases.
    """
    pool, offset, shape = ref
    flat = pools[pool][offset : offset + math.prod(shape)]
    return flat.reshape(shape).copy()


def _build_case(entry, pools) -> GoldenCase:
    arrays = {name: _load_array(pools, ref) for name, ref in entry["arrays"].items()}
    args = {name: arrays.pop(name) for name in POSITIONAL_ARRAYS if name in arrays}
    kwargs = {name: _decode_kwarg(name, value) for name, value in entry["kwargs"].items()}
    return GoldenCase(
        name=entry["name"],
        func=entry["func"],
        dtype=entry["dtype"],
        args=args,
        kwargs=kwargs | arrays,  # the arrays left are weight and pos_weight
        expected=_load_array(pools, entry["expected"]),
        expected_grad=_load_array(pools, entry["expected_grad"]),
        grad_output=_load_array(pools, entry["grad_output"]),
    )


def load_golden_cases(funcs=None, dtypes=None) -> list[GoldenCase]:
    """Every golden case, optionally only those of the given function names and dtypes."""
    with open(INDEX_PATH) as f:
        index = json.load(f)
    with np.load(NPZ_PATH) as npz:
        pools = {name: npz[name] for name in npz.files}
    return [
        _build_case(entry, pools)
        for entry in index["cases"]
        if (funcs is None or entry["func"] in funcs)
        and (dtypes is None or entry["dtype"] in dtypes)
    ]


# --------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------


def _assert_same_specials(got, expected, what):
    """nan at the same places; infinities at the same places with the same sign."""
    np.testing.assert_array_equal(
        np.isnan(got), np.isnan(expected), err_msg=f"{what}: nan positions"
    )
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(np.isinf(got), infinite, err_msg=f"{what}: inf positions")
    np.testing.assert_array_equal(got[infinite], expected[infinite], err_msg=f"{what}: inf signs")


def assert_forward_matches(case, got, rtol=None, atol=None):
    """Elementwise check of a forward result: ``|got - expected| <= atol + rtol * |expected|``.

    Defaults: 1e-10 / 1e-12 for float64 cases, 2e-5 / 2e-5 for float32 cases.
    """
    float64 = case.dtype == "float64"
    rtol = rtol if rtol is not None else (FLOAT64_RTOL if float64 else FLOAT32_RTOL)
    atol = atol if atol is not None else (FLOAT64_ATOL if float64 else FLOAT32_ATOL)
    got = np.asarray(got)
    what = f"{case.name} forward"
    assert got.shape == case.expected.shape, f"{what}: shape {got.shape} != {case.expected.shape}"
    np.testing.assert_allclose(
        got.astype(np.float64), case.expected, rtol=rtol, atol=atol, equal_nan=True, err_msg=what
    )


def assert_backward_matches(case, got, rtol=None, atol=None, normwise=None):
    """Check a gradient against torch's.

    float64 cases are checked elementwise (1e-10 / 1e-12). float32 cases are checked
    normwise, ``max|got - expected| <= normwise * max|expected| + 1e-12`` over the finite
    entries (entries near 0 have no meaningful relative error in float32), after requiring
    nan and inf at the same places.
    """
    got = np.asarray(got)
    what = f"{case.name} backward"
    shape = case.expected_grad.shape
    assert got.shape == shape, f"{what}: shape {got.shape} != {shape}"
    if case.dtype == "float64" and normwise is None:
        np.testing.assert_allclose(
            got,
            case.expected_grad,
            rtol=rtol if rtol is not None else FLOAT64_RTOL,
            atol=atol if atol is not None else FLOAT64_ATOL,
            equal_nan=True,
            err_msg=what,
        )
        return
    normwise = normwise if normwise is not None else FLOAT32_GRAD_NORMWISE
    got, expected = got.astype(np.float64), case.expected_grad.astype(np.float64)
    _assert_same_specials(got, expected, what)
    finite = np.isfinite(expected)
    if not finite.any():
        return
    error = np.max(np.abs(got[finite] - expected[finite]))
    bound = normwise * np.max(np.abs(expected[finite])) + 1e-12
    assert error <= bound, f"{what}: max abs error {error:.3g} > {bound:.3g}"
