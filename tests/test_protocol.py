"""The pure protocol layer: classification of every envelope shape, and payload parsing."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.parser
import email.policy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
        # Where the provider's official SDK also looks.
        (envelope({"taskStatus": 1}), TaskStatus.PROCESSING),
    ],
)
def test_task_status_parsed(body: dict[str, object], expected: TaskStatus) -> None:
    outcome = protocol.classify_response(200, json.dumps(body).encode())
    assert isinstance(outcome, protocol.Envelope)
    assert protocol.parse_task_status(outcome, task_id="T") is expected


def test_missing_task_status_is_a_retryable_malformed_answer() -> None:
    outcome = protocol.classify_response(200, json.dumps(envelope({"other": 1})).encode())
    assert isinstance(outcome, protocol.Envelope)
    missing = protocol.parse_task_status(outcome, task_id="T9")
    assert isinstance(missing, errors.MalformedResponseError)
    assert missing.retryable is True


@pytest.mark.parametrize("status_value", [3, -1, "done", "", True, 1.0])
def test_unknown_task_status_is_a_terminal_failure(status_value: object) -> None:
    outcome = protocol.classify_response(
        200, json.dumps(envelope(None, task_status=status_value)).encode()
    )
    assert isinstance(outcome, protocol.Envelope)
    failed = protocol.parse_task_status(outcome, task_id="T9")
    assert isinstance(failed, errors.TaskFailedError)
    assert failed.task_id == "T9"
    assert failed.retryable is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [("abc", "abc"), ("", None), (123, "123"), (0, "0"), (True, None), (1.5, None), (None, None)],
)
def test_request_and_log_ids_are_text_or_none(value: object, expected: str | None) -> None:
    body = {"error_code": 0, "request_id": value, "log_id": value, "data": {}}
    outcome = protocol.classify_response(200, json.dumps(body).encode())
    assert isinstance(outcome, protocol.Envelope)
    assert (outcome.request_id, outcome.log_id) == (expected, expected)


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


# --- throttling in every shape ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (429, _modern_error(429, "EXCEEDING_LIMITS")),
        (422, error_envelope(422, "EXCEEDING_LIMITS")),
        (422, _modern_error(422, "EXCEEDING_LIMITS")),
        (200, error_envelope(422, "EXCEEDING_LIMITS")),
        (503, error_envelope(503, "AI_SERVICE_FLOW_RESTRICTION")),
        (503, _modern_error(503, "AI_SERVICE_FLOW_RESTRICTION")),
        (400, error_envelope(400, "ERROR_BATCH_TASK_LIMIT_EXCEEDED")),
        (429, _modern_error(429, "ERROR_BATCH_TASK_LIMIT_EXCEEDED")),
        (429, b"<html><body>429 Too Many Requests</body></html>"),
        (429, b""),
        (429, b"slow down"),
        (429, b'{"message": "rate limit exceeded"'),
        (429, b"[]"),
    ],
)
def test_throttling_is_rate_limited_in_every_shape(status: int, body: object) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    outcome = protocol.classify_response(status, raw, retry_after="2")
    assert type(outcome) is errors.RateLimitedError
    assert outcome.retryable is True
    assert outcome.retry_after == 2.0


@pytest.mark.parametrize("status", [200, 400, 402, 422, 429])
def test_not_enough_credits_is_never_a_rate_limit(status: int) -> None:
    body = error_envelope(429 if status == 200 else status, "ERROR_NOT_ENOUGH_CREDITS")
    outcome = protocol.classify_response(status, json.dumps(body).encode())
    assert type(outcome) is errors.InsufficientCreditsError
    assert outcome.retryable is False


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_redirect_is_a_non_retryable_invalid_request(status: int) -> None:
    outcome = protocol.classify_response(status, json.dumps(envelope({"image_url": "x"})).encode())
    assert type(outcome) is errors.InvalidRequestError
    assert outcome.retryable is False
    assert outcome.code == "UNEXPECTED_REDIRECT"
    assert "base_url" in str(outcome)


def test_error_code_that_is_not_a_number_does_not_raise() -> None:
    for junk in ("--1", "1-", "²", "٣", "1e3", " 42x", "9" * 5000):
        body = {"error_code": junk, "error_detail": {"code": ""}}
        outcome = protocol.classify_response(200, json.dumps(body).encode())
        assert isinstance(outcome, protocol.Envelope | errors.APIError)


def test_server_text_in_errors_is_bounded() -> None:
    body = error_envelope(400, "ERROR_PARAMETERS", "x" * 100_000)
    outcome = protocol.classify_response(400, json.dumps(body).encode())
    assert isinstance(outcome, errors.InvalidRequestError)
    assert len(str(outcome)) < 1000


# --- never raises: property tests ---------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["--1", "-", "0", "422", "²", "٣", "1e309", "nan", "EXCEEDING_LIMITS"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
envelope_keys = st.sampled_from(
    [
        "error_code",
        "error_code_str",
        "error_msg",
        "error_detail",
        "request_id",
        "log_id",
        "data",
        "task_id",
        "task_status",
        "image_url",
    ]
)
detail_values = st.dictionaries(
    st.sampled_from(["status_code", "code", "code_message", "message"]), json_values
)
envelopes = st.dictionaries(envelope_keys | st.text(max_size=8), json_values | detail_values)
statuses = st.sampled_from([0, 100, 200, 204, 302, 400, 418, 422, 429, 499, 500, 503, 520, 600])


def _parse_everything(outcome: protocol.Envelope | errors.APIError) -> None:
    assert isinstance(outcome, protocol.Envelope | errors.APIError)
    str(outcome)
    repr(outcome)
    if isinstance(outcome, protocol.Envelope):
        for parse in (
            protocol.parse_image_result,
            protocol.parse_task_id,
            protocol.parse_credits,
        ):
            with contextlib.suppress(errors.AILabError):
                parse(outcome)
        status = protocol.parse_task_status(outcome, task_id="T")
        str(status)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=statuses, body=envelopes, retry_after=st.none() | st.text(max_size=40))
def test_classify_and_parse_never_raise_on_any_envelope(
    status: int, body: dict[str, object], retry_after: str | None
) -> None:
    raw = json.dumps(body).encode()  # NaN/Infinity included: json.dumps writes them
    _parse_everything(protocol.classify_response(status, raw, retry_after=retry_after))


@settings(max_examples=200, deadline=None)
@given(status=statuses, body=st.binary(max_size=200))
def test_classify_never_raises_on_any_bytes(status: int, body: bytes) -> None:
    _parse_everything(protocol.classify_response(status, body))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"error_code": 1' + b"0" * 5000 + b"}",  # more digits than int() takes
        b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # deeper than the recursion limit
        b'{"data": {"image_url": NaN}, "request_id": Infinity}',
        b'\xef\xbb\xbf{"data": {"image_url": "https://a/b"}}',  # a BOM
        b'{"a": 1, "a": 2, "error_code": 0, "error_code": 422}',
        b'{"error_code": "\xff\xfe"}',
    ],
)
def test_classify_survives_hostile_json(raw: bytes) -> None:
    _parse_everything(protocol.classify_response(200, raw))


@given(
    st.text(max_size=60)
    | st.sampled_from(
        [
            "1e309",
            "-1e309",
            "inf",
            "-inf",
            "nan",
            "1" * 400,
            "-5",
            "Wed, 21 Oct 0001 07:28:10 GMT",
            "Wed, 21 Oct 9999 07:28:10 GMT",
            "Wed, 21 Oct 99999 07:28:10 GMT",
            "Mon, 01 Jan 1900 00:00:00 +9999",
            "Thu, 01 Jan 1970 00:00:00 GMT",
        ]
    )
)
@settings(max_examples=300, deadline=None)
def test_parse_retry_after_never_raises(header: str) -> None:
    value = protocol.parse_retry_after(header)
    assert value is None or (math.isfinite(value) and value >= 0)


@pytest.mark.parametrize("status", [0, 42, 600, 999])
def test_invalid_http_status_is_a_final_malformed_response(status: int) -> None:
    outcome = protocol.classify_response(status, json.dumps(envelope({"image_url": "x"})).encode())
    assert type(outcome) is errors.MalformedResponseError
    assert outcome.retryable is False
    assert "invalid HTTP status" in str(outcome)


# --- multipart framing ---------------------------------------------------------------------


def _parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str | None, str, bytes]]:
    """(name, filename, content type, payload) of each part, as the stdlib's parser reads them."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        name = part.get_param("name", header="content-disposition")
        assert isinstance(name, str)
        parts.append((name, part.get_filename(), part.get_content_type(), payload))
    return parts


@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(["retouch_degree", "whitening_degree", "task_type", "multi_face"]),
            st.sampled_from(["0.0", "1.5", "async", "1", "0.30000000000000004"]),
        ),
        max_size=4,
    ),
    image=st.binary(max_size=300),
)
def test_a_framed_body_reads_back_as_the_fields_then_the_file(
    fields: list[tuple[str, str]], image: bytes
) -> None:
    boundary = "a3f1" * 8
    head, tail = protocol.multipart_frame(fields, "image", "image.png", "image/png", boundary)
    parts = _parse_multipart(protocol.multipart_content_type(boundary), head + image + tail)
    assert parts == [
        *((name, None, "text/plain", value.encode()) for name, value in fields),
        ("image", "image.png", "image/png", image),
    ]


@pytest.mark.parametrize(
    ("fields", "file_field"),
    [
        ([('a"b', "1")], "image"),
        ([("a\r\nX-Injected: 1", "1")], "image"),
        ([("a", "1")], 'image"; filename="evil'),
        ([("é", "1")], "image"),
        ([("a", "--B--")], "image"),
    ],
)
def test_framing_refuses_text_that_would_break_it(
    fields: list[tuple[str, str]], file_field: str
) -> None:
    with pytest.raises(ValueError, match=r"multipart|boundary"):
        protocol.multipart_frame(fields, file_field, "image.png", "image/png", "B")


def test_a_value_is_any_text_in_utf8() -> None:
    # Values are the part's body, not its headers: quotes and line breaks cannot break it.
    head, _ = protocol.multipart_frame([("a", 'say "é"\r\n')], "image", "i.png", "image/png", "B")
    assert b'name="a"\r\n\r\nsay "\xc3\xa9"\r\n\r\n--B\r\n' in head


_FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, 200, 429, 0.0, "", " ", "0", " 0", "429", "X", "EXCEEDING_LIMITS"]),
    st.lists(st.integers(), max_size=2),
)
_SUCCESS_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "error_code": _FIELD_VALUES,
        "error_code_str": _FIELD_VALUES,
        "error_detail": st.one_of(
            _FIELD_VALUES,
            st.fixed_dictionaries(
                {}, optional={"code": _FIELD_VALUES, "status_code": _FIELD_VALUES}
            ),
        ),
        "request_id": _FIELD_VALUES,
        "log_id": _FIELD_VALUES,
        "data": st.one_of(st.none(), st.just({"image_url": "https://r.example/x.png"})),
    },
)


@settings(max_examples=300)
@given(
    body=_SUCCESS_LIKE,
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]),
    retry_after=st.sampled_from([None, "", "1", "soon"]),
)
def test_the_shortcut_for_a_plain_success_reads_a_200_as_the_full_reading_does(
    body: dict[str, object], encoding: str, retry_after: str | None
) -> None:
    raw = json.dumps(body).encode(encoding)
    full = protocol._classify_in_full(200, raw, retry_after)
    got = protocol.classify_response(200, raw, retry_after=retry_after)
    if isinstance(full, protocol.Envelope):
        assert got == full
    else:  # errors compare by identity: compare what they are and say
        assert type(got) is type(full)
        assert str(got) == str(full)
    shortcut = protocol._plain_success(raw)
    if shortcut is not None:
        assert shortcut == full


@pytest.mark.parametrize(
    "body",
    [
        {"error_detail": {"code": "EXCEEDING_LIMITS"}},
        {"error_code": 0, "error_detail": {"code": " X "}},
        {"error_code_str": "ERROR_PARAMETERS"},
        {"error_code": 429},
        {"error_code": "429"},
        {"error_code": 0.0, "error_code_str": "X"},
    ],
)
def test_an_error_signalled_in_a_200_never_takes_the_shortcut(body: dict[str, object]) -> None:
    raw = json.dumps(body).encode()
    assert protocol._plain_success(raw) is None
    assert isinstance(protocol.classify_response(200, raw), errors.APIError)


def test_the_shortcut_takes_the_common_success_and_leaves_an_error_in_a_200_alone() -> None:
    ok = json.dumps(envelope({"image_url": "https://r.example/x.png"})).encode()
    assert protocol._plain_success(ok) == protocol._classify_in_full(200, ok, None)
    failed = json.dumps(error_envelope(422, "EXCEEDING_LIMITS")).encode()
    assert protocol._plain_success(failed) is None
    assert isinstance(protocol.classify_response(200, failed), errors.RateLimitedError)
