"""benchmarks/report.py on a tiny synthetic pytest-benchmark JSON document."""

from __future__ import annotations

import json
import os

import pytest
import report


def _bench(group, impl, seconds, **info):
    return {
        "group": group,
        "name": f"test_benchmark[{group}-{impl}]",
        "stats": {"min": seconds, "median": 2 * seconds, "mean": 3 * seconds},
        "extra_info": {"implementation": impl, **info},
    }


def _throughput(group, impl, seconds, nbytes, roofline="roofline-read"):
    info = {"table": "throughput", "bytes": nbytes, "elements": 1000, "roofline": roofline}
    return _bench(group, impl, seconds, **info)


def _threshold(elements, twin, seconds):
    info = {
        "table": "threshold",
        "function": "lse_rows",
        "elements": elements,
        "classes": 128,
        "dtype": "float32",
        "parallel_min_elements": 32768,
    }
    return _bench(f"lse_rows|{elements}|C=128|float32", twin, seconds, **info)


@pytest.fixture
def document():
    group = "logsumexp|1000x1|float32"
    backward = "cross_entropy_backward|10x100|float64"
    return {
        "datetime": "2026-01-02T03:04:05+00:00",
        "fastloss_command": "python -m pytest benchmarks --benchmark-enable",
        "machine_info": {
            "python_version": "3.11.7",
            "fastloss": {
                "cpu_model": "Test CPU 9000",
                "cores": 2,
                "numba_threads": 2,
                "threading_layer": "omp",
                "versions": {
                    "python": "3.11.7",
                    "numpy": "2.4.6",
                    "numba": "0.68.1",
                    "torch": None,
                },
            },
        },
        "benchmarks": [
            # fastloss moves 4e9 bytes in 0.1 s = 40 GB/s; the read probe 4e9 in 0.08 s = 50.
            _throughput(group, "fastloss", 0.1, 4_000_000_000),
            _throughput(group, "numpy", 1.0, 4_000_000_000),
            _throughput(group, "torch", 0.5, 4_000_000_000),
            _throughput(group, "roofline-read", 0.08, 4_000_000_000),
            _throughput(group, "roofline-rw", 0.2, 8_000_000_000),
            _throughput(backward, "fastloss", 0.002, 1_000_000, "roofline-rw"),
            _throughput(backward, "fastloss-fused", 0.001, 1_000_000, "roofline-rw"),
            _throughput(backward, "numpy", 0.02, 1_000_000, "roofline-rw"),
            _throughput(backward, "torch", 0.004, 1_000_000, "roofline-rw"),
            _threshold(1024, "serial", 2e-6),
            _threshold(1024, "parallel", 4e-6),
            _threshold(65536, "serial", 100e-6),
            _threshold(65536, "parallel", 60e-6),
        ],
    }


def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_throughput_row_has_times_rates_and_ratios(document):
    text = report.render(document)
    header = _row(text, "| function")
    row = dict(zip(header, _row(text, "| logsumexp |"), strict=True))
    assert row["shape"] == "1000x1" and row["dtype"] == "float32"
    assert row["fastloss"] == "100 ms" and row["numpy"] == "1 s" and row["torch"] == "500 ms"
    assert row["fastloss GB/s"] == "40.0"
    assert row["fastloss vs numpy"] == "10.00x"
    assert row["fastloss vs torch"] == "5.00x"
    assert row["% of roofline"] == "80%"  # 40 GB/s of the read probe's 50
    assert row["fastloss-fused"] == "—"  # no fused implementation in this group


def test_fused_and_read_write_roofline(document):
    text = report.render(document)
    header = _row(text, "| function")
    row = dict(zip(header, _row(text, "| cross_entropy_backward |"), strict=True))
    assert row["fused vs torch"] == "4.00x"
    assert row["fastloss vs torch"] == "2.00x"
    assert row["% of roofline"] == "—"  # no probe was timed in this group


def test_threshold_table_and_crossover(document):
    text = report.render(document)
    assert _row(text, "| lse_rows | 1024 |")[-1] == "0.50x"
    assert _row(text, "| lse_rows | 65536 |")[-1] == "1.67x"
    assert "C=128, float32: the parallel twin is not slower (within 5%) from 65536" in text
    assert "`PARALLEL_MIN_ELEMENTS` = 32768" in text


def test_footer_names_machine_versions_date_and_command(document):
    text = report.render(document)
    assert "Test CPU 9000, 2 cores" in text
    assert "numba 0.68.1" in text and "torch" not in text.split("Versions:")[1].split("\n")[0]
    assert "2026-01-02 03:04 UTC" in text
    assert "`python -m pytest benchmarks --benchmark-enable`" in text


def test_stat_choice_and_main(document, tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document))
    assert report.main([str(path), "--stat", "median"]) == 0
    out = capsys.readouterr().out
    assert "Times are the median" in out
    assert _row(out, "| logsumexp |")[3] == "200 ms"
    assert f"python benchmarks/report.py {path} --stat median" in out


def test_empty_document_says_so():
    assert "No benchmarks in this file" in report.render({"benchmarks": []})


def test_format_time_units():
    assert report.format_time(2.5) == "2.5 s"
    assert report.format_time(0.0123) == "12.3 ms"
    assert report.format_time(4.56e-6) == "4.56 µs"
    assert report.format_time(7e-9) == "7 ns"
    assert report.format_time(None) == "—"


def test_concurrency_table_gives_the_throughput_ratio(document):
    info = {"table": "concurrency", "threading_layer": "omp"}
    document["benchmarks"] += [
        _bench("runtime|8 threads x 24 calls", "serial", 0.3, **info),
        _bench("runtime|8 threads x 24 calls", "concurrent", 0.2, **info),
    ]
    text = report.render(document)
    assert _row(text, "| runtime, 8 threads x 24 calls |") == [
        "runtime, 8 threads x 24 calls", "omp", "300 ms", "200 ms", "1.50x",
    ]  # fmt: skip
    assert "runtime" not in text.split("Serial vs parallel")[0]  # not a throughput row


# ---------------------------------------------------------------------------------------------
# Groups without a fastloss column, and the plots


def _other_groups():
    return [
        _bench("torch-bridge-loss|4096x32000|float32", "fastloss.torch", 0.25),
        _bench("torch-bridge-loss|4096x32000|float32", "torch", 1.0),
    ]


def test_groups_without_fastloss_get_their_own_table(document):
    document["benchmarks"] += _other_groups()
    text = report.render(document)
    assert "fastloss.torch" not in _row(text, "| function")  # no column in the main table
    rows = [line for line in text.splitlines() if line.startswith("| torch-bridge-loss")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in rows]
    assert cells == [
        ["torch-bridge-loss, 4096x32000, float32", "fastloss.torch", "250 ms", "—", "1.00x"],
        ["torch-bridge-loss, 4096x32000, float32", "torch", "1 s", "—", "4.00x"],
    ]


def _sized_document():
    """logsumexp at two sizes (1000 and 100000 elements), with both roofline probes."""
    benchmarks = []
    for elements, scale in ((1000, 1.0), (100_000, 50.0)):
        group = f"logsumexp|{elements // 10}x10|float32"
        for impl, seconds in (("fastloss", 1e-3), ("numpy", 4e-3), ("torch", 2e-3)):
            info = {"table": "throughput", "bytes": 4 * elements, "elements": elements}
            info["roofline"] = "roofline-read"
            benchmarks.append(_bench(group, impl, seconds * scale, **info))
        for probe, nbytes in (("roofline-read", 4 * elements), ("roofline-rw", 8 * elements)):
            info = {"table": "throughput", "bytes": nbytes, "elements": elements}
            benchmarks.append(_bench(group, probe, 5e-4 * scale, **info))
    benchmarks += _other_groups()
    return {"benchmarks": benchmarks}


def test_throughput_series_by_function_dtype_and_size():
    series = report.throughput_series(report.load_groups(_sized_document()))
    assert list(series) == [("logsumexp", "float32")]  # the torch-bridge group has no bytes
    by_impl = series[("logsumexp", "float32")]
    assert set(by_impl) == {"fastloss", "numpy", "torch", "roofline-read", "roofline-rw"}
    fast = by_impl["fastloss"]
    assert [(p.elements, p.shape) for p in fast] == [(1000, "100x10"), (100_000, "10000x10")]
    assert fast[0].gbps == pytest.approx(4000 / 1e-3 / 1e9)
    assert by_impl["roofline-rw"][1].gbps == pytest.approx(800_000 / 5e-4 / 50 / 1e9)


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.environ.get("FASTLOSS_REQUIRE_MATPLOTLIB") == "1":
            pytest.fail("FASTLOSS_REQUIRE_MATPLOTLIB=1 but matplotlib is not importable")
        pytest.skip("matplotlib is not installed (pip install -e '.[docs]')")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written_one_per_function_and_dtype(tmp_path):
    _require_matplotlib()
    groups = report.partition(report.load_groups(_sized_document()))["throughput"]
    paths = report.write_plots(groups, tmp_path / "plots")
    assert paths == [tmp_path / "plots" / "throughput-logsumexp-float32.png"]
    data = paths[0].read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_main_writes_markdown_with_linked_plots(tmp_path, capsys):
    _require_matplotlib()
    source = tmp_path / "results.json"
    source.write_text(json.dumps(_sized_document()))
    markdown = tmp_path / "docs" / "results.md"
    argv = [str(source), "--markdown", str(markdown), "--plots", str(tmp_path / "plots")]
    assert report.main(argv) == 0
    assert capsys.readouterr().out == ""  # everything went to the file
    text = markdown.read_text()
    assert text.startswith("<!-- Generated by benchmarks/report.py")
    assert "![logsumexp, float32](../plots/throughput-logsumexp-float32.png)" in text
    assert _row(text, "| logsumexp | 100x10 |")[:3] == ["logsumexp", "100x10", "float32"]
    assert (tmp_path / "plots" / "throughput-logsumexp-float32.png").stat().st_size > 0


def test_markdown_file_without_plots(tmp_path, document):
    source = tmp_path / "results.json"
    source.write_text(json.dumps(document))
    markdown = tmp_path / "table.md"
    assert report.main([str(source), "--markdown", str(markdown)]) == 0
    text = markdown.read_text()
    assert "| logsumexp | 1000x1 | float32 |" in text and "![" not in text


def test_strip_data_keeps_the_summary_statistics(tmp_path, document):
    for bench in document["benchmarks"]:
        bench["stats"]["data"] = [bench["stats"]["min"]] * 1000
    source = tmp_path / "results.json"
    source.write_text(json.dumps(document))
    before = report.render(json.loads(source.read_text()))
    assert report.main([str(source), "--strip-data", "--markdown", str(tmp_path / "t.md")]) == 0
    stripped = json.loads(source.read_text())
    assert all("data" not in bench["stats"] for bench in stripped["benchmarks"])
    assert report.render(stripped) == before
