"""Turn pytest-benchmark JSON into the README's markdown tables.

    python -m pytest benchmarks --benchmark-enable --benchmark-json=results.json
    python benchmarks/report.py results.json > table.md

One row per benchmark group (``"<function>|<shape>|<dtype>"``): the time of every
implementation, fastloss's GB/s and G elements/s, the ratios "fastloss vs numpy" and
"fastloss vs torch" (time of the other / time of fastloss: 1.00x = equal, higher = fastloss
faster) and "% of roofline" (fastloss's GB/s over the bandwidth probe's, measured in the same
group). Groups from ``test_threshold.py`` get a second table, serial vs parallel twin, with the
measured crossover next to ``PARALLEL_MIN_ELEMENTS``. A footer gives the machine, versions,
date and the exact command.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys

# Column order; implementations not listed here follow in order of appearance.
IMPLEMENTATIONS = (
    "fastloss",
    "fastloss-fused",
    "numpy",
    "torch",
    "scipy",
    "roofline-read",
    "roofline-rw",
)
ROOFLINES = ("roofline-read", "roofline-rw")


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


def render(
    data: dict, stat: str = "min", report_command: str = "python benchmarks/report.py"
) -> str:
    groups = load_groups(data, stat)
    lines: list[str] = []
    throughput = [g for g in groups if g.table != "threshold"]
    threshold = [g for g in groups if g.table == "threshold"]
    if throughput:
        lines += throughput_table(throughput) + [""]
    if threshold:
        lines += ["Serial vs parallel twin (the `PARALLEL_MIN_ELEMENTS` evidence):", ""]
        lines += threshold_table(threshold) + [""]
    if not groups:
        lines += ["No benchmarks in this file (was it written with --benchmark-enable?).", ""]
    lines += footer(data, stat, report_command)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="a file written by pytest --benchmark-json=FILE")
    parser.add_argument("--stat", default="min", choices=("min", "median", "mean"))
    args = parser.parse_args(argv)
    with open(args.json, encoding="utf-8") as f:
        data = json.load(f)
    command = "python benchmarks/report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sys.stdout.write(render(data, args.stat, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
