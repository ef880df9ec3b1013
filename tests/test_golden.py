"""Check ``fastloss.reference`` and ``fastloss`` against the stored torch golden vectors.

No torch is needed. float64 cases: the result on the stored inputs, elementwise at rtol 1e-10
/ atol 1e-12 with nan positions equal. float32 cases: the reference on the inputs upcast to
float64, against torch's float32 results at rtol = atol = 2e-5 for values and normwise 2e-5
for gradients.

The same cases check the public ``fastloss.<name>`` functions and their ``_backward``, for
every function fastloss already has (the others are skipped automatically): in the case's own
dtype (a float32 fastloss result against torch's float32 result, at twice the float32
tolerances, as torch-semantics.md section 12 prescribes for two float32 results), and on the
inputs upcast to float64 (at the reference's tolerances).
"""

import contextlib
import warnings

import numpy as np
import pytest

import fastloss
from fastloss import reference

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from .golden import (
        FLOAT32_ATOL,
        FLOAT32_GRAD_NORMWISE,
        FLOAT32_RTOL,
        assert_backward_matches,
        assert_forward_matches,
        load_golden_cases,
    )
except ImportError:
    from golden import (
        FLOAT32_ATOL,
        FLOAT32_GRAD_NORMWISE,
        FLOAT32_RTOL,
        assert_backward_matches,
        assert_forward_matches,
        load_golden_cases,
    )

CASES = load_golden_cases()
FUNCTIONS = sorted({case.func for case in CASES})
IDS = [case.name for case in CASES]

# torch's warnings: deprecated arguments (torch-semantics.md section 0), kl_div's 'mean' and
# mse_loss's broadcasting (sections 5 and 9); fastloss's forward emits them.
DEPRECATION_MESSAGE = (
    r"size_average and reduce args will be deprecated|elementwise_mean"
    r"|reduction: 'mean' divides the total loss by both the batch size"
    r"|Using a target size"
)


def test_golden_cases_cover_every_function_in_both_dtypes():
    expected = {name for name in reference.__all__ if not name.endswith("_backward")}
    assert set(FUNCTIONS) == expected
    for func in FUNCTIONS:
        dtypes = {case.dtype for case in CASES if case.func == func}
        assert dtypes == {"float64", "float32"}, func


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_matches_golden(case):
    # float32 cases: the float64 oracle must be within float32 tolerance of torch.
    call = case if case.dtype == "float64" else case.upcast()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference emits no warnings
        got = call.forward(reference)
        got_grad = call.backward(reference)
    assert_forward_matches(case, got)
    assert_backward_matches(case, got_grad)


# --------------------------------------------------------------------------------------
# The public fastloss functions


def _require_fastloss_function(case):
    if not (hasattr(fastloss, case.func) and hasattr(fastloss, case.func + "_backward")):
        pytest.skip(f"fastloss has no {case.func} yet")


def _warns_deprecation(case) -> bool:
    """torch warns once per call when a legacy argument is given or reduction is deprecated."""
    legacy = any(case.kwargs.get(name) is not None for name in ("size_average", "reduce"))
    # kl_div's default reduction='mean' warns that it is not the KL divergence per sample.
    kl_mean = case.func == "kl_div" and case.kwargs.get("reduction", "mean") == "mean"
    # mse_loss warns when input and target broadcast.
    mse_broadcast = case.func == "mse_loss" and np.shape(case.args["input"]) != np.shape(
        case.args["target"]
    )
    deprecated = case.kwargs.get("reduction") == "elementwise_mean"
    return legacy or kl_mean or mse_broadcast or deprecated


def _forward(case, module):
    """``case.forward(module)``, requiring exactly torch's deprecation warning if any."""
    if not _warns_deprecation(case):
        return case.forward(module)
    with pytest.warns(UserWarning, match=DEPRECATION_MESSAGE) as record:
        result = case.forward(module)
    assert len(record) == 1, [str(r.message) for r in record]
    return result


def _backward(case, module):
    context = warnings.catch_warnings() if _warns_deprecation(case) else contextlib.nullcontext()
    with context:
        if _warns_deprecation(case):
            warnings.filterwarnings("ignore", DEPRECATION_MESSAGE, UserWarning)
        return case.backward(module)


def _snapshot(case):
    arrays = [v for v in [*case.args.values(), *case.kwargs.values()] if isinstance(v, np.ndarray)]
    return [(a, a.copy()) for a in arrays]


def _assert_dtype(case, got, what):
    expected = np.asarray(case.args["input"]).dtype
    assert np.asarray(got).dtype == expected, f"{case.name} {what}: dtype {np.asarray(got).dtype}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fastloss_matches_golden(case):
    _require_fastloss_function(case)
    before = _snapshot(case)
    got = _forward(case, fastloss)
    got_grad = _backward(case, fastloss)
    for array, copy in before:
        np.testing.assert_array_equal(array, copy, err_msg=f"{case.name}: an input was modified")
    _assert_dtype(case, got, "forward")
    _assert_dtype(case, got_grad, "backward")
    if case.dtype == "float64":
        assert_forward_matches(case, got)
        assert_backward_matches(case, got_grad)
    else:  # two float32 results: twice the float32 tolerances
        assert_forward_matches(case, got, rtol=2 * FLOAT32_RTOL, atol=2 * FLOAT32_ATOL)
        assert_backward_matches(case, got_grad, normwise=2 * FLOAT32_GRAD_NORMWISE)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.dtype == "float32"],
    ids=[c.name for c in CASES if c.dtype == "float32"],
)
def test_fastloss_in_float64_matches_golden(case):
    # As the reference: fastloss on the upcast inputs, within float32 tolerance of torch.
    _require_fastloss_function(case)
    call = case.upcast()
    got = _forward(call, fastloss)
    got_grad = _backward(call, fastloss)
    assert np.asarray(got).dtype == np.float64 and np.asarray(got_grad).dtype == np.float64
    assert_forward_matches(case, got)
    assert_backward_matches(case, got_grad)
