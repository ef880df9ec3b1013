"""Fused linear + cross-entropy vs torch autograd of ``F.cross_entropy(x @ W.T, t)``.

Each implementation runs in a fresh process (so one's memory cannot hide the other's): it
builds the inputs, makes one warm-up call, then times ``--repeat`` calls of loss + gradients
(for input and weight) while a thread samples the resident set size every millisecond. The
"extra" memory is the peak RSS during the timed calls minus the RSS before them, minus the
gradients the call returns (both implementations return the same ones), compared with the
(N, V) logits that the fused version never materializes.

Run::

    python benchmarks/linear_cross_entropy.py                     # N=8192, H=1024, V=32000
    python benchmarks/linear_cross_entropy.py --rows 512 --hidden 64 --vocab 1000 --json r.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """The largest RSS seen while the context is open, sampled every millisecond."""

    def __enter__(self):
        self.peak = self.start = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _run_one(impl: str, rows: int, hidden: int, vocab: int, repeat: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, hidden), dtype=np.float32)
    w = rng.standard_normal((vocab, hidden), dtype=np.float32) / np.float32(hidden**0.5)
    t = rng.integers(0, vocab, rows)
    if impl == "fastloss":
        import fastloss as fl

        def step():
            loss, gx, gw, _ = fl.linear_cross_entropy_with_grad(x, w, t)
            return loss, gx, gw

    else:
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        xt, wt, tt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(t)

        def step():
            xi = xt.detach().requires_grad_(True)
            wi = wt.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(xi @ wi.T, tt)
            loss.backward()
            return loss.detach().numpy(), xi.grad.numpy(), wi.grad.numpy()

    loss, gx, gw = step()  # warm-up: compiles kernels, starts BLAS threads
    del gx, gw
    seconds = []
    peak_extra = 0
    for _ in range(repeat):
        with PeakRSS() as memory:
            start = time.perf_counter()
            loss, gx, gw = step()
            seconds.append(time.perf_counter() - start)
        outputs = gx.nbytes + gw.nbytes
        peak_extra = max(peak_extra, memory.peak - memory.start - outputs)
        del gx, gw
    return {
        "impl": impl,
        "seconds": min(seconds),
        "peak_extra_bytes": int(peak_extra),
        "logits_bytes": rows * vocab * 4,
        "loss": float(loss),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--impls", default="fastloss,torch")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    shape = (options.rows, options.hidden, options.vocab, options.repeat)
    if options.worker:
        print(json.dumps(_run_one(options.worker, *shape)))
        return 0
    results = []
    for impl in options.impls.split(","):
        command = [sys.executable, __file__, "--worker", impl, "--rows", str(options.rows),
                   "--hidden", str(options.hidden), "--vocab", str(options.vocab),
                   "--repeat", str(options.repeat)]
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=3600)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    logits = results[0]["logits_bytes"]
    print(f"N={options.rows} H={options.hidden} V={options.vocab} float32; logits would be "
          f"{logits / 2**20:.0f} MiB")
    print(f"{'impl':10s} {'time':>10s} {'peak extra':>12s} {'% of logits':>12s} {'loss':>10s}")
    for r in results:
        print(f"{r['impl']:10s} {r['seconds']:9.3f}s {r['peak_extra_bytes'] / 2**20:10.1f}MiB "
              f"{100 * r['peak_extra_bytes'] / logits:11.1f}% {r['loss']:10.5f}")
    by_impl = {r["impl"]: r for r in results}
    if {"fastloss", "torch"} <= by_impl.keys():
        ratio = by_impl["torch"]["seconds"] / by_impl["fastloss"]["seconds"]
        print(f"time ratio torch / fastloss: {ratio:.2f}x")
    if options.json:
        with open(options.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
