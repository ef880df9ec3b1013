"""Check ``fastloss.reference`` against the stored torch golden vectors (no torch needed).

float64 cases: the reference on the stored inputs, elementwise at rtol 1e-10 / atol 1e-12
with nan positions equal. float32 cases: the reference on the inputs upcast to float64,
against torch's float32 results at rtol = atol = 2e-5 for values and normwise 2e-5 for
gradients. The same cases can check the public ``fastloss.<name>`` functions.
"""

import warnings

import pytest

from fastloss import reference

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from .golden import assert_backward_matches, assert_forward_matches, load_golden_cases
except ImportError:
    from golden import assert_backward_matches, assert_forward_matches, load_golden_cases

CASES = load_golden_cases()
FUNCTIONS = sorted({case.func for case in CASES})


def test_golden_cases_cover_every_function_in_both_dtypes():
    expected = {name for name in reference.__all__ if not name.endswith("_backward")}
    assert set(FUNCTIONS) == expected
    for func in FUNCTIONS:
        dtypes = {case.dtype for case in CASES if case.func == func}
        assert dtypes == {"float64", "float32"}, func


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_reference_matches_golden(case):
    # float32 cases: the float64 oracle must be within float32 tolerance of torch.
    call = case if case.dtype == "float64" else case.upcast()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference emits no warnings
        got = call.forward(reference)
        got_grad = call.backward(reference)
    assert_forward_matches(case, got)
    assert_backward_matches(case, got_grad)
