"""The pure protocol layer: classification of every envelope shape, parsing, parameters."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ailab_async import _protocol as protocol
from ailab_async import errors
from ailab_async.models import TaskStatus

from .conftest import envelope, error_envelope


def _modern_error(status: int, code: str) -> dict[str, object]:
    # Newer responses: no error_code / error_msg / error_detail.status_code.
    return {
        "request_id": "r",
        "log_id": "l",
        "error_detail": {"code": code, "code_message": "m", "message": "said"},
    }


@pytest.mark.parametrize(
    ("status", "code", "expected", "retryable"),
    [
        (400, "ERROR_PARAMETERS", errors.InvalidRequestError, False),
        (400, "MISSING_PARAMETERS", errors.InvalidRequestError, False),
        (400, "ERROR_INVALID_PARAMETER", errors.InvalidRequestError, False),
        (400, "PARAMETERS_CANNOT_EMPTY", errors.InvalidRequestError, False),
        (400, "PROCESSING_FAILURE", errors.ServerError, True),
        (500, "PROCESSING_FAILURE", errors.ServerError, True),
        (401, "ERROR_USER_NOT_EXISTS", errors.AuthenticationError, False),
        (401, "ERROR_APPLICATIONS_NOT_EXISTS", errors.AuthenticationError, False),
        (403, "ERROR_USER_LOCKED", errors.PermissionDeniedError, False),
        (404, "ERROR_AI_NOT_EXISTS", errors.InvalidRequestError, False),
        (413, "FILE_SIZE_EXCEEDS_LIMIT", errors.ImageRejectedError, False),
        (413, "FILE_RESOLUTION_EXCEEDS_LIMITS", errors.ImageRejectedError, False),
        (415, "UNSUPPORTED_FILE_TYPES", errors.ImageRejectedError, False),
        (422, "FILE_DECODING_FAILURE", errors.ImageRejectedError, False),
        (422, "ERROR_NO_FACE_IN_FILE", errors.ImageRejectedError, False),
        (422, "ERROR_FACE_SIZE_RATIO_NOT_MET", errors.ImageRejectedError, False),
        (422, "ERROR_BLURRY_FACE", errors.ImageRejectedError, False),
        (422, "ERROR_CONTENT_NON_COMPLIANCE", errors.ImageRejectedError, False),
        (422, "FILE_CONTENT_NON_COMPLIANCE", errors.ImageRejectedError, False),
        (429, "EXCEEDING_LIMITS", errors.RateLimitedError, True),
        (429, "ERROR_NOT_ENOUGH_CREDITS", errors.InsufficientCreditsError, False),
        (502, "AI_SERVICE_ERROR", errors.ServerError, True),
        (503, "ERROR_INSUFFICIENT_RESOURCES", errors.ServerError, True),
        (504, "AI_SERVICE_TIMEOUT", errors.ServerError, True),
        # Unknown codes fall back to their HTTP family.
        (401, "SOMETHING_NEW", errors.AuthenticationError, False),
        (403, "SOMETHING_NEW", errors.PermissionDeniedError, False),
        (409, "SOMETHING_NEW", errors.InvalidRequestError, False),
        (422, "SOMETHING_NEW", errors.ImageRejectedError, False),
        (429, "SOMETHING_NEW", errors.RateLimitedError, True),
        (500, "SOMETHING_NEW", errors.ServerError, True),
        (599, "", errors.ServerError, True),
    ],
)
@pytest.mark.parametrize("shape", ["legacy", "modern"])
def test_error_envelopes_classify_by_code_then_family(
    status: int, code: str, expected: type[errors.APIError], retryable: bool, shape: str
) -> None:
    body = error_envelope(status, code) if shape == "legacy" else _modern_error(status, code)
    outcome = protocol.classify_response(status, json.dumps(body).encode())
    assert type(outcome) is expected
    assert isinstance(outcome, errors.APIError)
    assert outcome.status == status
    assert outcome.code == code
    assert outcome.retryable is retryable
    assert outcome.request_id in ("req-err", "r")
    assert outcome.log_id in ("log-err", "l")


def test_success_envelope_legacy_and_modern() -> None:
    legacy = protocol.classify_response(200, json.dumps(envelope({"image_url": "x"})).encode())
    modern = protocol.classify_response(
        200, json.dumps({"request_id": "a", "log_id": "b", "data": {"image_url": "x"}}).encode()
    )
    for outcome in (legacy, modern):
        assert isinstance(outcome, protocol.Envelope)
        assert outcome.data == {"image_url": "x"}
    assert isinstance(modern, protocol.Envelope)
    assert (modern.request_id, modern.log_id) == ("a", "b")


def test_error_signalled_inside_http_200_uses_error_code_as_status() -> None:
    body = error_envelope(422, "ERROR_NO_FACE_IN_FILE")
    outcome = protocol.classify_response(200, json.dumps(body).encode())
    assert isinstance(outcome, errors.ImageRejectedError)
    assert outcome.status == 422


def test_error_detail_code_alone_in_200_is_an_error() -> None:
    body = {"error_detail": {"code": "ERROR_NOT_ENOUGH_CREDITS"}}
    outcome = protocol.classify_response(200, json.dumps(body).encode())
    assert isinstance(outcome, errors.InsufficientCreditsError)


@pytest.mark.parametrize(
    ("status", "body", "retryable", "words"),
    [
        (502, b"<html><body>502 Bad Gateway</body></html>", True, "HTML"),
        (200, b'{"request_id": "x", "data": {"image_u', True, "truncated"),
        (200, b"", True, "empty"),
        (200, b"[1, 2]", True, "not a JSON object"),
        (404, b"<html>not found</html>", False, "HTML"),
        (200, b"\xff\xfe\x00garbage", True, "not a JSON object"),
    ],
)
def test_unreadable_bodies_become_malformed_response_errors(
    status: int, body: bytes, retryable: bool, words: str
) -> None:
    outcome = protocol.classify_response(status, body)
    assert isinstance(outcome, errors.MalformedResponseError)
    assert outcome.retryable is retryable
    assert words in str(outcome)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("Wed, 21 Oct 2026 07:28:10 GMT", 10.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after_parses_seconds_and_dates(header: str | None, expected: float | None) -> None:
    now = dt.datetime(2026, 10, 21, 7, 28, 0, tzinfo=dt.timezone.utc)
    assert protocol.parse_retry_after(header, now) == expected


def test_retry_after_reaches_the_error() -> None:
    body = json.dumps(error_envelope(429, "EXCEEDING_LIMITS")).encode()
    outcome = protocol.classify_response(429, body, retry_after="7")
    assert isinstance(outcome, errors.RateLimitedError)
    assert outcome.retry_after == 7.0


def test_parse_image_result_requires_http_url() -> None:
    ok = protocol.classify_response(
        200, json.dumps(envelope({"image_url": "https://a/b"})).encode()
    )
    assert isinstance(ok, protocol.Envelope)
    assert protocol.parse_image_result(ok).image_url == "https://a/b"
    bad = protocol.classify_response(
        200, json.dumps(envelope({"image_url": "file:///etc"})).encode()
    )
    assert isinstance(bad, protocol.Envelope)
    with pytest.raises(errors.MalformedResponseError):
        protocol.parse_image_result(bad)


@pytest.mark.parametrize(
    "body",
    [envelope(None, task_id="T1", task_type="async"), envelope({"task_id": "T1"})],
)
def test_task_id_found_top_level_or_in_data(body: dict[str, object]) -> None:
    outcome = protocol.classify_response(200, json.dumps(body).encode())
    assert isinstance(outcome, protocol.Envelope)
    assert protocol.parse_task_id(outcome) == "T1"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (envelope(None, task_status=0), TaskStatus.QUEUED),
        (envelope({"task_status": 1}), TaskStatus.PROCESSING),
        (envelope({"image_url": "https://x/y"}, task_status=2), TaskStatus.SUCCEEDED),
        (envelope(None, task_status="2"), TaskStatus.SUCCEEDED),
    ],
)
def test_task_status_parsed(body: dict[str, object], expected: TaskStatus) -> None:
    outcome = protocol.classify_response(200, json.dumps(body).encode())
    assert isinstance(outcome, protocol.Envelope)
    assert protocol.parse_task_status(outcome, task_id="T") is expected


@pytest.mark.parametrize("status_value", [3, -1, "done", None])
def test_unknown_task_status_is_a_terminal_failure(status_value: object) -> None:
    outcome = protocol.classify_response(
        200, json.dumps(envelope(None, task_status=status_value)).encode()
    )
    assert isinstance(outcome, protocol.Envelope)
    failed = protocol.parse_task_status(outcome, task_id="T9")
    assert isinstance(failed, errors.TaskFailedError)
    assert failed.task_id == "T9"
    assert failed.retryable is False


def test_credits_parsed_with_numeric_strings_and_extras() -> None:
    body = envelope(
        [
            {"unique_sign": "a", "name": "API", "balance": "12.5", "total": 100, "x": 1},
            {"unique_sign": "b", "name": "Bonus", "balance": 7, "total": 7},
        ]
    )
    outcome = protocol.classify_response(200, json.dumps(body).encode())
    assert isinstance(outcome, protocol.Envelope)
    credits = protocol.parse_credits(outcome)
    assert credits.balance == 19.5
    assert [b.name for b in credits] == ["API", "Bonus"]
    assert credits.request_id == "req-1"


def test_credits_without_list_is_malformed() -> None:
    outcome = protocol.classify_response(200, json.dumps(envelope("nope")).encode())
    assert isinstance(outcome, protocol.Envelope)
    with pytest.raises(errors.MalformedResponseError):
        protocol.parse_credits(outcome)


@pytest.mark.parametrize(
    ("value", "rule"),
    [(-0.1, "range"), (1.51, "range"), (float("nan"), "range"), ("1", "type"), (True, "type")],
)
def test_skin_degrees_out_of_range_are_rejected(value: object, rule: str) -> None:
    with pytest.raises(errors.ValidationError) as info:
        protocol.smart_skin_fields(value, 1.0)  # type: ignore[arg-type]
    assert info.value.rule == rule
    assert info.value.input == "retouch_degree"


def test_skin_fields_at_bounds() -> None:
    assert protocol.smart_skin_fields(0, 1.5) == [
        ("retouch_degree", "0.0"),
        ("whitening_degree", "1.5"),
    ]


def test_beauty_fields() -> None:
    assert protocol.smart_beauty_fields(0.7, True) == [
        ("task_type", "async"),
        ("beauty_level", "0.7"),
        ("multi_face", "1"),
    ]
    with pytest.raises(errors.ValidationError):
        protocol.smart_beauty_fields(1.2, False)
