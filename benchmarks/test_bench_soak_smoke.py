"""Smoke test of the soak benchmark: it runs and reports its figures (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_soak


@pytest.mark.benchmark
def test_soak_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    assert bench_soak.main(["--calls", "200", "--concurrency", "16", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["calls"] == 200
    assert sum(results["outcomes"].values()) == 200
    assert results["rss_mb_samples"]
    for key in ("throughput_per_s", "p50_ms", "p99_ms", "rss_flat"):
        assert key in results
