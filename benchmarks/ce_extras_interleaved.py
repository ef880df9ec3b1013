"""What each cross_entropy extra costs, timed interleaved in one process.

The pytest-benchmark group ``cross_entropy_extras`` times each variant in turn, so a change
in the machine's load between variants shows up as a cost. This script runs
``cross_entropy_with_grad`` on the same (4096, 32000) float32 logits into a reused ``out``,
plain and with each extra, in rounds (one call of each per round), keeps each variant's best
time and prints it over plain's. "plain (again)" is plain timed a second time in every round:
its ratio shows the noise. Issue target: every extra <= 1.10x.

Run::

    python benchmarks/ce_extras_interleaved.py [--rounds 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastloss as fl

# Every extra alone, and all four together (benchmarks/test_bench_ce_extras.py times these too).
EXTRAS = {
    "plain": {},
    "z-loss": {"lse_square_scale": 1e-4},
    "softcap": {"softcap": 30.0},
    "return_lse": {"return_lse": True},
    "return_accuracy": {"return_accuracy": True},
    "all four": {
        "lse_square_scale": 1e-4,
        "softcap": 30.0,
        "return_lse": True,
        "return_accuracy": True,
    },
}
VARIANTS = {"plain": {}, "plain (again)": {}, **EXTRAS}


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="default: fastloss's")
    parser.add_argument("--shape", default="4096x32000")
    args = parser.parse_args(argv)
    rows, classes = (int(n) for n in args.shape.split("x"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, classes), dtype=np.float32) * np.float32(3)
    target = rng.integers(0, classes, rows)
    out = np.empty_like(x)
    best = dict.fromkeys(VARIANTS, np.inf)
    threads = args.threads or fl.get_num_threads()
    with fl.num_threads(threads):
        for kwargs in VARIANTS.values():  # compile, and fault in out's pages
            fl.cross_entropy_with_grad(x, target, out=out, **kwargs)
        for _ in range(args.rounds):
            for name, kwargs in VARIANTS.items():
                start = time.perf_counter()
                fl.cross_entropy_with_grad(x, target, out=out, **kwargs)
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"cross_entropy_with_grad {rows}x{classes} float32, out=, best of {args.rounds} "
          f"interleaved rounds, {threads} threads")
    for name, seconds in best.items():
        print(f"  {name:<16} {seconds * 1e3:8.1f} ms   {seconds / best['plain']:.3f}x plain")
    return best


if __name__ == "__main__":
    main()
