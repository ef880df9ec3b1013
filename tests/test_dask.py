"""fastloss.dask against the in-memory fastloss functions.

Arrays are chunked along the batch axis and along the class axis; results must equal the
in-memory functions (which the rest of the suite checks against torch) for every reduction,
weight, ignore_index and label smoothing, and for rows with -inf, +inf and NaN. Also: graphs
are lazy and never rechunk the input, bad targets fail at compute time, and the same graphs
run on a real ``dask.distributed`` LocalCluster with worker processes.

dask is an optional extra: without it these tests are skipped, unless FASTLOSS_REQUIRE_DASK=1
(as in CI), which turns a missing dask into a failure.
"""

from __future__ import annotations

import doctest
import logging
import os

import numpy as np
import pytest

REQUIRE_DASK_ENV = "FASTLOSS_REQUIRE_DASK"

if os.environ.get(REQUIRE_DASK_ENV, "").strip() == "1":
    import dask
    import dask.array as da
else:
    dask = pytest.importorskip("dask", reason=f"dask is not installed; set {REQUIRE_DASK_ENV}=1 "
                               "to make this a failure")
    da = pytest.importorskip("dask.array")

import fastloss as fl  # noqa: E402
import fastloss.dask as fld  # noqa: E402

INF, NAN = np.inf, np.nan
REDUCTIONS = ("none", "mean", "sum")
OPTIONS = [
    {},
    {"weight": "w"},
    {"ignore_index": 3},
    {"label_smoothing": 0.2},
    {"weight": "w", "ignore_index": -100, "label_smoothing": 0.3},
]


@pytest.fixture(autouse=True)
def threaded_scheduler():
    with dask.config.set(scheduler="threads"):
        yield


def logits(rows=12, classes=23, seed=0, special=True, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, classes)) * 3
    if special:
        x[1] = -INF  # only -inf
        x[2, 5] = INF
        x[3, 17] = NAN
        x[4, ::2] = -INF  # masked classes, among them the target below
        x[5] += 1e4
    return x.astype(dtype)


def targets(rows=12, classes=23, seed=1):
    t = np.random.default_rng(seed).integers(0, classes, rows)
    t[0], t[4], t[6] = -100, 0, 3  # ignored row, a -inf target logit, class 3
    return t


def assert_close(actual, expected, rtol=1e-12, atol=1e-13):
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# logsumexp, softmax, log_softmax


@pytest.mark.parametrize("chunks", [(5, 7), (12, 4), (3, 23), (1, 1)])
def test_softmax_family_matches_in_memory(chunks):
    x = logits()
    dx = da.from_array(x, chunks=chunks)
    for dim in (1, 0, -1):
        assert_close(fld.logsumexp(dx, dim).compute(), fl.logsumexp(x, dim))
        assert_close(fld.softmax(dx, dim).compute(), fl.softmax(x, dim))
        assert_close(fld.log_softmax(dx, dim).compute(), fl.log_softmax(x, dim))
    assert_close(fld.logsumexp(dx, (0, 1), keepdim=True).compute(),
                 fl.logsumexp(x, (0, 1), keepdim=True))


def test_softmax_family_on_3d_float32_and_float16():
    for dtype, rtol in ((np.float32, 2e-6), (np.float16, 2e-3)):
        x = logits(rows=6, classes=20, dtype=dtype).reshape(6, 4, 5)
        dx = da.from_array(x, chunks=(2, 3, 2))
        for dim in (0, 1, 2):
            assert_close(fld.logsumexp(dx, dim).compute(), fl.logsumexp(x, dim), rtol, 1e-6)
            assert_close(fld.softmax(dx, dim).compute(), fl.softmax(x, dim), rtol, 1e-6)
            assert_close(fld.log_softmax(dx, dim).compute(), fl.log_softmax(x, dim), rtol, 1e-5)
    assert_close(fld.logsumexp(dx, (0, 2)).compute(), fl.logsumexp(x, (0, 2)), rtol, 1e-6)


# ---------------------------------------------------------------------------------------------
# nll_loss, cross_entropy and its gradient


def _kwargs(options, classes):
    w = np.random.default_rng(5).random(classes) + 0.2
    return {k: (w if v == "w" else v) for k, v in options.items()}


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_and_gradient_match_in_memory(reduction, options):
    x, t = logits(), targets()
    t[t == -100] = options.get("ignore_index", -100)
    kwargs = dict(_kwargs(options, x.shape[1]), reduction=reduction)
    dx = da.from_array(x, chunks=(5, 7))
    dt = da.from_array(t, chunks=4)  # rechunked to the input's row chunks
    assert_close(fld.cross_entropy(dx, dt, **kwargs).compute(), fl.cross_entropy(x, t, **kwargs))
    upstream = 2.5 if reduction != "none" else np.random.default_rng(2).standard_normal(12)
    upstream_dask = upstream if reduction != "none" else da.from_array(upstream, chunks=6)
    loss, grad = dask.compute(*fld.cross_entropy_with_grad(dx, dt, grad_output=upstream_dask,
                                                           **kwargs))
    expected_loss, expected_grad = fl.cross_entropy_with_grad(x, t, grad_output=upstream,
                                                              **kwargs)
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad, atol=1e-12)
    backward = fld.cross_entropy_backward(upstream_dask, dx, dt, **kwargs)
    assert backward.chunks == dx.chunks
    assert_close(backward.compute(), expected_grad, atol=1e-12)


@pytest.mark.parametrize("options", OPTIONS[:3], ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_matches_in_memory(reduction, options):
    x, t = logits(special=False), targets()
    t[t == -100] = options.get("ignore_index", -100)
    kwargs = dict(_kwargs(options, x.shape[1]), reduction=reduction)
    dx = da.from_array(x, chunks=(7, 6))
    assert_close(fld.nll_loss(dx, t, **kwargs).compute(), fl.nll_loss(x, t, **kwargs))


def test_float32_spatial_and_unbatched_inputs():
    x = logits(rows=6, classes=20, dtype=np.float32).reshape(4, 5, 6)  # (N, C, d)
    t = np.random.default_rng(3).integers(0, 5, (4, 6))
    dx = da.from_array(x, chunks=(3, 2, 4))
    for reduction in REDUCTIONS:
        kw = {"reduction": reduction, "label_smoothing": 0.1, "weight": np.arange(1.0, 6.0)}
        assert_close(fld.cross_entropy(dx, t, **kw).compute(), fl.cross_entropy(x, t, **kw),
                     rtol=2e-6, atol=1e-6)
        assert_close(fld.cross_entropy_backward(1.0 if reduction != "none" else np.ones((4, 6)),
                                                dx, t, **kw).compute(),
                     fl.cross_entropy_backward(1.0 if reduction != "none" else np.ones((4, 6)),
                                               x, t, **kw), rtol=2e-5, atol=2e-6)
    row = logits(rows=1, classes=9, special=False)[0]
    for reduction in REDUCTIONS:
        assert_close(fld.cross_entropy(da.from_array(row, chunks=4), 3,
                                       reduction=reduction).compute(),
                     fl.cross_entropy(row, np.array(3), reduction=reduction))
    grad = fld.cross_entropy_backward(1.0, da.from_array(row, chunks=4), np.array(3)).compute()
    assert_close(grad, fl.cross_entropy_backward(1.0, row, np.array(3)))


def test_all_rows_ignored_gives_nan_mean_like_torch():
    x, t = logits(special=False), np.full(12, -100)
    dx = da.from_array(x, chunks=(5, 7))
    assert np.isnan(fld.cross_entropy(dx, t).compute())
    assert fld.cross_entropy(dx, t, reduction="sum").compute() == 0.0


# ---------------------------------------------------------------------------------------------
# Graphs: lazy, no rechunking of the input, errors at the right time


def test_graphs_are_lazy_and_keep_the_input_chunks():
    calls = []

    def block(b):
        if b.size:  # not the empty arrays dask passes to learn the output type
            calls.append(1)
        return b

    x = da.from_array(logits(special=False), chunks=(4, 8)).map_blocks(block)
    calls.clear()  # map_blocks itself tried the function on a (1, 1) array
    t = da.from_array(targets(), chunks=4)
    loss, grad = fld.cross_entropy_with_grad(x, t, label_smoothing=0.1)
    softmax = fld.softmax(x, dim=1)
    assert not calls
    for graph in (loss, grad, softmax):
        assert not any("rechunk" in name for name in graph.dask.layers), graph.dask.layers
    assert grad.chunks == softmax.chunks == x.chunks
    dask.compute(loss, grad)
    # Each input block is produced once, and feeds both its states and its gradient block.
    assert len(calls) == x.npartitions


def test_out_of_range_target_raises_at_compute_time():
    loss = fld.cross_entropy(da.from_array(logits(), chunks=(5, 7)), np.array([30] + [0] * 11))
    with pytest.raises(IndexError, match="Target 30 is out of bounds for 23 classes"):
        loss.compute()


def test_errors_are_raised_when_the_graph_is_built():
    dx = da.from_array(logits(), chunks=(5, 7))
    with pytest.raises(NotImplementedError, match="class-probability targets"):
        fld.cross_entropy(dx, np.zeros((12, 23)))
    with pytest.raises(ValueError, match=r"Expected target size \[12\], got \[11\]"):
        fld.cross_entropy(dx, np.zeros(11, dtype=int))
    with pytest.raises(ValueError, match="weight tensor should be defined"):
        fld.cross_entropy(dx, targets(), weight=np.ones(3))
    with pytest.raises(ValueError, match="label_smoothing must be between"):
        fld.cross_entropy(dx, targets(), label_smoothing=1.5)
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        fld.cross_entropy(dx, targets(), reduction="avg")
    with pytest.raises(ValueError, match="grad_output has shape"):
        fld.cross_entropy_backward(np.ones(3), dx, targets(), reduction="none")
    with pytest.raises(TypeError, match="cannot compute in"):
        fld.cross_entropy(dx.astype(np.int32), targets())
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        fld.softmax(dx)


# ---------------------------------------------------------------------------------------------
# A real cluster: worker processes


@pytest.mark.slow
def test_distributed_local_cluster_with_worker_processes():
    distributed = pytest.importorskip("distributed")
    x = logits(rows=64, classes=50, dtype=np.float32)
    t = targets(rows=64, classes=50)
    dx = da.from_array(x, chunks=(16, 20))
    kw = {"weight": np.linspace(0.5, 1.5, 50), "label_smoothing": 0.1}
    loss, grad = fld.cross_entropy_with_grad(dx, t, **kw)
    rows = fld.cross_entropy(dx, t, reduction="none", **kw)
    lse = fld.logsumexp(dx, dim=1)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster, distributed.Client(cluster, timeout=60) as client:
        futures = client.compute([loss, grad, rows, lse])
        distributed.wait(futures, timeout=180)  # bounded: a hung cluster fails the test
        results = client.gather(futures)  # a task's own error propagates here
        workers = {w for keys in client.who_has(futures).values() for w in keys}
        assert len(client.scheduler_info()["workers"]) == 2 and workers
    expected_loss, expected_grad = fl.cross_entropy_with_grad(x, t, **kw)
    assert_close(results[0], expected_loss, rtol=2e-6)
    assert_close(results[1], expected_grad, rtol=2e-5, atol=2e-6)
    assert_close(results[2], fl.cross_entropy(x, t, reduction="none", **kw), rtol=2e-6)
    assert_close(results[3], fl.logsumexp(x, dim=1), rtol=2e-6)


@pytest.mark.parametrize("name", fld.__all__)
def test_docstring_is_numpydoc_with_an_example_that_runs(name):
    func = getattr(fld, name)
    doc = func.__doc__ or ""
    for section in ("Parameters", "Returns", "Examples"):
        assert section in doc, f"fastloss.dask.{name} needs a {section} section"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    with np.printoptions(precision=8, floatmode="maxprec", linewidth=75):
        for test in doctest.DocTestFinder(recurse=False).find(func, name, globs={}):
            runner.run(test)
    assert runner.failures == 0, f"the example of fastloss.dask.{name} does not run as shown"
