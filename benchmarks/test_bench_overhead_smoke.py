"""The overhead benchmark runs end to end and produces numbers (no timing is asserted).

Excluded from the default run; run it with ``python -m pytest benchmarks -m benchmark``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_overhead import (
    OFFICIAL,
    RAW,
    SDK,
    Cell,
    CellResult,
    WireMismatchError,
    _check_wire,
    format_table,
    main,
    make_image,
    markdown_table,
    run_benchmark,
)


@pytest.mark.benchmark
def test_overhead_matrix_reports_cpu_per_call_for_raw_and_sdk_in_every_cell() -> None:
    result = run_benchmark(
        sizes=("20kB", "170kB"),
        concurrencies=(1, 16),
        calls=8,
        repeat=1,
        poll_tasks=10,
        poll_window=1.0,
    )

    assert len(result.cells) == 2 * 2 * 2 * 2  # sizes x concurrency x inputs x degrees
    for cell in result.cells:
        assert (cell.cpu_ms(RAW) or 0) > 0
        assert (cell.cpu_ms(SDK) or 0) > 0
        assert (cell.ratio() or 0) > 0
        # The wire check ran: both clients sent one request shape, the same.
        assert cell.shapes[RAW] == cell.shapes[SDK]
        [shape] = cell.shapes[SDK]
        assert ("retouch_degree=0.6" in shape) is (cell.cell.degrees == "given")
    official = [cell for cell in result.cells if OFFICIAL in cell.samples or cell.unavailable]
    assert official  # the official SDK ran on its subset, or says why not
    assert [polls.start for polls in result.polls] == ["spread", "together"]
    assert all((polls.ratio() or 0) > 0 for polls in result.polls)
    assert result.requests_rejected == 0
    table = format_table(result)
    assert all(text in table for text in ("sdk/raw", "polling", "wire check"))
    assert markdown_table(result).count("\n") == len(result.cells) + 1


@pytest.mark.benchmark
def test_different_requests_fail_the_wire_check() -> None:
    result = CellResult(Cell("20kB", 1, "bytes", "none"), 1)
    result.shapes = {RAW: ["POST a | image"], SDK: ["POST a | image"]}
    _check_wire(result)
    result.shapes[SDK] = ["POST a | retouch_degree=1.0 | image"]
    with pytest.raises(WireMismatchError, match="different requests"):
        _check_wire(result)


@pytest.mark.benchmark
def test_images_have_the_exact_size_and_a_png_header() -> None:
    for size in (20_000, 2_000_000):
        image = make_image(size)
        assert len(image) == size
        assert image.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.benchmark
def test_overhead_benchmark_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    quick_cells = ["--quick", "--sizes", "20kB", "--concurrency", "1", "--calls", "4"]
    code = main([*quick_cells, "--poll-tasks", "0", "--quiet", "--json", str(out)])

    assert code == 0  # no --check: the ratios never decide the exit status
    written = json.loads(out.read_text(encoding="utf-8"))
    assert len(written["cells"]) == 4
    assert written["cells"][0]["cpu_ms_per_call"][RAW] > 0
    assert written["cells"][0]["ratio_vs_raw"][SDK] > 0
    assert written["polling"] == []


@pytest.mark.benchmark
def test_telemetry_option_reports_each_way_of_observing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "telemetry.json"
    options = ["--telemetry", "--calls", "4", "--repeat", "1", "--quiet", "--json", str(out)]
    assert main(options) == 0
    table = capsys.readouterr().out
    assert "sdk + no-op hook" in table
    assert "sdk + OpenTelemetry" in table
    written = json.loads(out.read_text(encoding="utf-8"))
    assert len(written["cells"]) == 4
    for cell in written["cells"]:
        assert all(ms > 0 for ms in cell["cpu_ms_per_call"].values())
        assert len(cell["cpu_ms_per_call"]) == 4
