"""One registry of (function, reference, torch equivalent, argument generator).

It drives the conformance tests (tests/), the benchmarks (benchmarks/) and the CLI's
self-check and throughput table, so a case added here is tested and benchmarked at once and a
benchmark can never time something other than what the tests check.

Each ``Case`` names a public fastloss function by its forward name; the backward is
``<name>_backward`` (and ``<name>_with_grad`` for losses) on both ``fastloss`` and
``fastloss.reference``. ``make_args(shape, dtype, rng)`` returns the positional and keyword
arguments of one call; the first positional argument is always ``input``, the array the
gradient is taken with respect to.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Case:
    """One public function and everything needed to test and benchmark it."""

    name: str
    make_args: Callable[[tuple, np.dtype, np.random.Generator], tuple[tuple, dict]]
    torch_name: str | None
    # Shapes the benchmarks time, each with the kwargs that select the reduced/class dim.
    bench_shapes: tuple[tuple[tuple[int, ...], dict], ...] = ()
    # Bytes that must cross memory for one forward call, given its arguments and result.
    traffic: Callable[[tuple, dict, np.ndarray], int] | None = None
    # Named option sets: each maps (shape, dtype, rng) to extra kwargs for the call.
    variants: tuple[tuple[str, Callable], ...] = (("plain", lambda shape, dtype, rng: {}),)
    has_loss_grad: bool = False
    # Turns an input into one with the special values this function accepts, for the CLI's
    # self-check; None means the generic one (-inf/NaN/+inf slices along the class axis).
    special_values: Callable[[np.ndarray, dict], np.ndarray] | None = None

    @property
    def fastloss_with_grad(self) -> Callable | None:
        if not self.has_loss_grad:
            return None
        return getattr(importlib.import_module("fastloss"), self.name + "_with_grad")

    @property
    def fastloss(self) -> Callable:
        return getattr(importlib.import_module("fastloss"), self.name)

    @property
    def fastloss_backward(self) -> Callable:
        return getattr(importlib.import_module("fastloss"), self.name + "_backward")

    @property
    def reference(self) -> Callable:
        return getattr(importlib.import_module("fastloss.reference"), self.name)

    @property
    def reference_backward(self) -> Callable:
        return getattr(importlib.import_module("fastloss.reference"), self.name + "_backward")

    def torch_function(self):
        """The torch callable (``None`` when torch is not importable)."""
        if self.torch_name is None:
            return None
        try:
            module_name, _, attr = self.torch_name.rpartition(".")
            return getattr(importlib.import_module(module_name), attr)
        except ImportError:
            return None


def _read_write(args, kwargs, result) -> int:
    return args[0].nbytes + np.asarray(result).nbytes


def _logits(shape, dtype, rng):
    return (rng.standard_normal(shape) * 3).astype(dtype)


def _dim_args(shape, dtype, rng, dim=-1):
    return (_logits(shape, dtype, rng),), {"dim": dim}


def _plain_args(shape, dtype, rng):
    return (_logits(shape, dtype, rng),), {}


def _class_count(shape) -> int:
    return shape[1] if len(shape) > 1 else shape[0]


def _class_targets(shape, rng) -> np.ndarray:
    target_shape = (shape[0],) + tuple(shape[2:]) if len(shape) > 1 else ()
    return np.asarray(rng.integers(0, _class_count(shape), target_shape))


def _classification_args(shape, dtype, rng):
    return (_logits(shape, dtype, rng), _class_targets(shape, rng)), {}


def _log_probability_args(shape, dtype, rng):
    x = _logits(shape, dtype, rng)
    axis = 1 if len(shape) > 1 else 0
    log_probs = x - np.log(np.exp(x.astype(np.float64)).sum(axis, keepdims=True)).astype(dtype)
    return (log_probs, _class_targets(shape, rng)), {}


def _all_options(shape, dtype, rng):
    """weight + label_smoothing + ignore_index (class 0 ignored) together."""
    return {
        "weight": rng.uniform(0.5, 2.0, _class_count(shape)).astype(dtype),
        "label_smoothing": 0.1,
        "ignore_index": 0,
    }


def _nll_options(shape, dtype, rng):
    options = _all_options(shape, dtype, rng)
    del options["label_smoothing"]
    return options


def _classification_traffic(args, kwargs, result) -> int:
    return args[0].nbytes + args[1].nbytes + np.asarray(result).nbytes


def _log_probability_pair_args(shape, dtype, rng):
    """kl_div's log-probabilities and probability targets; 'batchmean', the true KL."""
    log_q = np.log(rng.dirichlet(np.ones(shape[-1]), shape[:-1]) if shape else np.ones(()))
    target = rng.dirichlet(np.ones(shape[-1]), shape[:-1]) if shape else np.ones(())
    return (log_q.astype(dtype), target.astype(dtype)), {"reduction": "batchmean"}


def _binary_targets(shape, dtype, rng):
    return (rng.random(shape) < 0.3).astype(dtype)


def _probability_args(shape, dtype, rng):
    probs = rng.uniform(0.001, 0.999, shape).astype(dtype)
    return (probs, _binary_targets(shape, dtype, rng)), {}


def _logit_args(shape, dtype, rng):
    return (_logits(shape, dtype, rng), _binary_targets(shape, dtype, rng)), {}


def _regression_args(shape, dtype, rng):
    return (_logits(shape, dtype, rng), _logits(shape, dtype, rng)), {}


def _per_class_weight(shape, dtype, rng):
    return {"weight": rng.uniform(0.5, 2.0, shape[-1:]).astype(dtype)}


def _logit_options(shape, dtype, rng):
    return {
        **_per_class_weight(shape, dtype, rng),
        "pos_weight": rng.uniform(1.0, 4.0, shape[-1:]).astype(dtype),
    }


def _element_weight(shape, dtype, rng):
    return {"weight": rng.uniform(0.5, 2.0, shape).astype(dtype)}


def _margin_args(shape, dtype, rng):
    rows = shape[0] if len(shape) == 2 else 1
    target = rng.integers(0, shape[-1], (rows,) if len(shape) == 2 else ())
    return (_logits(shape, dtype, rng), np.asarray(target)), {}


def _margin_options(shape, dtype, rng):
    return {"p": 2, "margin": 0.5, **_per_class_weight(shape, dtype, rng)}


def _probability_special_values(x: np.ndarray, kwargs: dict) -> np.ndarray:
    """binary_cross_entropy's special inputs are the ends of [0, 1] (the log clamp)."""
    x = x.copy()
    flat = x.reshape(-1)
    flat[0::7] = 0.0
    flat[3::7] = 1.0
    return x


def _elementwise_traffic(args, kwargs, result) -> int:
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    arrays += [v for v in kwargs.values() if isinstance(v, np.ndarray)]
    return sum(a.nbytes for a in arrays) + np.asarray(result).nbytes


# The shapes of the foundation issue: two large-vocabulary cases, a mid one, a tiny one, and
# a spatial (N, C, H, W) reduction over the class dim 1.
SOFTMAX_BENCH_SHAPES = (
    ((4096, 32000), {"dim": -1}),
    ((65536, 1000), {"dim": -1}),
    ((8192, 128), {"dim": -1}),
    ((32, 10), {"dim": -1}),
    ((16, 21, 256, 256), {"dim": 1}),
)
ELEMENTWISE_BENCH_SHAPES = (((4096, 32000), {}), ((32, 10), {}))
CLASSIFICATION_BENCH_SHAPES = (
    ((4096, 32000), {}),
    ((65536, 1000), {}),
    ((8192, 128), {}),
    ((32, 10), {}),
    ((16, 21, 256, 256), {}),
)

# The other losses of the seed documents: 1e7 elements, a tiny case, and (65536, 1000) for
# the row-structured ones.
LOSS_BENCH_SHAPES = (((10000, 1000), {}), ((32, 10), {}))
ROW_LOSS_BENCH_SHAPES = (((10000, 1000), {}), ((65536, 1000), {}), ((32, 10), {}))

CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("logsumexp", _dim_args, "torch.logsumexp", SOFTMAX_BENCH_SHAPES, _read_write),
        Case(
            "softmax",
            _dim_args,
            "torch.nn.functional.softmax",
            SOFTMAX_BENCH_SHAPES,
            _read_write,
        ),
        Case(
            "log_softmax",
            _dim_args,
            "torch.nn.functional.log_softmax",
            SOFTMAX_BENCH_SHAPES,
            _read_write,
        ),
        Case("sigmoid", _plain_args, "torch.sigmoid", ELEMENTWISE_BENCH_SHAPES, _read_write),
        Case(
            "logsigmoid",
            _plain_args,
            "torch.nn.functional.logsigmoid",
            ELEMENTWISE_BENCH_SHAPES,
            _read_write,
        ),
        Case(
            "cross_entropy",
            _classification_args,
            "torch.nn.functional.cross_entropy",
            CLASSIFICATION_BENCH_SHAPES,
            _classification_traffic,
            variants=(("plain", lambda shape, dtype, rng: {}), ("options", _all_options)),
            has_loss_grad=True,
        ),
        Case(
            "nll_loss",
            _log_probability_args,
            "torch.nn.functional.nll_loss",
            CLASSIFICATION_BENCH_SHAPES,
            _classification_traffic,
            variants=(("plain", lambda shape, dtype, rng: {}), ("options", _nll_options)),
            has_loss_grad=True,
        ),
        Case(
            "kl_div",
            _log_probability_pair_args,
            "torch.nn.functional.kl_div",
            ROW_LOSS_BENCH_SHAPES,
            _elementwise_traffic,
            variants=(
                ("plain", lambda shape, dtype, rng: {}),
                ("log_target", lambda shape, dtype, rng: {"log_target": True}),
            ),
            has_loss_grad=True,
        ),
        Case(
            "binary_cross_entropy",
            _probability_args,
            "torch.nn.functional.binary_cross_entropy",
            LOSS_BENCH_SHAPES,
            _elementwise_traffic,
            variants=(("plain", lambda shape, dtype, rng: {}), ("options", _per_class_weight)),
            has_loss_grad=True,
            special_values=_probability_special_values,
        ),
        Case(
            "binary_cross_entropy_with_logits",
            _logit_args,
            "torch.nn.functional.binary_cross_entropy_with_logits",
            LOSS_BENCH_SHAPES,
            _elementwise_traffic,
            variants=(("plain", lambda shape, dtype, rng: {}), ("options", _logit_options)),
            has_loss_grad=True,
        ),
        Case(
            "mse_loss",
            _regression_args,
            "torch.nn.functional.mse_loss",
            LOSS_BENCH_SHAPES,
            _elementwise_traffic,
            variants=(("plain", lambda shape, dtype, rng: {}), ("options", _element_weight)),
            has_loss_grad=True,
        ),
        Case(
            "multi_margin_loss",
            _margin_args,
            "torch.nn.functional.multi_margin_loss",
            ROW_LOSS_BENCH_SHAPES,
            _classification_traffic,
            variants=(("plain", lambda shape, dtype, rng: {}), ("options", _margin_options)),
            has_loss_grad=True,
        ),
    )
}


def with_bench_kwargs(case: Case, shape, dtype, rng, kwargs) -> tuple[tuple, dict]:
    """Arguments of one benchmark call: the case's generator with the shape's own kwargs."""
    args, base = case.make_args(shape, dtype, rng)
    return args, {**base, **kwargs}
