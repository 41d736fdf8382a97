"""The overhead benchmark runs end to end and produces numbers (no timing is asserted).

Excluded from the default run; run it with ``python -m pytest benchmarks -m benchmark``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_overhead import OFFICIAL, RAW, SDK, format_table, main, run_benchmark


@pytest.mark.benchmark
def test_overhead_benchmark_reports_cpu_per_request_for_raw_and_sdk() -> None:
    n, warmup = 20, 5
    result = run_benchmark(n=n, concurrency=4, repeat=1, warmup=warmup)

    for name in (RAW, SDK):
        report = result.reports[name]
        assert report.unavailable is None
        assert (report.cpu_ms_per_request or 0) > 0
        assert (report.requests_per_second or 0) > 0
    assert (result.ratio(SDK) or 0) > 0
    # The official SDK either ran or says why not; either way every call it made succeeded.
    official = result.reports[OFFICIAL]
    assert official.samples or official.unavailable
    clients_run = sum(1 for report in result.reports.values() if report.samples)
    assert result.requests_served == clients_run * (n + warmup)
    assert result.requests_rejected == 0
    table = format_table(result)
    assert all(text in table for text in (RAW, SDK, "vs raw"))


@pytest.mark.benchmark
def test_overhead_benchmark_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    code = main(["--n", "10", "--repeat", "1", "--warmup", "2", "--quiet", "--json", str(out)])

    assert code == 0  # no --check: the ratio never decides the exit status
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["n"] == 10
    assert written["clients"][RAW]["cpu_ms_per_request"] > 0
    assert written["clients"][SDK]["ratio_vs_raw"] > 0
