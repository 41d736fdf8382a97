"""The journal's pure decisions (``ailab_async.batch.journal._states``): what a rerun does with
each row, from the row and ``now`` alone. No database, no event loop."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from ailab_async.batch.journal import ItemState, JournalEntry, ResumeAction

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
URL = "https://results.example/r/1.png?sig=s3cret"
S = ItemState

HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)


def entry_for(state: ItemState, **fields: Any) -> JournalEntry:
    return JournalEntry(
        item_id=1,
        identity="id",
        operation="smart-beauty",
        params="{}",
        source="a.jpg",
        relative="a.jpg",
        state=state,
        created_at=T0,
        updated_at=T0,
        **fields,
    )


R = ResumeAction
RESUME_CASES: list[tuple[str, JournalEntry, dt.timedelta, ResumeAction, ResumeAction]] = [
    # (case, entry, age of the task/URL at "now", action without retry_failed, with retry_failed)
    ("downloaded", entry_for(S.DOWNLOADED, output_path="o.png"), 48 * HOUR, R.SKIP, R.SKIP),
    ("pending", entry_for(S.PENDING), 0 * HOUR, R.RUN, R.RUN),
    ("interrupted send", entry_for(S.SENDING, attempts=1), 1 * HOUR, R.RUN, R.RUN),
    ("fresh task", entry_for(S.SUBMITTED, task_id="t", submitted_at=T0), 1 * HOUR,
     R.TRACK, R.TRACK),
    ("task near ttl", entry_for(S.SUBMITTED, task_id="t", submitted_at=T0), 24 * HOUR - 6 * MINUTE,
     R.TRACK, R.TRACK),
    ("task in margin", entry_for(S.SUBMITTED, task_id="t", submitted_at=T0), 24 * HOUR - 4 * MINUTE,
     R.RUN, R.RUN),
    ("stale task", entry_for(S.SUBMITTED, task_id="t", submitted_at=T0), 30 * HOUR, R.RUN, R.RUN),
    ("fresh url", entry_for(S.SUCCEEDED, image_url=URL, produced_at=T0), 2 * HOUR,
     R.DOWNLOAD, R.DOWNLOAD),
    ("url in margin", entry_for(S.SUCCEEDED, image_url=URL, produced_at=T0), 24 * HOUR - MINUTE,
     R.RUN, R.RUN),
    ("expired url", entry_for(S.SUCCEEDED, image_url=URL, produced_at=T0), 25 * HOUR, R.RUN, R.RUN),
    ("succeeded, no url", entry_for(S.SUCCEEDED, produced_at=T0), 1 * HOUR, R.RUN, R.RUN),
    ("retryable failure", entry_for(S.FAILED, error_code="AI_SERVICE_ERROR", retryable=True),
     1 * HOUR, R.RUN, R.RUN),
    ("final failure", entry_for(S.FAILED, error_code="ERROR_NO_FACE_IN_FILE", retryable=False),
     1 * HOUR, R.KEEP_FAILED, R.RUN),
    ("failed with live url", entry_for(S.FAILED, retryable=False, image_url=URL, produced_at=T0),
     1 * HOUR, R.KEEP_FAILED, R.DOWNLOAD),
    # Journals written before schema 2 failed items after the paid step: never pay again
    # while the task or URL lives.
    ("old: download 503", entry_for(S.FAILED, error_code="DownloadError", retryable=True,
     task_id="t", submitted_at=T0, image_url=URL, produced_at=T0), 1 * HOUR,
     R.DOWNLOAD, R.DOWNLOAD),
    ("old: task timeout", entry_for(S.FAILED, error_code="TaskTimeoutError", retryable=True,
     task_id="t", submitted_at=T0), 1 * HOUR, R.TRACK, R.TRACK),
    ("old: disk full", entry_for(S.FAILED, error_code="OSError", retryable=False,
     image_url=URL, produced_at=T0), 1 * HOUR, R.KEEP_FAILED, R.DOWNLOAD),
    ("old: task timeout, task gone", entry_for(S.FAILED, error_code="TaskTimeoutError",
     retryable=True, task_id="t", submitted_at=T0), 30 * HOUR, R.RUN, R.RUN),
    ("timed-out task kept submitted", entry_for(S.SUBMITTED, task_id="t", submitted_at=T0,
     error_code="TaskTimeoutError", retryable=True), 1 * HOUR, R.TRACK, R.TRACK),
    ("failed download kept succeeded", entry_for(S.SUCCEEDED, image_url=URL, produced_at=T0,
     error_code="DownloadError", retryable=True), 1 * HOUR, R.DOWNLOAD, R.DOWNLOAD),
]  # fmt: skip


@pytest.mark.parametrize("retry_failed", [False, True])
@pytest.mark.parametrize(
    ("entry", "age", "plain", "with_retry"),
    [case[1:] for case in RESUME_CASES],
    ids=[case[0] for case in RESUME_CASES],
)
def test_resume_action(
    entry: JournalEntry,
    age: dt.timedelta,
    plain: ResumeAction,
    with_retry: ResumeAction,
    retry_failed: bool,
) -> None:
    expected = with_retry if retry_failed else plain
    assert entry.resume_action(retry_failed=retry_failed, now=T0 + age) is expected


def test_url_usable_honours_the_safety_margin() -> None:
    entry = entry_for(S.SUCCEEDED, image_url=URL, produced_at=T0)
    assert entry.url_usable(T0 + 23 * HOUR)
    assert not entry.url_usable(T0 + 24 * HOUR - 4 * MINUTE)
    assert not entry_for(S.SUCCEEDED).url_usable(T0)


def test_resume_action_defaults_to_the_current_time() -> None:
    recent = dt.datetime.now(UTC) - HOUR
    entry = entry_for(S.SUBMITTED, task_id="t", submitted_at=recent)
    assert entry.resume_action(retry_failed=False) is R.TRACK
