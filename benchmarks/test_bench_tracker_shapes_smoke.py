"""The tracker benchmark's task-duration table runs end to end (no timing is asserted).

Excluded from the default run; run it with ``python -m pytest benchmarks -m benchmark``.
(Shaped like ``test_bench_tracker_smoke.py`` on purpose, as every benchmark smoke test is;
it belongs in that file and can move there.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_tracker import main

TINY = [
    *("--shapes", "--shape-filter", "uniform 1-6 s", "--shape-tasks", "16"),
    *("--shape-learning", "6", "--rate", "40", "--quiet"),
]


@pytest.mark.benchmark
def test_tracker_shapes_table_reports_every_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shapes.json"
    code = main([*TINY, "--json", str(out)])

    assert code == 0  # no --check: the figures never decide the exit status
    rows = json.loads(out.read_text(encoding="utf-8"))["shapes"]
    assert [row["shape"] for row in rows] == ["uniform 1-6 s", "uniform 1-6 s, burst"]
    for row in rows:
        assert row["failed"] == 0
        assert row["tracker"]["tasks"] == row["fixed"]["tasks"] == 10
        assert row["tracker"]["mean_polls"] >= 1
        assert row["fixed"]["mean_lag"] > 0
        assert 0 <= row["max_wait"] <= 5.0
        assert isinstance(row["meets"], bool)
    table = capsys.readouterr().out
    for text in ("mean lag", "polls/task", "fixed 5 s", "ratio", "max wait", "uniform 1-6 s"):
        assert text in table
