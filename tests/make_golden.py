"""Write torch's results as golden vectors: tests/data/golden.npz + golden_cases.json.

Run with the test virtualenv (needs torch==2.13.0):

    python tests/make_golden.py

Every case runs one torch function on small float64 and float32 inputs, in the dtype of
the inputs, and stores the inputs, torch's forward result, a fixed random grad_output and
torch's gradient with respect to ``input``. The index (golden_cases.json) lists, per case:
its name, the function, the dtype, the JSON keyword arguments and where each of its arrays
is in the npz (see ``GoldenWriter``). ``tests/golden.py`` loads them.

Cases cover every function with a representative set of options and the shapes (3,),
(4, 5), (2, 3, 4) and (2, 3, 2, 2), plus the special values of the edge-case table in
shared/reference/torch-semantics.md where torch returns a value. Not included: torch's
errors, and multi_margin_loss with N = 0 and 'mean'/'sum' (torch returns uninitialised
memory there).
"""

import json
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA_DIR = Path(__file__).parent / "data"
NPZ_PATH = DATA_DIR / "golden.npz"
INDEX_PATH = DATA_DIR / "golden_cases.json"
EXPECTED_TORCH = "2.13.0"

INF, NAN = np.inf, np.nan
REDUCTIONS = ("none", "mean", "sum")
DTYPES = ("float64", "float32")

TORCH_FUNCTIONS = {
    "logsumexp": torch.logsumexp,
    "softmax": F.softmax,
    "log_softmax": F.log_softmax,
    "sigmoid": torch.sigmoid,
    "logsigmoid": F.logsigmoid,
    "nll_loss": F.nll_loss,
    "cross_entropy": F.cross_entropy,
    "kl_div": F.kl_div,
    "binary_cross_entropy": F.binary_cross_entropy,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
    "mse_loss": F.mse_loss,
    "multi_margin_loss": F.multi_margin_loss,
}


def _rng(*key):
    """A generator seeded from a description, so regenerating gives the same arrays."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


class GoldenWriter:
    """Runs torch on each case and collects its arrays and index entry.

    Arrays are stored in one flat "pool" per dtype (float64, float32, int64), and the
    index refers to each as ``[pool, offset, shape]``: a zip entry per array would
    cost ~250 bytes of overhead each, three times the data. Identical arrays are stored once.
    """

    def __init__(self):
        self.cases = []
        self._pools = {}  # dtype name -> list of flat arrays
        self._pool_sizes = {}
        self._ref_of_content = {}

    def _store(self, array):
        """Append ``array`` to its dtype's pool (unless already there); return its reference."""
        array = np.array(array, order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
        content = (array.dtype.str, array.shape, array.tobytes())
        if content not in self._ref_of_content:
            pool = array.dtype.name
            offset = self._pool_sizes.get(pool, 0)
            self._pools.setdefault(pool, []).append(array.ravel())
            self._pool_sizes[pool] = offset + array.size
            self._ref_of_content[content] = [pool, offset, list(array.shape)]
        return self._ref_of_content[content]

    @property
    def num_arrays(self):
        return len(self._ref_of_content)

    def add(self, name, func, dtype, arrays, **kwargs):
        """Run torch's ``func`` in ``dtype`` and record the case.

        ``arrays`` maps argument names (input, target, weight, pos_weight) to arrays;
        floating arrays are cast to ``dtype``, integer arrays (class targets) to int64.
        ``kwargs`` are the JSON-serializable options.
        """
        name = f"{func}/{dtype}/{name}"
        assert all(case["name"] != name for case in self.cases), name
        arrays = {k: _cast(v, dtype) for k, v in arrays.items()}
        expected, expected_grad, grad_output = _run_torch(func, arrays, kwargs, name)
        self.cases.append(
            {
                "name": name,
                "func": func,
                "dtype": dtype,
                "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
                "has_weight": "weight" in arrays,
                "has_pos_weight": "pos_weight" in arrays,
                "arrays": {k: self._store(v) for k, v in arrays.items()},
                "expected": self._store(expected),
                "expected_grad": self._store(expected_grad),
                "grad_output": self._store(grad_output),
            }
        )

    def write(self):
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        pools = {name: np.concatenate(chunks) for name, chunks in self._pools.items()}
        np.savez_compressed(NPZ_PATH, **pools)
        header = {
            "generator": "tests/make_golden.py",
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "array_reference": "[pool, offset, shape] means "
            "npz[pool][offset : offset + prod(shape)].reshape(shape)",
        }
        # One case per line: readable, and diffs stay small when cases change.
        lines = [json.dumps(case, allow_nan=False) for case in self.cases]
        with open(INDEX_PATH, "w") as f:
            f.write(json.dumps(header, allow_nan=False)[:-1])
            f.write(', "cases": [\n' + ",\n".join(lines) + "\n]}\n")


def _cast(array, dtype):
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    return array.astype(dtype)


def _grad_output(shape, dtype):
    """A fixed random upstream gradient; the same for every case with the same shape."""
    return _rng("grad_output", shape).standard_normal(shape).astype(dtype)


def _run_torch(func, arrays, kwargs, name):
    """torch's forward result, gradient w.r.t. input, and the grad_output used."""
    tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    x = tensors.pop("input").requires_grad_(True)
    positional = [tensors.pop("target")] if "target" in tensors else []
    # Warnings (kl_div's 'mean', legacy arguments) do not change torch's results.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = TORCH_FUNCTIONS[func](x, *positional, **tensors, **kwargs)
    dtype = arrays["input"].dtype
    grad_output = _grad_output(tuple(out.shape), dtype)
    out.backward(torch.from_numpy(grad_output))
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    expected, expected_grad = out.detach().numpy(), grad.numpy()
    assert expected.dtype == dtype and expected_grad.dtype == dtype, name
    return expected, expected_grad, grad_output


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------

# Class-index shapes: (input shape, class axis).
CLASS_SHAPES = {"1d": (5,), "2d": (4, 5), "3d": (2, 3, 4), "4d": (2, 3, 2, 2)}


def _logits(key, shape):
    return _rng("logits", key, shape).standard_normal(shape) * 3


def _num_classes(shape):
    return shape[0] if len(shape) == 1 else shape[1]


def _class_target(key, shape, ignore_index=None):
    """Class indices for an input of ``shape``; about a third of rows are ignored."""
    rng = _rng("target", key, shape)
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    target = rng.integers(0, _num_classes(shape), size=target_shape)
    if ignore_index is not None:
        target = np.where(rng.random(target_shape) < 0.35, ignore_index, target)
    return target


def _probabilities(key, shape):
    y = _rng("probabilities", key, shape).random(shape)
    class_axis = 0 if len(shape) == 1 else 1
    return y / np.sum(y, axis=class_axis, keepdims=True)


def _class_weight(shape):
    return _rng("class_weight", shape).random(_num_classes(shape)) + 0.2


# Special rows from the semantics file (§1, §2, §4).
SPECIAL_ROWS = np.array(
    [
        [-INF, 0.0, 1.0],
        [-INF, -INF, -INF],
        [INF, 0.0, 1.0],
        [INF, -INF, 2.0],
        [NAN, 0.0, 1.0],
        [1e30, 0.0, -1e30],
        [1e4, 2e4, 3e4],
        [3e4, 2e4, 1e4],
        [0.5, 0.25, -0.75],
    ]
)


# --------------------------------------------------------------------------------------
# Cases per function
# --------------------------------------------------------------------------------------


def add_softmax_family(w, dtype):
    for key, (shape, dim) in {
        "3_dim0": ((3,), 0),
        "4x5_dim1": ((4, 5), 1),
        "4x5_dim0": ((4, 5), 0),
        "2x3x4_dim1": ((2, 3, 4), 1),
        "2x3x4_dim-1": ((2, 3, 4), -1),
        "2x3x2x2_dim1": ((2, 3, 2, 2), 1),
        "3x0_dim1": ((3, 0), 1),
        "0d": ((), 0),
    }.items():
        for func in ("softmax", "log_softmax"):
            w.add(key, func, dtype, {"input": _logits(key, shape)}, dim=dim)
    for func in ("softmax", "log_softmax", "logsumexp"):
        w.add("special_rows", func, dtype, {"input": SPECIAL_ROWS}, dim=1)
        w.add("special_rows_dim0", func, dtype, {"input": SPECIAL_ROWS.T}, dim=0)
    for key, (shape, dim, keepdim) in {
        "3_dim0": ((3,), 0, False),
        "4x5_dim1": ((4, 5), 1, False),
        "4x5_dim0_keepdim": ((4, 5), 0, True),
        "2x3x4_dims02": ((2, 3, 4), (0, 2), False),
        "2x3x2x2_dims-1,1_keepdim": ((2, 3, 2, 2), (-1, 1), True),
        "2x0_dim1": ((2, 0), 1, False),
        "0d": ((), 0, False),
    }.items():
        w.add(key, "logsumexp", dtype, {"input": _logits(key, shape)}, dim=dim, keepdim=keepdim)
    for value in (INF, -INF, 1.5):
        w.add(f"0d_{value}", "logsumexp", dtype, {"input": np.array(value)}, dim=0)


def add_sigmoid_family(w, dtype):
    special = np.array([-INF, -800, -100, -88.8, -30, -1, 0, 1, 17, 30, 100, 800, INF, NAN])
    for func in ("sigmoid", "logsigmoid"):
        for key, shape in {"3": (3,), "4x5": (4, 5), "2x3x4": (2, 3, 4), "0d": ()}.items():
            w.add(key, func, dtype, {"input": _logits(key, shape) * 3})
        w.add("special", func, dtype, {"input": special})


def _index_options(func, variant, shape):
    """(arrays beyond input/target, kwargs, ignore_index for the target) for a variant."""
    if variant == "plain":
        return {}, {}, None
    if variant == "weight_ignore":
        return {"weight": _class_weight(shape)}, {"ignore_index": -1}, -1
    # 'weight_valid_ignore_smoothing': ignore_index is a real class.
    options = {"ignore_index": 1}
    if func == "cross_entropy":
        options["label_smoothing"] = 0.2
    return {"weight": _class_weight(shape)}, options, 1


def add_index_target_losses(w, dtype):
    for func in ("nll_loss", "cross_entropy"):
        for shape_key, shape in CLASS_SHAPES.items():
            for variant in ("plain", "weight_ignore", "weight_valid_ignore_smoothing"):
                extra, options, ignore_index = _index_options(func, variant, shape)
                target = _class_target(shape_key, shape, ignore_index)
                arrays = {"input": _logits(shape_key, shape), "target": target, **extra}
                for reduction in REDUCTIONS:
                    w.add(
                        f"{shape_key}_{variant}_{reduction}",
                        func,
                        dtype,
                        arrays,
                        reduction=reduction,
                        **options,
                    )
        add_index_target_edge_cases(w, dtype, func)


def add_index_target_edge_cases(w, dtype, func):
    x = _logits("edge", (4, 3))
    cases = {
        "all_ignored": {"input": x, "target": np.full(4, -100)},
        "zero_target_weight": {
            "input": x,
            "target": np.array([0, 0, -100, 2]),
            "weight": np.array([0.0, 1.0, 0.0]),
        },
        "C1": {"input": x[:, :1], "target": np.zeros(4, dtype=np.int64)},
        "unbatched_ignored": {"input": x[0], "target": np.array(-100)},
        "N0": {"input": np.zeros((0, 3)), "target": np.zeros(0, dtype=np.int64)},
        "N0_spatial": {"input": np.zeros((0, 3, 2)), "target": np.zeros((0, 2), dtype=np.int64)},
        "spatial_size0": {"input": np.zeros((2, 3, 0)), "target": np.zeros((2, 0), np.int64)},
        "special_rows": {
            "input": SPECIAL_ROWS,
            "target": np.array([0, 1, 1, 2, 2, 1, 2, 1, -100]),
        },
        # Ignored rows give loss 0, but cross_entropy's grad is nan where the softmax is.
        "ignored_special_rows": {
            "input": SPECIAL_ROWS[[1, 2, 4, 0]],
            "target": np.array([-100, -100, -100, 1]),
        },
    }
    # One special row alone, so that no other row's nan hides it in a mean.
    for key, (row, target) in {
        "target_at_-inf": (0, 0),
        "huge_logits_t1": (5, 1),
        "huge_logits_t0": (5, 0),
        "big_logits": (7, 1),
    }.items():
        cases[key] = {"input": SPECIAL_ROWS[row : row + 1], "target": np.array([target])}
    for key, arrays in cases.items():
        for reduction in REDUCTIONS:
            w.add(f"{key}_{reduction}", func, dtype, arrays, reduction=reduction)
    if func == "cross_entropy":
        w.add(
            "special_rows_smoothing_none",
            func,
            dtype,
            cases["special_rows"],
            reduction="none",
            label_smoothing=0.3,
        )
        w.add(
            "negative_smoothing",
            func,
            dtype,
            {"input": x, "target": np.array([0, 2, 1, 0])},
            reduction="mean",
            label_smoothing=-0.1,
        )


def add_probability_targets(w, dtype):
    for shape_key, shape in CLASS_SHAPES.items():
        arrays = {"input": _logits(shape_key, shape), "target": _probabilities(shape_key, shape)}
        weighted = arrays | {"weight": _class_weight(shape)}
        for reduction in REDUCTIONS:
            w.add(
                f"prob_{shape_key}_{reduction}", "cross_entropy", dtype, arrays, reduction=reduction
            )
            w.add(
                f"prob_{shape_key}_weight_smoothing_{reduction}",
                "cross_entropy",
                dtype,
                weighted,
                reduction=reduction,
                label_smoothing=0.25,
            )
    special = {
        "input": SPECIAL_ROWS[[0, 0, 5]],
        "target": np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1]]),
    }
    w.add("prob_special_none", "cross_entropy", dtype, special, reduction="none")
    empty = {"input": np.zeros((0, 3)), "target": np.zeros((0, 3))}
    for reduction in REDUCTIONS:
        w.add(f"prob_N0_{reduction}", "cross_entropy", dtype, empty, reduction=reduction)


def add_kl_div(w, dtype):
    rng = _rng("kl")
    x = np.log(rng.random((4, 5)) + 0.01)
    y = rng.random((4, 5))
    for log_target in (False, True):
        target = np.log(y) if log_target else np.where(y < 0.2, 0.0, y)
        for reduction in ("none", "mean", "sum", "batchmean"):
            w.add(
                f"4x5_{reduction}_log_target={log_target}",
                "kl_div",
                dtype,
                {"input": x, "target": target},
                reduction=reduction,
                log_target=log_target,
            )
    broadcast = {"input": x[0], "target": y}
    w.add("broadcast_5_4x5_batchmean", "kl_div", dtype, broadcast, reduction="batchmean")
    w.add("broadcast_5_4x5_none", "kl_div", dtype, broadcast, reduction="none")
    w.add(
        "0d_batchmean",
        "kl_div",
        dtype,
        {"input": x[0, 0], "target": y[0, 0]},
        reduction="batchmean",
    )
    w.add(
        "legacy_reduce_batchmean",
        "kl_div",
        dtype,
        {"input": x, "target": y},
        reduce=True,
        reduction="batchmean",
    )
    special_x = np.array([-INF, -INF, 0.0, -1.0, NAN])
    w.add(
        "special_none",
        "kl_div",
        dtype,
        {"input": special_x, "target": np.array([0.0, 0.5, 0.0, -0.5, 0.5])},
        reduction="none",
    )
    w.add(
        "special_log_target_none",
        "kl_div",
        dtype,
        {"input": special_x, "target": np.array([0.0, -INF, -INF, -0.5, 0.5])},
        reduction="none",
        log_target=True,
    )


def add_binary_losses(w, dtype):
    for shape_key, shape in {"4x5": (4, 5), "2x3x4": (2, 3, 4), "3": (3,)}.items():
        rng = _rng("binary", shape_key)
        probabilities, target = rng.random(shape), rng.random(shape)
        logits = _logits(shape_key, shape)
        class_weight = rng.random(shape[-1:]) + 0.2
        pos_weight = rng.random(shape[-1:]) * 3
        for reduction in REDUCTIONS:
            bce = {"input": probabilities, "target": target}
            w.add(
                f"{shape_key}_{reduction}", "binary_cross_entropy", dtype, bce, reduction=reduction
            )
            w.add(
                f"{shape_key}_weight_{reduction}",
                "binary_cross_entropy",
                dtype,
                bce | {"weight": class_weight},
                reduction=reduction,
            )
            logit_arrays = {"input": logits, "target": target}
            for key, extra in {
                "": {},
                "_weight": {"weight": class_weight},
                "_pos_weight": {"pos_weight": pos_weight},
                "_both": {"weight": class_weight, "pos_weight": pos_weight},
            }.items():
                w.add(
                    f"{shape_key}{key}_{reduction}",
                    "binary_cross_entropy_with_logits",
                    dtype,
                    logit_arrays | extra,
                    reduction=reduction,
                )
    ends = {
        "input": np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1e-10, 0.5]),
        "target": np.array([1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 0.5]),
    }
    w.add("clamped_ends_none", "binary_cross_entropy", dtype, ends, reduction="none")
    w.add("clamped_ends_sum", "binary_cross_entropy", dtype, ends, reduction="sum")
    values = np.array([INF, -INF, NAN, 1e4, -1e4, 1e30, -1e30, 100.0, -100.0])
    special = {"input": np.repeat(values, 2), "target": np.tile([0.0, 1.0], len(values))}
    w.add("special_none", "binary_cross_entropy_with_logits", dtype, special, reduction="none")
    w.add(
        "special_pos_weight_none",
        "binary_cross_entropy_with_logits",
        dtype,
        special | {"pos_weight": np.array(3.0)},
        reduction="none",
    )


def add_mse_loss(w, dtype):
    rng = _rng("mse")
    x, y = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    weight = rng.random((4, 5)) + 0.2
    for reduction in REDUCTIONS:
        w.add(f"4x5_{reduction}", "mse_loss", dtype, {"input": x, "target": y}, reduction=reduction)
        w.add(
            f"4x5_weight_{reduction}",
            "mse_loss",
            dtype,
            {"input": x, "target": y, "weight": weight},
            reduction=reduction,
        )
        w.add(
            f"broadcast_4x5_5_{reduction}",
            "mse_loss",
            dtype,
            {"input": x, "target": y[0]},
            reduction=reduction,
        )
    w.add(
        "2x3x4_mean",
        "mse_loss",
        dtype,
        {"input": _logits("mse", (2, 3, 4)), "target": _logits("mse_t", (2, 3, 4))},
    )
    # The square of `big` overflows in float64; in float32 it must not, because float32
    # cases are checked against the reference run in float64.
    big = 1e200 if dtype == "float64" else 1e18
    w.add(
        "special_none",
        "mse_loss",
        dtype,
        {"input": np.array([INF, INF, NAN, big, -INF]), "target": np.array([INF, 0, 0, 0, 1.0])},
        reduction="none",
    )


def add_multi_margin_loss(w, dtype):
    x = _logits("margin", (4, 5)) / 3
    target = _class_target("margin", (4, 5))
    weight = _class_weight((4, 5))
    for reduction in REDUCTIONS:
        for p in (1, 2):
            arrays = {"input": x, "target": target}
            w.add(
                f"4x5_p{p}_{reduction}",
                "multi_margin_loss",
                dtype,
                arrays,
                p=p,
                reduction=reduction,
            )
            w.add(
                f"4x5_p{p}_weight_margin0.5_{reduction}",
                "multi_margin_loss",
                dtype,
                arrays | {"weight": weight},
                p=p,
                margin=0.5,
                reduction=reduction,
            )
        w.add(
            f"unbatched_{reduction}",
            "multi_margin_loss",
            dtype,
            {"input": x[0], "target": target[0]},
            reduction=reduction,
        )
    special = {
        "input": np.array([[NAN, 0.0, 1.0], [INF, 0.0, 1.0], [0.0, INF, 1.0], [1.0, 0.0, -2.0]]),
        "target": np.array([1, 0, 0, 0]),
    }
    w.add("special_none", "multi_margin_loss", dtype, special, reduction="none")
    w.add("special_p2_none", "multi_margin_loss", dtype, special, p=2, reduction="none")
    w.add(
        "0d_none",
        "multi_margin_loss",
        dtype,
        {"input": np.array(0.7), "target": np.array(0)},
        reduction="none",
    )
    w.add(
        "N0_none",
        "multi_margin_loss",
        dtype,
        {"input": np.zeros((0, 3)), "target": np.zeros(0, dtype=np.int64)},
        reduction="none",
    )
    w.add(
        "C1_mean", "multi_margin_loss", dtype, {"input": x[:, :1], "target": np.zeros(4, np.int64)}
    )


def add_legacy_arguments(w, dtype):
    x = _logits("legacy", (4, 5))
    target = _class_target("legacy", (4, 5))
    for size_average, reduce in ((False, None), (None, False), (True, True)):
        w.add(
            f"legacy_size_average={size_average}_reduce={reduce}",
            "cross_entropy",
            dtype,
            {"input": x, "target": target},
            size_average=size_average,
            reduce=reduce,
            reduction="sum",
        )


def main():
    if torch.__version__.split("+")[0] != EXPECTED_TORCH:
        sys.exit(f"make_golden.py expects torch {EXPECTED_TORCH}, found {torch.__version__}")
    torch.set_num_threads(1)
    writer = GoldenWriter()
    for dtype in DTYPES:
        add_softmax_family(writer, dtype)
        add_sigmoid_family(writer, dtype)
        add_index_target_losses(writer, dtype)
        add_probability_targets(writer, dtype)
        add_kl_div(writer, dtype)
        add_binary_losses(writer, dtype)
        add_mse_loss(writer, dtype)
        add_multi_margin_loss(writer, dtype)
        add_legacy_arguments(writer, dtype)
    writer.write()
    size_kb = NPZ_PATH.stat().st_size / 1024
    print(
        f"{len(writer.cases)} cases, {writer.num_arrays} arrays, {NPZ_PATH.name} {size_kb:.0f} KB"
    )


if __name__ == "__main__":
    main()
