"""Cross-entropy of a dask array of logits on a LocalCluster: throughput and peak memory.

    python benchmarks/dask_cross_entropy.py --rows 262144 --classes 32000

The float32 logits (here 262144 x 32000 = 33.5 GB) are random numbers generated chunk by
chunk inside the workers, never materialized whole, and chunked along rows *and* classes
(``--row-chunk`` x ``--class-chunk``): ``fastloss.dask.cross_entropy`` merges the per-chunk
logsumexp states of each row with a tree reduction. The cluster has ``--workers`` worker
processes of ``--threads-per-worker`` threads (Numba's thread count follows it).

Reported: wall time of the computation, throughput in elements/s and in GB/s of logits, and
each worker's peak resident memory during the run (sampled every ``--sample-ms`` by a worker
plugin) next to its resident memory before it. ``--baseline`` also times the same logits
reduced by a plain ``max`` (their generation plus one cheap pass), which shows how much of the
time is the random number generation. ``--check`` compares the loss with the in-memory
``fastloss.cross_entropy`` (small sizes only: it materializes the logits).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np
from distributed import WorkerPlugin


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=262144)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--row-chunk", type=int, default=2048)
    parser.add_argument("--class-chunk", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--reduction", default="mean", choices=("mean", "sum", "none"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-ms", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds, per computation")
    parser.add_argument("--baseline", action="store_true", help="also time generation + max")
    parser.add_argument("--check", action="store_true", help="compare with in-memory fastloss")
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Peak resident memory of each worker process


class PeakMemory(WorkerPlugin):
    """A worker plugin: a thread samples the worker process's RSS and keeps the maximum."""

    name = "fastloss-peak-memory"

    def __init__(self, interval: float):
        self.interval = interval

    def setup(self, worker):
        import psutil

        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True, name=self.name)
        self.thread.start()

    def _sample(self):
        while not self.stopped.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def teardown(self, worker):
        self.stopped.set()


def _reset_peak(dask_worker):
    plugin = dask_worker.plugins[PeakMemory.name]
    plugin.peak = plugin.process.memory_info().rss
    return plugin.peak


def _read_peak(dask_worker):
    plugin = dask_worker.plugins[PeakMemory.name]
    return max(plugin.peak, plugin.process.memory_info().rss)


# ---------------------------------------------------------------------------------------------
# The computation


def random_problem(args):
    """Lazy random logits in [-5, 5) and class targets, generated chunk by chunk."""
    import dask.array as da

    rng = da.random.default_rng(args.seed)
    chunks = (args.row_chunk, args.class_chunk)
    logits = rng.random((args.rows, args.classes), chunks=chunks, dtype=np.float32)
    logits = logits * np.float32(10) - np.float32(5)  # fused into the generating task
    target = rng.integers(0, args.classes, size=args.rows, chunks=args.row_chunk)
    return logits, target


def _timed(client, collection, timeout):
    from distributed import wait

    client.run(_reset_peak)
    start = time.perf_counter()
    future = client.compute(collection)
    wait(future, timeout=timeout)
    result = future.result()
    elapsed = time.perf_counter() - start
    peaks = client.run(_read_peak)
    return result, elapsed, peaks


def _warm_up(args, options):
    """Run a small problem with chunks of the same kinds in this worker (both kernel twins:
    chunks of more than 32768 elements take the parallel one)."""
    import fastloss.dask as fld

    small = argparse.Namespace(**{**vars(args), "rows": 64, "classes": 2048, "row_chunk": 64,
                                  "class_chunk": 1024})
    fld.cross_entropy(*random_problem(small), **options).compute(scheduler="sync")


def run(args) -> dict:
    from distributed import Client, LocalCluster

    import fastloss.dask as fld

    # Numba's thread count in each worker process (never changed in this process, where
    # Numba may already have started its threads).
    environment = {"NUMBA_NUM_THREADS": str(args.threads_per_worker)}
    logits, target = random_problem(args)
    options = {"reduction": args.reduction, "label_smoothing": args.label_smoothing}
    loss = fld.cross_entropy(logits, target, **options)
    elements = args.rows * args.classes
    report = {
        "rows": args.rows, "classes": args.classes, "dtype": "float32",
        "chunks": [args.row_chunk, args.class_chunk], "chunk_count": logits.npartitions,
        "chunk_mb": args.row_chunk * args.class_chunk * 4 / 1e6,
        "workers": args.workers, "threads_per_worker": args.threads_per_worker,
        "logits_gb": elements * 4 / 1e9, "options": options,
    }
    with LocalCluster(
        n_workers=args.workers, threads_per_worker=args.threads_per_worker, processes=True,
        dashboard_address=None, env=environment,
    ) as cluster, Client(cluster) as client:
        client.register_plugin(PeakMemory(args.sample_ms / 1000.0))
        # Compile (or load from Numba's cache) the kernels in every worker before timing.
        client.run(_warm_up, args, options)
        baseline_rss = client.run(_reset_peak)
        value, elapsed, peaks = _timed(client, loss, args.timeout)
        report.update(
            loss=float(np.asarray(value).sum()) if args.reduction != "none" else None,
            seconds=elapsed, elements_per_second=elements / elapsed,
            gb_per_second=elements * 4 / elapsed / 1e9,
            peak_rss_mb={w: peaks[w] / 1e6 for w in peaks},
            baseline_rss_mb={w: baseline_rss[w] / 1e6 for w in baseline_rss},
        )
        if args.baseline:
            _, base_elapsed, base_peaks = _timed(client, logits.max(axis=1).sum(), args.timeout)
            report["baseline"] = {
                "what": "the same lazy logits reduced by max (generation + one pass)",
                "seconds": base_elapsed, "gb_per_second": elements * 4 / base_elapsed / 1e9,
                "peak_rss_mb": {w: base_peaks[w] / 1e6 for w in base_peaks},
            }
        if args.check:
            import fastloss as fl

            x, t = (a.compute() for a in random_problem(args))
            expected = fl.cross_entropy(x, t, **options)
            np.testing.assert_allclose(value, expected, rtol=1e-5)
            report["checked_against_in_memory"] = True
    return report


def format_report(report: dict) -> str:
    lines = [
        f"fastloss.dask.cross_entropy, {report['rows']} x {report['classes']} float32 "
        f"({report['logits_gb']:.1f} GB of logits, generated chunk by chunk), chunks "
        f"{report['chunks'][0]} x {report['chunks'][1]} ({report['chunk_count']} chunks of "
        f"{report['chunk_mb']:.0f} MB), {report['workers']} worker processes x "
        f"{report['threads_per_worker']} thread",
        f"  time        {report['seconds']:.2f} s",
        f"  throughput  {report['elements_per_second'] / 1e9:.3f} G elements/s, "
        f"{report['gb_per_second']:.2f} GB/s",
    ]
    for worker, peak in sorted(report["peak_rss_mb"].items()):
        before = report["baseline_rss_mb"][worker]
        lines.append(f"  peak RSS    {peak:.0f} MB (before the run {before:.0f} MB)  {worker}")
    if "baseline" in report:
        base = report["baseline"]
        lines.append(
            f"  baseline    {base['seconds']:.2f} s, {base['gb_per_second']:.2f} GB/s "
            f"({base['what']})"
        )
    if report.get("loss") is not None:
        lines.append(f"  loss        {report['loss']:.6f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = run(args)
    print(format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
