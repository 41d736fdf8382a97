"""How a failed item is journaled (``ailab_async.batch._failures``): a table of failures at
each step, pure, no API and no event loop. The rule it pins: paid work is never thrown away."""

from __future__ import annotations

import datetime as dt

import pytest

from ailab_async.batch._failures import FailureRecord, failure_fields, record_failure
from ailab_async.batch.journal import ItemState
from ailab_async.errors import (
    APIError,
    DownloadError,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
)
from ailab_async.models import ImageResult

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
NOW = T0 + dt.timedelta(hours=1)
LIVE = ImageResult(image_url="https://results.example/r.png", produced_at=T0)
EXPIRED = ImageResult(
    image_url="https://results.example/r.png", produced_at=T0 - dt.timedelta(days=2)
)
S = ItemState

BUSY = APIError("busy", status=503, code="AI_SERVICE_ERROR", retryable=True, request_id="q")
NO_FACE = TaskFailedError("no face", task_id="t", status=200, code="ERROR_NO_FACE_IN_FILE")
UNKNOWN_TASK = APIError("unknown task", status=400, code="ERROR_TASK_NOT_FOUND", retryable=False)
TIMEOUT = TaskTimeoutError("slow", task_id="t")
URL_503 = DownloadError("busy", status=503, retryable=True)
URL_410 = DownloadError("gone", status=410)
DISK_FULL = DownloadError("full", code="DISK_FULL")

# (case, error, journal state, result of this run, keep_state, result_gone, retryable)
CASES = [
    ("refused before paying", BUSY, S.SENDING, None, False, False, True),
    ("final refusal", NO_FACE, S.SENDING, None, False, False, False),
    ("task still running", TIMEOUT, S.SUBMITTED, None, True, False, True),
    ("task failed", NO_FACE, S.SUBMITTED, None, False, True, False),
    ("task unknown to the API", UNKNOWN_TASK, S.SUBMITTED, None, False, True, True),
    ("download 503", URL_503, S.SUCCEEDED, LIVE, True, False, True),
    ("disk full", DISK_FULL, S.SUCCEEDED, LIVE, True, False, False),
    ("url gone", URL_410, S.SUCCEEDED, LIVE, False, True, True),
    ("url expired", URL_503, S.SUCCEEDED, EXPIRED, False, True, True),
    # An older journal's failed item whose task or URL still lives: worth retrying for free.
    ("old failure, url lives", DISK_FULL, S.FAILED, LIVE, False, False, True),
    ("old failure, task lives", TIMEOUT, S.FAILED, None, False, False, True),
    ("old failure, task failed", NO_FACE, S.FAILED, None, False, True, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "state", "result", "keep_state", "gone", "retryable"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_record_failure(
    error: Exception,
    state: ItemState,
    result: ImageResult | None,
    keep_state: bool,
    gone: bool,
    retryable: bool,
) -> None:
    record = record_failure(error, state=state, result=result, now=NOW)
    assert (record.keep_state, record.result_gone, record.retryable) == (
        keep_state,
        gone,
        retryable,
    )


def test_the_record_carries_the_ids_to_quote_to_support() -> None:
    record = record_failure(BUSY, state=S.SENDING, result=None, now=NOW)
    assert record == FailureRecord(
        code="AI_SERVICE_ERROR", message="busy", retryable=True, request_id="q"
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (BUSY, ("AI_SERVICE_ERROR", "busy", True)),
        (APIError("odd", status=500), ("APIError", "odd", False)),
        (
            ValidationError("too small", input="a.jpg", rule="resolution"),
            ("VALIDATION_RESOLUTION", "too small", False),
        ),
        (DISK_FULL, ("DISK_FULL", "full", False)),
        (TIMEOUT, ("TaskTimeoutError", "slow", True)),
        (FileNotFoundError("a.jpg"), ("FileNotFoundError", "a.jpg", False)),
    ],
)
def test_failure_fields_name_the_cause(
    error: BaseException, expected: tuple[str, str, bool]
) -> None:
    assert failure_fields(error) == expected
