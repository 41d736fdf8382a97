"""The slot benchmark runs end to end and reports its figures (no lateness is asserted).

Excluded from the default run; run it with ``python -m pytest benchmarks -m benchmark``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.bench_redis_slots import main


@pytest.mark.benchmark
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_slots_benchmark_reports_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "slots.json"
    argv = ["--processes", "2", "--senders", "2", "--calls", "3", "--json", str(out)]
    assert main(argv) == 0

    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["sends"] == 12
    for key in ("mean", "sd", "p5", "median", "p95", "max"):
        assert key in written["late_ms"]
    assert written["environment"]["redis-server"] != "not installed"
    assert "let out after the slot" in capsys.readouterr().out
