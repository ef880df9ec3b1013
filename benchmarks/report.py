"""Turn pytest-benchmark JSON into markdown tables and PNG plots (the README's and the docs').

    python -m pytest benchmarks --benchmark-enable --benchmark-json=results.json
    python benchmarks/report.py results.json > table.md
    python benchmarks/report.py results.json --markdown docs/bench/results.md --plots docs/bench

``--markdown FILE`` writes the tables to FILE instead of stdout. ``--plots DIR`` also draws,
per function and dtype, the throughput (GB/s) against the problem size of every
implementation with the memory-bandwidth roofline measured in the same run (needs matplotlib:
``pip install -e ".[docs]"``), and links the plots from the markdown. ``--strip-data``
rewrites the JSON without its per-round timings, most of its size, before committing it.

One row per benchmark group (``"<function>|<shape>|<dtype>"``): the time of every
implementation, fastloss's GB/s and G elements/s, the ratios "fastloss vs numpy" and
"fastloss vs torch" (time of the other / time of fastloss: 1.00x = equal, higher = fastloss
faster) and "% of roofline" (fastloss's GB/s over the bandwidth probe's, measured in the same
group). Groups from ``test_threshold.py`` get a second table, serial vs parallel twin, with the
measured crossover next to ``PARALLEL_MIN_ELEMENTS``; groups from ``test_bench_runtime.py`` a
third, 8 Python threads against one. Groups without a ``fastloss`` implementation (the
fastloss.torch bridge, the cost of cross-entropy's extras) are listed one implementation per row,
against the group's fastest. A footer gives the machine, versions, date and the exact command.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path

# Column order; implementations not listed here follow in order of appearance.
IMPLEMENTATIONS = (
    "fastloss",
    "fastloss-fused",
    "numpy",
    "torch",
    "scipy",
    "roofline-read",
    "roofline-rw",
    "roofline-rw-fresh",
)
ROOFLINES = ("roofline-read", "roofline-rw", "roofline-rw-fresh")


@dataclasses.dataclass
class Group:
    name: str
    table: str
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    info: dict[str, dict] = dataclasses.field(default_factory=dict)

    def gbps(self, impl: str) -> float | None:
        if impl not in self.seconds or "bytes" not in self.info[impl]:
            return None
        return self.info[impl]["bytes"] / self.seconds[impl] / 1e9

    def ratio(self, other: str, impl: str = "fastloss") -> float | None:
        """time(other) / time(impl): above 1 means ``impl`` is faster."""
        if other not in self.seconds or impl not in self.seconds:
            return None
        return self.seconds[other] / self.seconds[impl]


def load_groups(data: dict, stat: str = "min") -> list[Group]:
    """The benchmarks of a pytest-benchmark JSON document, by group, in file order."""
    groups: dict[str, Group] = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        name = bench.get("group") or bench["name"]
        group = groups.setdefault(name, Group(name, info.get("table", "throughput")))
        impl = info.get("implementation", bench["name"])
        group.seconds[impl] = bench["stats"][stat]
        group.info[impl] = info
    return list(groups.values())


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def format_number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _markdown(header: list[str], rows: list[list[str]], text_columns: int = 3) -> list[str]:
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _implementations(groups: list[Group]) -> list[str]:
    seen = [impl for impl in IMPLEMENTATIONS if any(impl in g.seconds for g in groups)]
    for group in groups:
        seen += [impl for impl in group.seconds if impl not in seen]
    return seen


def _split_name(name: str) -> list[str]:
    parts = name.split("|")
    return parts if len(parts) == 3 else [name, "", ""]


def roofline_percent(group: Group) -> float | None:
    """fastloss's GB/s as a percentage of its bounding probe's GB/s (same group)."""
    fast = group.gbps("fastloss")
    if fast is None:
        return None
    preferred = group.info["fastloss"].get("roofline", "roofline-read")
    for probe in (preferred, *ROOFLINES):
        ceiling = group.gbps(probe)
        if ceiling:
            return 100 * fast / ceiling
    return None


def throughput_table(groups: list[Group]) -> list[str]:
    impls = _implementations(groups)
    header = ["function", "shape", "dtype", *impls, "fastloss GB/s", "fastloss Gelem/s"]
    header += ["fastloss vs numpy", "fastloss vs torch"]
    fused = "fastloss-fused" in impls
    if fused:
        header.append("fused vs torch")
    header.append("% of roofline")
    rows = []
    for g in groups:
        elements = g.info.get("fastloss", {}).get("elements")
        fast = g.seconds.get("fastloss")
        row = _split_name(g.name) + [format_time(g.seconds.get(i)) for i in impls]
        row.append(format_number(g.gbps("fastloss")))
        row.append(format_number(elements / fast / 1e9 if elements and fast else None, 2))
        row += [format_ratio(g.ratio("numpy")), format_ratio(g.ratio("torch"))]
        if fused:
            row.append(format_ratio(g.ratio("torch", "fastloss-fused")))
        percent = roofline_percent(g)
        row.append("—" if percent is None else f"{percent:.0f}%")
        rows.append(row)
    return _markdown(header, rows)


# Within this fraction the twins tie: the VM's run-to-run noise is larger than that.
TIE = 0.05


def crossover(groups: list[Group]) -> int | None:
    """Smallest size from which the parallel twin is never slower (beyond ``TIE``)."""
    sizes = sorted(
        (g.info["serial"]["elements"], g.ratio("serial", "parallel"))
        for g in groups
        if "serial" in g.seconds and "parallel" in g.seconds
    )
    found = None
    for elements, speedup in reversed(sizes):
        if speedup < 1 - TIE:
            break
        found = elements
    return found


def threshold_table(groups: list[Group]) -> list[str]:
    header = ["kernel", "elements", "C", "dtype", "serial", "parallel", "parallel vs serial"]
    rows = []
    for g in groups:
        info = next(iter(g.info.values()))
        rows.append(
            [
                info.get("function", g.name),
                str(info.get("elements", "")),
                str(info.get("classes", "")),
                info.get("dtype", ""),
                format_time(g.seconds.get("serial")),
                format_time(g.seconds.get("parallel")),
                format_ratio(g.ratio("serial", "parallel")),
            ]
        )
    lines = _markdown(header, rows, text_columns=1)
    # The measured crossover per (C, dtype), next to the configured threshold.
    by_series: dict[tuple, list[Group]] = {}
    for g in groups:
        info = next(iter(g.info.values()))
        by_series.setdefault((info.get("classes"), info.get("dtype")), []).append(g)
    configured = next(iter(groups[0].info.values())).get("parallel_min_elements", "?")
    lines.append("")
    for (classes, dtype), series in by_series.items():
        found = crossover(series)
        where = f"from {found} elements on" if found else "at no measured size"
        lines.append(
            f"- C={classes}, {dtype}: the parallel twin is not slower (within {TIE:.0%}) {where}."
        )
    lines.append(f"- Configured `PARALLEL_MIN_ELEMENTS` = {configured}.")
    return lines


def concurrency_table(groups: list[Group]) -> list[str]:
    header = ["workload", "layer", "serial", "concurrent", "concurrent / serial throughput"]
    rows = [
        [
            g.name.replace("|", ", "),
            str(g.info.get("concurrent", {}).get("threading_layer", "?")),
            format_time(g.seconds.get("serial")),
            format_time(g.seconds.get("concurrent")),
            format_ratio(g.ratio("serial", "concurrent")),
        ]
        for g in groups
    ]
    return _markdown(header, rows, text_columns=2)


def other_table(groups: list[Group]) -> list[str]:
    """Groups without a ``fastloss`` column: one implementation per row, against the fastest."""
    header = ["group", "implementation", "time", "GB/s", "time / group's fastest"]
    rows = []
    for g in groups:
        fastest = min(g.seconds.values())
        for impl, seconds in g.seconds.items():
            rows.append(
                [
                    g.name.replace("|", ", "),
                    impl,
                    format_time(seconds),
                    format_number(g.gbps(impl)),
                    format_ratio(seconds / fastest),
                ]
            )
    return _markdown(header, rows, text_columns=2)


# ---------------------------------------------------------------------------------------------
# Plots: throughput against problem size, with the roofline


@dataclasses.dataclass(frozen=True)
class Point:
    elements: int
    shape: str
    gbps: float


def throughput_series(groups: list[Group]) -> dict[tuple[str, str], dict[str, list[Point]]]:
    """``{(function, dtype): {implementation: points sorted by size}}`` of the throughput groups.

    Only groups named ``"<function>|<shape>|<dtype>"`` whose implementations report ``bytes``
    and ``elements`` count; the roofline probes are series like the others.
    """
    series: dict[tuple[str, str], dict[str, list[Point]]] = {}
    for g in groups:
        function, shape, dtype = _split_name(g.name)
        if not shape:
            continue
        for impl in g.seconds:
            elements = g.info[impl].get("elements") or g.info.get("fastloss", {}).get("elements")
            gbps = g.gbps(impl)
            if gbps is None or not elements:
                continue
            points = series.setdefault((function, dtype), {}).setdefault(impl, [])
            points.append(Point(int(elements), shape, gbps))
    for by_impl in series.values():
        for points in by_impl.values():
            points.sort(key=lambda point: point.elements)
    return series


def plot_filename(function: str, dtype: str) -> str:
    return f"throughput-{function}-{dtype}.png"


def write_plots(groups: list[Group], directory: str | os.PathLike) -> list[Path]:
    """One PNG per (function, dtype) in ``directory``: GB/s against elements, log-log.

    Each implementation is a line with markers; the roofline probes are dashed grey lines,
    the one that bounds the function (its ``roofline`` field) darker. Needs matplotlib.
    """
    # Lazily: only --plots needs matplotlib. Figure without pyplot: no backend, no global state.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    series = throughput_series(groups)
    bounds = {
        (_split_name(g.name)[0], _split_name(g.name)[2]): g.info["fastloss"].get("roofline")
        for g in groups
        if "fastloss" in g.info
    }
    for (function, dtype), by_impl in series.items():
        fig = Figure(figsize=(7.0, 4.2), layout="constrained")
        ax = fig.add_subplot()
        for impl in _implementations_of(by_impl):
            points = by_impl[impl]
            x = [p.elements for p in points]
            y = [p.gbps for p in points]
            if impl in ROOFLINES:
                bound = impl == bounds.get((function, dtype))
                label = f"{impl} (memory bandwidth{', bound' if bound else ''})"
                ax.plot(x, y, linestyle="--", color="0.2" if bound else "0.65", label=label)
            else:
                ax.plot(x, y, marker="o", label=impl)
        ticks = sorted({(p.elements, p.shape) for points in by_impl.values() for p in points})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([e for e, _ in ticks], [s for _, s in ticks], rotation=30, ha="right")
        ax.minorticks_off()
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_xlabel("problem size (shape; log scale of elements)")
        ax.set_ylabel("GB/s moved (higher is faster)")
        ax.set_title(f"{function}, {dtype}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
        path = out / plot_filename(function, dtype)
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def _implementations_of(by_impl: dict[str, list[Point]]) -> list[str]:
    known = [impl for impl in IMPLEMENTATIONS if impl in by_impl]
    return known + [impl for impl in by_impl if impl not in known]


def plots_markdown(paths: list[Path], relative_to: str | os.PathLike) -> list[str]:
    """Markdown images of ``paths``, linked relative to the directory of the markdown."""
    lines = ["Throughput against problem size (log-log), with the roofline of the same run:", ""]
    for path in paths:
        link = Path(os.path.relpath(path, relative_to)).as_posix()
        title = path.stem.removeprefix("throughput-").replace("-", ", ")
        lines += [f"![{title}]({link})", ""]
    return lines


def footer(data: dict, stat: str, report_command: str) -> list[str]:
    machine = data.get("machine_info", {})
    extra = machine.get("fastloss", {})
    cpu = extra.get("cpu_model") or machine.get("cpu", {}).get("brand_raw") or "unknown CPU"
    cores = extra.get("cores") or machine.get("cpu", {}).get("count") or "?"
    versions = extra.get("versions", {"python": machine.get("python_version")})
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    date = data.get("datetime", "")
    try:
        date = datetime.datetime.fromisoformat(date).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        pass
    threads = extra.get("numba_threads", "?")
    layer = extra.get("threading_layer", "?")
    command = data.get("fastloss_command", "unknown (run through benchmarks/conftest.py)")
    return [
        f"Times are the {stat} over pytest-benchmark's rounds. Ratios are the other time over "
        "fastloss's: 1.00x = equal, higher = fastloss faster. GB/s counts the bytes the "
        "operation must move (its inputs and output); % of roofline divides it by the GB/s "
        "of the bandwidth probe (read, or read+write) timed in the same group.",
        "",
        f"- Machine: {cpu}, {cores} cores; Numba {threads} threads ({layer} layer), torch "
        "with as many threads.",
        f"- Versions: {shown}.",
        f"- Date: {date}.",
        f"- Command: `{command}`, then `{report_command}`.",
    ]


def partition(groups: list[Group]) -> dict[str, list[Group]]:
    """The groups of each table: throughput (with a ``fastloss`` column), other, threshold,
    concurrency."""
    tables: dict[str, list[Group]] = {
        "throughput": [], "other": [], "threshold": [], "concurrency": []
    }  # fmt: skip
    for g in groups:
        if g.table in ("threshold", "concurrency"):
            tables[g.table].append(g)
        else:
            tables["throughput" if "fastloss" in g.seconds else "other"].append(g)
    return tables


def render(
    data: dict,
    stat: str = "min",
    report_command: str = "python benchmarks/report.py",
    plots: list[str] | None = None,
) -> str:
    """The markdown report; ``plots`` are lines (see ``plots_markdown``) put after the tables."""
    groups = load_groups(data, stat)
    lines: list[str] = []
    tables = partition(groups)
    throughput, other = tables["throughput"], tables["other"]
    threshold, concurrency = tables["threshold"], tables["concurrency"]
    if throughput:
        lines += throughput_table(throughput) + [""]
    if other:
        lines += ["Other groups, each implementation against the group's fastest:", ""]
        lines += other_table(other) + [""]
    if threshold:
        lines += ["Serial vs parallel twin (the `PARALLEL_MIN_ELEMENTS` evidence):", ""]
        lines += threshold_table(threshold) + [""]
    if concurrency:
        lines += ["The same calls from 8 Python threads at once vs from one thread:", ""]
        lines += concurrency_table(concurrency) + [""]
    if not groups:
        lines += ["No benchmarks in this file (was it written with --benchmark-enable?).", ""]
    if plots:
        lines += plots
    lines += footer(data, stat, report_command)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="a file written by pytest --benchmark-json=FILE")
    parser.add_argument("--stat", default="min", choices=("min", "median", "mean"))
    parser.add_argument(
        "--markdown", metavar="FILE", help="write the markdown to FILE instead of stdout"
    )
    parser.add_argument(
        "--plots",
        metavar="DIR",
        help="also write PNG plots (throughput vs size, with the roofline) into DIR and link "
        "them from the markdown (needs matplotlib)",
    )
    parser.add_argument(
        "--strip-data",
        action="store_true",
        help="rewrite the JSON file in place without the per-round timings (stats.data), "
        "which make up most of its size; this report and pytest-benchmark compare read only "
        "the summary statistics",
    )
    args = parser.parse_args(argv)
    with open(args.json, encoding="utf-8") as f:
        data = json.load(f)
    if args.strip_data:
        for bench in data.get("benchmarks", []):
            bench.get("stats", {}).pop("data", None)
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    command = "python benchmarks/report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    plot_lines = None
    if args.plots is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error('--plots needs matplotlib: pip install -e ".[docs]"')
        paths = write_plots(partition(load_groups(data, args.stat))["throughput"], args.plots)
        markdown_dir = Path(args.markdown).parent if args.markdown else Path.cwd()
        plot_lines = plots_markdown(paths, markdown_dir) if paths else None
    text = render(data, args.stat, command.strip(), plot_lines)
    if args.markdown:
        header = (
            f"<!-- Generated by benchmarks/report.py from {args.json}; do not edit. "
            f"Regenerate with: {command.strip()} -->\n\n"
        )
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(header + text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
