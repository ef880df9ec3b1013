"""Smoke test of ``benchmarks/dask_cross_entropy.py``: the script runs end to end, at a small
size, on a real LocalCluster with worker processes, and its loss equals the in-memory one."""

from __future__ import annotations

import os

import pytest

if os.environ.get("FASTLOSS_REQUIRE_DASK", "").strip() != "1":
    pytest.importorskip("distributed", reason="dask.distributed is not installed (the dask "
                        "extra); set FASTLOSS_REQUIRE_DASK=1 to make this a failure")

import dask_cross_entropy  # noqa: E402


@pytest.mark.slow
def test_script_runs_on_a_local_cluster(tmp_path, capsys):
    report = dask_cross_entropy.main([
        "--rows", "600", "--classes", "1000", "--row-chunk", "256", "--class-chunk", "300",
        "--workers", "2", "--label-smoothing", "0.1", "--baseline", "--check",
        "--timeout", "240", "--json", str(tmp_path / "report.json"),
    ])
    assert report["checked_against_in_memory"]
    assert report["chunk_count"] == 3 * 4
    assert len(report["peak_rss_mb"]) == 2
    assert all(peak > 0 for peak in report["peak_rss_mb"].values())
    assert report["gb_per_second"] > 0 and report["baseline"]["seconds"] > 0
    assert "peak RSS" in capsys.readouterr().out
    assert (tmp_path / "report.json").exists()
