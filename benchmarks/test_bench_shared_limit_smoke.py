"""The shared-limit benchmark runs end to end and reports its figures (no rate is asserted).

Excluded from the default run; run it with ``python -m pytest benchmarks -m benchmark``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.bench_shared_limit import DEFAULT_PHASES, PHASES, main


@pytest.mark.benchmark
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_shared_limit_benchmark_reports_every_phase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shared.json"
    argv = ["--processes", "2", "--rate", "20", "--calls", "10", "--shapes", "sliding", "--quiet"]
    assert main([*argv, "--json", str(out)]) == 0  # no --check: figures never decide

    written = json.loads(out.read_text(encoding="utf-8"))
    phases = {phase["phase"]: phase for phase in written["phases"]}
    assert set(phases) == {PHASES[key].label for key in DEFAULT_PHASES}
    for phase in phases.values():
        assert phase["rate"] == 20
        assert len(phase["per_process"]) == 2
        assert phase["calls"] == 20
        assert phase["wall_seconds"] > 0
        assert phase["ratio"] == pytest.approx(phase["wall_seconds"] / phase["ideal_seconds"])
    assert phases["shared, told 1.5x"]["told_rate"] == 30
    assert phases["shared, told the limit"]["caller_errors"] == {}
    assert written["environment"]["redis-server"] != "not installed"
    page = report.render({report.kind_of(written): written})  # the latest-run page reads it
    assert "| sliding | shared, told the limit | 20 |" in page

    table = capsys.readouterr().out
    for text in ("shared, told the limit", "per-process limit", "x ideal", "429s"):
        assert text in table
