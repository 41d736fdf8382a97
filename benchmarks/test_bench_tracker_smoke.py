"""The tracker benchmark runs end to end and reports its figures (no timing is asserted).

Excluded from the default run; run it with ``python -m pytest benchmarks -m benchmark``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.bench_tracker import FIXED, OFFICIAL, TRACKER, main

TINY = [
    *("--tasks", "24", "--rate", "40", "--duration", "0.2:0.6", "--learning", "8"),
    *("--interval", "0.5", "--scale-tasks", "200", "--window", "0.5", "--quiet"),
]


@pytest.mark.benchmark
def test_tracker_benchmark_reports_lag_polls_cpu_and_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tracker.json"
    code = main([*TINY, "--json", str(out)])

    assert code == 0  # no --check: the figures never decide the exit status
    written = json.loads(out.read_text(encoding="utf-8"))
    page = report.render({report.kind_of(written): written})  # the latest-run page reads it
    assert f"| {TRACKER} | 16 |" in page
    for name in (TRACKER, FIXED):
        side = written["sides"][name]
        assert side["unavailable"] is None
        assert side["failures"] == {}
        assert side["undetected"] == 0
        assert side["duplicate_submits"] == 0
        assert side["overall"]["tasks"] == 24
        assert side["steady"]["tasks"] == 16
        for figures in (side["overall"], side["steady"]):
            assert figures["mean_lag"] is not None
            assert figures["p95_lag"] >= figures["mean_lag"] >= 0
            assert figures["mean_polls"] >= 1
            assert figures["lag_error"] >= 0
    official = written["sides"][OFFICIAL]
    assert official["unavailable"] or official["overall"]["tasks"] == 24
    assert isinstance(written["meets_target"], bool)

    scale = written["scale"]
    assert scale["tasks"] == 200
    assert scale["closed_waiters"] == 200
    assert scale["traced_bytes_per_task"] > 0
    assert [w["regime"] for w in scale["windows"]] == ["fresh (5 s fallback)", "learned plan"]
    assert all(w["cpu_us_per_task_second"] >= 0 for w in scale["windows"])
    assert scale["learned_plan"]

    table = capsys.readouterr().out
    for text in (TRACKER, FIXED, "mean lag", "p95 lag", "polls", "memory per tracked task"):
        assert text in table


SHAPES_TINY = [
    *("--shapes", "--shape-filter", "uniform 1-6 s", "--shape-tasks", "16"),
    *("--shape-learning", "6", "--rate", "40", "--quiet", "--shape-draws", "1"),
]


@pytest.mark.benchmark
def test_tracker_shapes_table_reports_every_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shapes.json"
    code = main([*SHAPES_TINY, "--json", str(out)])

    assert code == 0  # no --check: the figures never decide the exit status
    written = json.loads(out.read_text(encoding="utf-8"))
    rows = written["shapes"]
    page = report.render({report.kind_of(written): written})  # the latest-run page reads it
    assert "| uniform 1-6 s, burst |" in page
    assert [row["shape"] for row in rows] == ["uniform 1-6 s", "uniform 1-6 s, burst"]
    for row in rows:
        assert row["failed"] == 0
        assert row["tracker"]["tasks"] == row["fixed"]["tasks"] == 10
        assert row["tracker"]["mean_polls"] >= 1
        assert row["fixed"]["mean_lag"] > 0
        assert 0 <= row["max_wait"] <= 5.0
        assert isinstance(row["meets"], bool)
        assert [draw["seed"] for draw in row["draws"]] == [0]
        assert row["lag_error"] is None  # one draw: no spread
        assert row["polls_error"] is None
    table = capsys.readouterr().out
    for text in ("mean lag", "polls/task", "fixed 5 s", "ratio", "max wait", "uniform 1-6 s"):
        assert text in table
    assert "1 draw of 16 tasks (seed 0)" in table
    assert "±" not in table


@pytest.mark.benchmark
def test_tracker_shapes_pool_their_draws(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shapes.json"
    code = main(
        [
            *("--shapes", "--shape-filter", "burst", "--shape-tasks", "16"),
            *("--shape-learning", "6", "--rate", "40", "--quiet"),
            *("--shape-draws", "2", "--seed", "5", "--lane-seed", "11", "--json", str(out)),
        ]
    )

    assert code == 0
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["draws"] == 2
    (row,) = written["shapes"]
    draws = row["draws"]
    # Each draw has its own seeds: other arrivals, other durations, other lanes.
    assert [(draw["seed"], draw["lane_seed"]) for draw in draws] == [(5, 11), (6, 12)]
    assert [draw["tasks"] for draw in draws] == [10, 10]
    assert row["tracker"]["tasks"] == row["fixed"]["tasks"] == 20
    # The row pools the draws' tasks: each draw weighs by its tasks.
    weighted = sum(d["tasks"] * d["mean_polls"] for d in draws) / sum(d["tasks"] for d in draws)
    assert row["tracker"]["mean_polls"] == pytest.approx(weighted)
    lag = sum(d["tasks"] * d["mean_lag"] for d in draws) / sum(d["tasks"] for d in draws)
    assert row["tracker"]["mean_lag"] == pytest.approx(lag)
    assert row["max_wait"] == max(d["max_wait"] for d in draws)
    assert row["lag_error"] is not None
    assert row["polls_error"] is not None
    page = report.render({report.kind_of(written): written})
    assert "2 draws of 16 tasks each per shape (seeds 5-6)" in page
    assert f"{draws[0]['mean_polls']:.2f}/{draws[0]['mean_lag']:.2f} · " in page
    table = capsys.readouterr().out
    assert "2 draws of 16 tasks each (seeds 5..6, lanes 11..12)" in table
    assert f"{row['tracker']['mean_polls']:.2f} ± {row['polls_error']:.2f}" in table
