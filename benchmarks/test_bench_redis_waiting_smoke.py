"""The waiting benchmark runs end to end and reports its figures (no rate is asserted).

Excluded from the default run; run it with ``python -m pytest benchmarks -m benchmark``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.bench_redis_waiting import main


@pytest.mark.benchmark
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_waiting_benchmark_reports_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "waiting.json"
    argv = ["--processes", "2", "--seconds", "0.5", "--rounds", "2", "--json", str(out)]
    assert main(argv) == 0

    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["processes"] == 2
    assert written["window"] == 2
    for key in ("commands_per_s", "exec_per_s", "write_commands_per_s"):
        assert written[key] >= 0
    assert written["own_release_to_slot_ms"]["rounds"] == 2
    assert written["environment"]["redis-server"] != "not installed"
    table = capsys.readouterr().out
    for text in ("Redis commands/s", "own release -> slot"):
        assert text in table
