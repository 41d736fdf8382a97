"""The shared-limit benchmark runs end to end and reports its figures (no rate is asserted).

Excluded from the default run; run it with ``python -m pytest benchmarks -m benchmark``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.bench_shared_limit import PER_PROCESS, SHARED, main


@pytest.mark.benchmark
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_shared_limit_benchmark_reports_both_phases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shared.json"
    argv = ["--processes", "2", "--rate", "20", "--seconds", "2.5", "--quiet"]
    assert main([*argv, "--json", str(out)]) == 0

    written = json.loads(out.read_text(encoding="utf-8"))
    phases = {phase["phase"]: phase for phase in written["phases"]}
    assert set(phases) == {SHARED, PER_PROCESS}
    for phase in phases.values():
        assert phase["ideal_rate"] == 20
        assert len(phase["per_process"]) == 2
        assert phase["steady_rate"] > 0
        assert phase["ratio"] == pytest.approx(phase["steady_rate"] / 20)
    assert phases[SHARED]["caller_errors"] == {}
    assert written["environment"]["redis-server"] != "not installed"

    table = capsys.readouterr().out
    for text in (SHARED, PER_PROCESS, "steady/s", "429s"):
        assert text in table
