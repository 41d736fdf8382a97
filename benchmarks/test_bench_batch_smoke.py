"""The batch benchmark runs end to end and reports its figures (no timing is asserted).

Excluded from the default run; run it with ``python -m pytest benchmarks -m benchmark``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.bench_batch import (
    SCENARIO_ADAPTIVE,
    SCENARIO_OFFICIAL,
    SCENARIO_RATE_LIMIT,
    format_table,
    main,
    run_benchmark,
)


@pytest.mark.benchmark
def test_batch_benchmark_reports_every_scenario_and_peak_rss() -> None:
    photos = 8
    # Two shapes of the zoo: the smoke test checks the plumbing, not the limiter.
    result = run_benchmark(
        photos=photos,
        rps=20.0,
        latency=0.05,
        concurrency=4,
        shapes=["bucket", "changing"],
        rss_photos=6,
    )

    assert len(result.runs) == 6  # three scenarios on each of the two shapes
    runs = {run.scenario: run for run in result.runs}
    assert set(runs) == {SCENARIO_ADAPTIVE, SCENARIO_RATE_LIMIT, SCENARIO_OFFICIAL}
    for name in (SCENARIO_ADAPTIVE, SCENARIO_RATE_LIMIT):
        run = runs[name]
        assert run.succeeded + sum(run.failures.values()) == photos
        assert run.wall_seconds > 0
        assert run.client_stats is not None
        assert run.timeline
    official = runs[SCENARIO_OFFICIAL]
    assert official.unavailable or official.succeeded + sum(official.failures.values()) == photos
    assert result.rss is not None
    assert result.rss.succeeded == 6
    assert result.rss.sent_bytes >= 6 * 2**20
    assert result.rss.files_left_behind == 0
    assert 0 < result.rss.baseline_rss_mib <= result.rss.peak_rss_mib
    table = format_table(result)
    for text in ("no config", "rate_limit", "official SDK", "token bucket", "peak RSS"):
        assert text in table


@pytest.mark.benchmark
def test_batch_benchmark_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    argv = ["--photos", "4", "--rps", "20", "--latency", "0", "--concurrency", "2"]
    argv += ["--shapes", "sliding", "--scenarios", "A", "--skip-rss", "--quiet", "--json", str(out)]
    code = main(argv)

    assert code == 0  # no --check: the figures never decide the exit status
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["photos"] == 4
    assert written["rss"] is None
    (run,) = written["runs"]
    assert run["scenario"] == SCENARIO_ADAPTIVE
    assert run["shape"] == "sliding window 1 s"
    assert run["timeline"][-1]["pace"] > 0  # the pace is sampled (the plot reads it)
    assert run["ratio"] > 0
    assert "rate_limited" in run["client_stats"]
    # The latest-run page reads the file: when it ran, and the shape's row.
    assert written["run"]["finished"] >= written["run"]["started"]
    page = report.render({report.kind_of(written): written})
    assert "| sliding window 1 s | 0.2 |" in page
