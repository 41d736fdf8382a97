"""The batch report (``report.html``): what it says, that it escapes, stays small, keeps
secrets out, and the ``ailab-async report OUT`` command. The browser's view of it is in
``test_report_browser.py``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from ailab_async import AILabClient, PollingConfig
from ailab_async.batch import (
    BatchSpec,
    How,
    ManifestLine,
    Operation,
    _report,
    discover_inputs,
    run_batch,
)
from ailab_async.batch._report import (
    REPORT_NAME,
    THUMBS_DIR,
    TIMELINE_NAME,
    ItemTiming,
    Sample,
    ThumbnailMaker,
    Timeline,
    TimelineRecorder,
    build_report,
    detection_lag_bound,
    next_step,
    report_view,
)
from ailab_async.batch._report_page import PAGE_SIZE, render_page
from ailab_async.batch.journal import ItemState
from ailab_async.cli import main
from ailab_async.models import ClientStats, TrackerStats
from ailab_async.testing.simulator import (
    RateLimit,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)

HOSTILE_NAME = "<script>alert(1)</script>.png"


def line(
    relative: str = "a.jpg", state: ItemState = ItemState.DOWNLOADED, **fields: Any
) -> ManifestLine:
    fields.setdefault("input", relative)
    return ManifestLine(relative=relative, operation="smart-skin", params={}, state=state, **fields)


def page_data(page: str) -> dict[str, Any]:
    """The items block of a page, as the page's script reads it."""
    match = re.search(
        r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S
    )
    assert match is not None
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def write_manifest_lines(out: Path, lines: list[ManifestLine]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.jsonl").write_text("".join(entry.to_json() + "\n" for entry in lines))


# --------------------------------------------------------------------------- pure: the page


def test_names_and_server_text_cannot_inject_markup() -> None:
    hostile_message = "</script><script>alert(2)</script> & <img src=x onerror=alert(3)>"
    lines = [
        line(
            HOSTILE_NAME, ItemState.FAILED, error_code="<b>CODE</b>", error_message=hostile_message
        ),
        line("ok.jpg", output="ok_jpg.png"),
    ]
    page = render_page(report_view(lines, None, title="<i>title</i>"))
    # Only the page's own two script elements, whatever the names and messages held.
    assert page.count("<script") == 2
    assert "alert(" not in page.replace("alert(1)", "").replace("alert(2)", "").replace(
        "alert(3)", ""
    )
    assert "<img" not in page
    assert "<b>CODE</b>" not in page
    assert "<i>title</i>" not in page
    assert "&lt;b&gt;CODE&lt;/b&gt;" in page  # the errors-by-code table, escaped
    # The script reads back exactly what was written.
    data = page_data(page)
    assert data["items"][0]["n"] == HOSTILE_NAME
    assert data["items"][0]["m"] == hostile_message
    assert data["codes"] == ["<b>CODE</b>"]


def test_policy_allows_only_the_pages_own_script_and_style() -> None:
    page = render_page(report_view([line()], None))
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert policy is not None
    content = html.unescape(policy.group(1))
    directives = dict(d.strip().split(" ", 1) for d in content.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["img-src"] == "'self' file: data:"
    script = re.search(r"<script>(.*?)</script>", page, re.S)
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert script is not None
    assert style is not None
    for source, directive in ((script.group(1), "script-src"), (style.group(1), "style-src")):
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert directives[directive] == f"'sha256-{digest}'"
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_counts_codes_and_next_steps() -> None:
    lines = [
        line("done.jpg", output="done_jpg.png"),
        line("bad.jpg", ItemState.FAILED, error_code="ERROR_NO_FACE_IN_FILE", retryable=False),
        line("flaky.jpg", ItemState.FAILED, error_code="SERVER_ERROR", retryable=True),
        line("task.jpg", ItemState.SUBMITTED, error_code="TaskTimeoutError", task_id="t-1"),
    ]
    view = report_view(lines, None)
    assert [(key, value) for _, value, key in view.counts] == [
        ("total", 4),
        ("done", 1),
        ("failed", 2),
        ("unfinished", 1),
    ]
    assert list(view.errors_by_code) == [
        ("ERROR_NO_FACE_IN_FILE", 1),
        ("SERVER_ERROR", 1),
        ("TaskTimeoutError", 1),
    ]
    items, steps = view.data["items"], view.data["steps"]
    assert "x" not in items[0]
    assert "c" not in items[0]
    assert [steps[item["x"]] for item in items[1:]] == [next_step(entry) for entry in lines[1:]]
    assert items[3]["t"] == "t-1"


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (line(output="a_jpg.png"), None),
        (line(state=ItemState.SUCCEEDED, error_code="DISK_FULL"), "without paying again"),
        (line(state=ItemState.SENDING), "Not finished"),
        (line(state=ItemState.FAILED, error_code="VALIDATION_SIZE"), "fix or replace it"),
        (line(state=ItemState.FAILED, error_code="SERVER_ERROR", retryable=True), "retries it"),
        (line(state=ItemState.FAILED, error_code="ERROR_X", retryable=False), "--retry-failed"),
    ],
)
def test_next_step_by_state_and_code(entry: ManifestLine, says: str | None) -> None:
    step = next_step(entry)
    assert step is None if says is None else step is not None and says in step


def test_urls_in_error_messages_are_cut_to_their_host() -> None:
    message = "download of https://cdn.example/r/abc.png?sig=SECRET failed (404)"
    view = report_view([line(state=ItemState.FAILED, error_message=message)], None)
    shown = view.data["items"][0]["m"]
    assert "SECRET" not in shown
    assert "abc.png" not in shown
    assert "https://cdn.example/" in shown


@pytest.mark.parametrize(
    ("observed", "plan", "bound"),
    [
        (7.2, (2.0, 4.0, 7.0), 3.2),  # seen by the poll at 7, unfinished at 4
        (2.5, (2.0, 4.0, 7.0), 2.5),  # seen by the first poll: finished after submit
        (12.1, (2.0, 4.0, 7.0), 5.1),  # past the plan: polls every 5 s after 7
        (11.0, (), 6.0),  # no plan: every 5 s, seen at 10, unfinished at 5
        (0.3, (), 0.3),
    ],
)
def test_detection_lag_bound(observed: float, plan: tuple[float, ...], bound: float) -> None:
    assert detection_lag_bound(observed, plan) == pytest.approx(bound)


def sample(t: float, *, rate_limited: int = 0, rate: float | None = None) -> Sample:
    return Sample(
        t=t,
        requests=0,
        retries=0,
        rate_limited=rate_limited,
        rate=rate,
        in_flight=0,
        pending_tasks=0,
    )


def test_charts_draw_the_timeline() -> None:
    timeline = Timeline(
        started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        samples=(
            sample(0.0),
            sample(1.0, rate_limited=3, rate=8.0),
            sample(2.0, rate_limited=4, rate=6.0),
        ),
        items=(
            ItemTiming("a", 0.0, 1.0, submitted=0.1, detected=0.9, ok=True),
            ItemTiming("b", 0.0, 2.0, ok=False),
            ItemTiming("c", 0.5),  # never finished: no latency, no throughput
        ),
    )
    charts = {chart.title: chart for chart in report_view([line()], timeline).charts}
    assert sum(charts["Throughput"].bars) * 2.0 / len(charts["Throughput"].bars) > 0
    assert sum(charts["Latency"].bars) == 2
    assert sum(charts["Poll detection lag (upper bound)"].bars) == 1
    rates = charts["429s and the limiter's rate"]
    assert list(rates.bars) == [3.0, 1.0]
    assert list(rates.line) == [8.0, 6.0]
    assert "4 rate-limited answers" in rates.caption
    assert "6.0/s" in rates.caption
    page = render_page(report_view([line()], timeline))
    assert page.count("<svg") == 4
    assert "<polyline" in page


def test_without_a_timeline_the_charts_say_so() -> None:
    page = render_page(report_view([line()], None))
    assert "<svg" not in page
    assert "not recorded" in page


def test_ten_thousand_photos_keep_the_page_small(tmp_path: Path) -> None:
    lines = [
        line(f"folder/photo-{i:05d}.jpg", output=f"folder/photo-{i:05d}_jpg.png")
        if i % 7
        else line(
            f"folder/photo-{i:05d}.jpg",
            ItemState.FAILED,
            error_code="ERROR_NO_FACE_IN_FILE",
            error_message="No face was found.",
            request_id=f"{i:032x}",
            retryable=False,
        )
        for i in range(10_000)
    ]
    out = tmp_path / "out"
    write_manifest_lines(out, lines)
    summary = build_report(out, thumbnails=False)
    page = summary.path.read_text(encoding="utf-8")
    assert (summary.photos, summary.failed) == (10_000, 1429)
    # The page holds each photo's data once (no markup per photo) and no picture at all.
    assert len(page.encode()) < 200 * 10_000
    assert page.count("<li") == 0
    data = page_data(page)
    assert len(data["items"]) == 10_000
    assert data["page_size"] == PAGE_SIZE
    assert len(data["steps"]) == 1  # a hint is written once, items point at it


# --------------------------------------------------------------------------- the timeline


class FakeClient:
    """What the recorder reads from a client: ``stats`` and ``tracker``."""

    def __init__(self) -> None:
        self.stats = ClientStats(requests=5, rate_limited=2, current_rate=4.0)
        self.tracker = TrackerStats(pending=3, plan=(1.0, 2.5))


def test_recorder_stamps_items_and_keeps_the_series_bounded() -> None:
    now = [100.0]
    recorder = TimelineRecorder(
        FakeClient(),  # type: ignore[arg-type]
        clock=lambda: now[0],
        max_samples=16,
    )
    recorder.mark("a.jpg", "started")
    now[0] = 101.5
    recorder.mark("a.jpg", "submitted")
    now[0] = 104.0
    recorder.mark("a.jpg", "detected")
    recorder.mark("a.jpg", "finished", ok=True)
    for _ in range(1000):
        recorder.sample()
    timeline = recorder.timeline()
    assert timeline.items == (ItemTiming("a.jpg", 0.0, 4.0, submitted=1.5, detected=4.0, ok=True),)
    assert len(timeline.samples) <= 17
    assert recorder.interval > 1.0
    assert timeline.samples[-1] == Sample(4.0, 5, 0, 2, 4.0, 0, 3)
    assert timeline.poll_plan == (1.0, 2.5)
    assert Timeline.from_json(timeline.to_json()) == timeline


# --------------------------------------------------------------------------- the doing


def picture(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sample_image(200, 160, seed=seed))
    return path


def test_thumbnails_are_made_once_and_follow_their_source(tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = picture(tmp_path / "in" / "a.jpg")
    picture(out / "a_jpg.png", seed=1)
    write_manifest_lines(out, [line("a.jpg", output="a_jpg.png", input=str(source))])
    first = build_report(out)
    made = sorted((out / THUMBS_DIR).iterdir())
    assert first.thumbnails == 2
    assert len(made) == 2
    with Image.open(made[0]) as thumb:
        assert max(thumb.size) <= _report.THUMB_SIZE
    stamps = {path: path.stat().st_mtime_ns for path in made}
    build_report(out)
    assert {path: path.stat().st_mtime_ns for path in made} == stamps  # reused, not remade
    picture(out / "a_jpg.png", seed=2)  # a rerun replaced the output
    build_report(out)
    after = sorted((out / THUMBS_DIR).iterdir())
    assert len(after) == 2
    assert len(set(after) & set(made)) == 1
    items = page_data((out / REPORT_NAME).read_text())["items"]
    assert {items[0]["b"], items[0]["o"]} == {path.name for path in after}


def test_a_dask_manifest_with_how_and_where_reads_back(tmp_path: Path) -> None:
    # The Dask recipe's lines carry how each item was settled and where it ran.
    out = tmp_path / "out"
    write_manifest_lines(
        out,
        [
            line("a.jpg", how=How.RAN, partition="part-0001-of-0002", worker="tcp://w", pid=7),
            line("b.jpg", ItemState.FAILED, how=How.FAILED, error_code="X"),
        ],
    )
    summary = build_report(out, thumbnails=False)
    assert (summary.photos, summary.failed) == (2, 1)
    items = page_data(summary.path.read_text())["items"]
    assert [(item["n"], item["h"]) for item in items] == [("a.jpg", "ran"), ("b.jpg", "failed")]


def test_missing_or_unreadable_pictures_are_noted_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broken = out / "broken_jpg.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an image")
    write_manifest_lines(
        out,
        [
            line("gone.jpg", output="gone_jpg.png", input=str(tmp_path / "gone.jpg")),
            line("broken.jpg", output="broken_jpg.png", input=str(tmp_path / "gone2.jpg")),
        ],
    )
    (out / "manifest.jsonl").write_text((out / "manifest.jsonl").read_text() + "{not json\n")
    summary = build_report(out)
    assert summary.photos == 2
    assert summary.thumbnails == 0
    assert any("could not be found or read" in note for note in summary.notes)
    assert any("1 line(s) of manifest.jsonl" in note for note in summary.notes)


def test_without_pillow_the_page_says_so_and_has_no_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_report, "_pillow_available", lambda: False)
    out = tmp_path / "out"
    picture(out / "a_jpg.png")
    write_manifest_lines(out, [line("a.jpg", output="a_jpg.png")])
    summary = build_report(out)
    page = summary.path.read_text()
    assert summary.thumbnails == 0
    assert not (out / THUMBS_DIR).exists()
    assert "Pillow" in page
    assert "ailab-async report OUT" in page
    assert "b" not in page_data(page)["items"][0]


# --------------------------------------------------------------------------- a real batch


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        api_key="sim-key-report-SECRET",
        tasks=TaskBehaviour(duration=Uniform(0.01, 0.05), failure_share=0.3),
        rate_limit=RateLimit(requests_per_second=40),
        seed=5,
    )
    async with Simulator(config) as simulator:
        yield simulator


def batch_photos(folder: Path, count: int) -> None:
    for i in range(count):
        picture(folder / f"p{i:02d}.jpg", seed=i)
    # A blank photo has no face: it fails, under a name that tries to inject (a folder
    # "<script>alert(1)<" holding "script>.png").
    hostile = folder / HOSTILE_NAME
    hostile.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (200, 200), "white").save(hostile, "PNG")


@pytest.mark.parametrize("operation", [Operation.SKIN, Operation.BEAUTY])
async def test_a_batch_writes_its_report_without_key_or_result_urls(
    sim: Simulator, tmp_path: Path, operation: Operation
) -> None:
    batch_photos(tmp_path / "in", 12)
    out = tmp_path / "out"
    spec = BatchSpec(operation, {}, out_dir=out, check_account=False)
    client = AILabClient(
        api_key=sim.api_key,
        base_url=sim.url,
        polling=PollingConfig(fallback_interval=0.05, min_interval=0.01),
    )
    async with client:
        report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
    assert report.failed >= 1
    assert report.downloaded >= 1
    assert report.report_path == out / REPORT_NAME
    with sqlite3.connect(out / ".ailab-journal.sqlite3") as db:
        urls = [row[0] for row in db.execute("SELECT image_url FROM items") if row[0]]
    written = [report.report_path, out / TIMELINE_NAME, out / "manifest.jsonl"]
    texts = [path.read_text(encoding="utf-8") for path in written]
    assert urls
    assert all(token in texts[0] for token in ("count-total", "<svg"))
    for text in texts:
        assert sim.api_key not in text
        assert "/results/" not in text
        assert not any(url in text for url in urls)
        assert sim.url not in text
    data = page_data(texts[0])
    assert len(data["items"]) == 13
    hostile = next(item for item in data["items"] if item["n"].endswith(HOSTILE_NAME))
    assert hostile["s"] == "failed"
    assert hostile["c"]
    assert "b" in hostile
    assert "o" not in hostile
    assert sum("o" in item for item in data["items"]) == report.downloaded
    timeline = Timeline.from_json(texts[1])
    assert len(timeline.items) == 13
    assert timeline.samples
    if operation is Operation.BEAUTY:
        assert any(item.detected is not None for item in timeline.items)


async def test_a_batch_asked_for_no_report_writes_none(sim: Simulator, tmp_path: Path) -> None:
    picture(tmp_path / "in" / "a.jpg")
    spec = BatchSpec(
        Operation.SKIN, {}, out_dir=tmp_path / "out", check_account=False, report=False
    )
    async with AILabClient(api_key=sim.api_key, base_url=sim.url) as client:
        report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
    assert report.report_path is None
    assert not (tmp_path / "out" / REPORT_NAME).exists()
    assert not (tmp_path / "out" / TIMELINE_NAME).exists()


# --------------------------------------------------------------------------- the command


def test_report_command_rebuilds_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    picture(out / "a_jpg.png")
    write_manifest_lines(
        out,
        [
            line("a.jpg", output="a_jpg.png", input=str(picture(tmp_path / "a.jpg"))),
            line(HOSTILE_NAME, ItemState.FAILED, error_code="X"),
        ],
    )
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out == f"report: {out / REPORT_NAME} (2 photos, 1 not done, 2 thumbnails)\n"
    assert (out / REPORT_NAME).is_file()
    assert main(["report", str(out), "--no-thumbnails"]) == 0
    printed = capsys.readouterr()
    assert "0 thumbnails" in printed.out
    assert "not asked for" in printed.err


def test_report_command_without_a_batch_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert "no manifest.jsonl" in printed.err
    assert not (tmp_path / REPORT_NAME).exists()


def test_report_command_that_cannot_write_the_page_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_manifest_lines(tmp_path, [line()])
    (tmp_path / REPORT_NAME).mkdir()  # in the way: the page cannot replace it
    assert main(["report", str(tmp_path), "--no-thumbnails"]) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert "ailab-async report: error:" in printed.err


async def test_thumbnails_made_during_a_run_never_stop_it(tmp_path: Path) -> None:
    source = picture(tmp_path / "a.jpg")
    in_the_way = tmp_path / "out"
    in_the_way.write_text("a file where the output folder should be")
    broken = ThumbnailMaker(in_the_way)
    broken.add(source, None)
    broken.add(source, None)
    await broken.finish()  # the failures are swallowed; the queue still drains
    await broken.aclose()
    maker = ThumbnailMaker(tmp_path / "fine")
    (tmp_path / "fine").mkdir()
    maker.add(source, tmp_path / "gone.png")
    await maker.finish()
    await maker.aclose()
    assert len(list((tmp_path / "fine" / THUMBS_DIR).iterdir())) == 1  # the before only
