"""The batch report as a person sees it, in a real headless Chromium (skipped without one).

A simulated batch with successes and failures (through the command line, as a user runs it)
writes its ``report.html``; the browser loads it from disk and the tests read what is on
screen: the counts, a before/after pair whose pictures decoded, the failure filter, names that
try to inject staying text, no request leaving the folder. A screenshot is kept under the
test's ``tmp_path`` (and copied to ``$AILAB_TEST_ARTIFACTS`` when set).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ailab_async.batch import ManifestLine
from ailab_async.batch._report import REPORT_NAME, build_report
from ailab_async.batch._report_page import PAGE_SIZE
from ailab_async.batch.journal import ItemState
from ailab_async.cli import main

from ._browser import Page, browser_page, chromium_binary

CHROMIUM = chromium_binary()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt install chromium)"
)

HOSTILE_NAME = "<img src=x onerror=alert(1)>.jpg"

#: True once the page's script has drawn its cards.
READY = "document.documentElement.dataset.ready === '1'"


@pytest.fixture(scope="module")
def batch_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a simulated smart-beauty batch where some tasks fail."""
    folder = tmp_path_factory.mktemp("report-batch")
    photos, out = folder / "photos", folder / "out"
    assert main(["sample-photos", str(photos), "-n", "10", "--size", "256"]) == 0
    shutil.copy(photos / "portrait-000.jpg", photos / HOSTILE_NAME)
    status = main(
        [
            "beauty",
            str(photos),
            "--out",
            str(out),
            "--simulate",
            "--sim-failure-share",
            "0.4",
            "--sim-task-duration",
            "0.05:0.2",
            "--sim-seed",
            "4",
            "--poll-interval",
            "0.1",
            "-q",
        ]
    )
    assert status == 1  # some items failed, as wanted
    assert (out / REPORT_NAME).is_file()
    return out


def manifest_states(out: Path) -> list[str]:
    return [json.loads(text)["state"] for text in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    async with browser_page(CHROMIUM, tmp_path / "profile") as opened:
        yield opened


async def keep_screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    shot = await page.screenshot(tmp_path / name)
    folder = os.environ.get("AILAB_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / name)
    return shot


async def cards(page: Page) -> list[dict[str, str]]:
    """The photo cards on screen: name, state and the failure details shown."""
    value = await page.evaluate(
        "Array.from(document.querySelectorAll('#items li')).map(function (li) {"
        " var dd = {}; li.querySelectorAll('dt').forEach(function (dt) {"
        "  dd[dt.textContent] = dt.nextElementSibling.textContent; });"
        " var next = li.querySelector('.next');"
        " return Object.assign(dd, {name: li.querySelector('.name').textContent,"
        "  state: li.dataset.state, next: next ? next.textContent : ''}); })"
    )
    assert isinstance(value, list)
    return value


async def test_a_person_sees_counts_pictures_and_can_filter_failures(
    batch_out: Path, page: Page, tmp_path: Path
) -> None:
    await page.send(
        "Page.addScriptToEvaluateOnNewDocument",
        source="window.__alerts = 0; window.alert = function () { window.__alerts += 1; };",
    )
    await page.open((batch_out / REPORT_NAME).as_uri())
    await page.wait_for(READY)

    states = manifest_states(batch_out)
    done, failed = states.count("downloaded"), states.count("failed")
    assert done >= 1
    assert failed >= 1
    counts = await page.evaluate(
        "['total', 'done', 'failed'].map(function (key) {"
        " return Number(document.querySelector('#count-' + key + ' b').textContent); })"
    )
    assert counts == [len(states), done, failed]
    shown = await cards(page)
    assert len(shown) == len(states)
    assert any(card["name"].endswith(HOSTILE_NAME) for card in shown)  # shown as text

    # A before/after pair, both pictures decoded.
    await page.evaluate("document.querySelector('li[data-state=downloaded]').scrollIntoView()")
    await page.wait_for(
        "Array.from(document.querySelectorAll('li[data-state=downloaded]')[0]"
        ".querySelectorAll('img')).every(function (img) {"
        " return img.complete && img.naturalWidth > 0; })"
    )
    pair = await page.evaluate(
        "Array.from(document.querySelectorAll('li[data-state=downloaded]')[0]"
        ".querySelectorAll('img')).map(function (img) { return [img.alt, img.naturalWidth]; })"
    )
    assert [alt for alt, _ in pair] == ["before", "after"]
    assert all(width > 0 for _, width in pair)
    await page.evaluate("window.scrollTo(0, 0)")
    await keep_screenshot(page, tmp_path, "report-batch.png")

    # The failure filter: only failures, each with its code, request_id and next step.
    await page.evaluate("document.querySelector('[data-filter=failures]').click()")
    await page.wait_for(f"document.querySelectorAll('#items li').length === {failed}")
    failures = await cards(page)
    assert {card["state"] for card in failures} == {"failed"}
    for card in failures:
        assert card["code"]
        assert card["request_id"]
        assert card["next"]
    await keep_screenshot(page, tmp_path, "report-failures.png")

    # Nothing ran that the page did not write, and nothing left the folder.
    assert await page.evaluate("window.__alerts") == 0
    assert await page.evaluate("window.__violations") == []
    assert page.requests
    assert all(url.startswith("file://") for url in page.requests)


async def test_ten_thousand_photos_page_through(tmp_path: Path, page: Page) -> None:
    out = tmp_path / "out"
    out.mkdir()
    lines = [
        ManifestLine(
            input=f"p{i:05d}.jpg",
            relative=f"p{i:05d}.jpg",
            operation="smart-skin",
            params={},
            state=ItemState.FAILED if i % 7 == 0 else ItemState.DOWNLOADED,
            error_code="ERROR_NO_FACE_IN_FILE" if i % 7 == 0 else None,
            request_id=f"{i:032x}" if i % 7 == 0 else None,
        )
        for i in range(10_000)
    ]
    (out / "manifest.jsonl").write_text("".join(line.to_json() + "\n" for line in lines))
    build_report(out, thumbnails=False)

    await page.open((out / REPORT_NAME).as_uri())
    await page.wait_for(READY)
    pages = -(-10_000 // PAGE_SIZE)
    assert len(await cards(page)) == PAGE_SIZE
    assert await page.evaluate("document.getElementById('page').textContent") == (
        f"page 1 of {pages}"
    )
    await page.evaluate("document.getElementById('next').click()")
    await page.wait_for(f"document.getElementById('page').textContent === 'page 2 of {pages}'")
    assert (await cards(page))[0]["name"] == f"p{PAGE_SIZE:05d}.jpg"

    await page.evaluate("document.querySelector('[data-filter=failures]').click()")
    await page.wait_for("document.getElementById('shown').textContent === '1429 of 10000 photos'")
    assert {card["state"] for card in await cards(page)} == {"failed"}
    assert await page.evaluate("document.getElementById('page').textContent") == (
        f"page 1 of {-(-1429 // PAGE_SIZE)}"
    )
    await page.evaluate(
        "var box = document.getElementById('search'); box.value = 'p00007';"
        " box.dispatchEvent(new Event('input'))"
    )
    await page.wait_for("document.getElementById('shown').textContent === '1 of 10000 photos'")
    assert [card["name"] for card in await cards(page)] == ["p00007.jpg"]
    assert await page.evaluate("document.querySelectorAll('#items li').length") == 1
    await keep_screenshot(page, tmp_path, "report-10000.png")
