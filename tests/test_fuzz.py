"""Property-based tests: parsers turn any input into a typed outcome, never a crash."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ailab_async import _protocol as protocol
from ailab_async import errors
from ailab_async.images import SMART_BEAUTY_RULES, SMART_SKIN_RULES, prepare_image
from ailab_async.models import TaskStatus

from .conftest import jpeg_header, png_bytes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

envelope_keys = st.sampled_from(
    [
        "request_id",
        "log_id",
        "error_code",
        "error_code_str",
        "error_msg",
        "error_detail",
        "data",
        "task_id",
        "task_status",
        "image_url",
    ]
)

# Envelope-shaped objects: the documented keys with arbitrary values, often nested right.
envelopes = st.dictionaries(envelope_keys, json_values, max_size=8) | st.fixed_dictionaries(
    {
        "error_detail": st.dictionaries(
            st.sampled_from(["status_code", "code", "code_message", "message"]),
            json_values,
        ),
        "data": json_values,
    },
    optional={"error_code": json_values, "task_status": json_values},
)

statuses = st.integers(min_value=100, max_value=599)


def _check_outcome(outcome: object) -> None:
    assert isinstance(outcome, (protocol.Envelope, errors.APIError))
    if isinstance(outcome, errors.APIError):
        assert isinstance(outcome.retryable, bool)
        str(outcome)  # formatting never fails either


@given(status=statuses, body=st.binary(max_size=300), retry_after=st.none() | st.text())
@settings(max_examples=300)
def test_any_bytes_classify_to_a_typed_outcome(
    status: int, body: bytes, retry_after: str | None
) -> None:
    _check_outcome(protocol.classify_response(status, body, retry_after=retry_after))


@given(status=statuses, body=json_values)
@settings(max_examples=300)
def test_any_json_classifies_to_a_typed_outcome(status: int, body: Any) -> None:
    _check_outcome(protocol.classify_response(status, json.dumps(body).encode()))


@given(status=statuses, body=envelopes)
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_envelope_shaped_json_classifies_and_parses_without_crashing(
    status: int, body: dict[str, Any]
) -> None:
    outcome = protocol.classify_response(status, json.dumps(body).encode())
    _check_outcome(outcome)
    if isinstance(outcome, errors.APIError):
        assert status != 200 or outcome.code or body.get("error_code")
        return
    # Every payload parser gives its model or a typed error on the same success envelope.
    for parse in (
        protocol.parse_image_result,
        protocol.parse_task_id,
        protocol.parse_credits,
    ):
        with contextlib.suppress(errors.MalformedResponseError):
            parse(outcome)  # type: ignore[operator]
    status_outcome = protocol.parse_task_status(outcome, task_id="T")
    assert isinstance(status_outcome, (TaskStatus, errors.TaskFailedError))


@given(st.binary(max_size=400))
@settings(max_examples=400)
def test_any_bytes_are_accepted_or_refused_by_the_validator(data: bytes) -> None:
    for rules in (SMART_SKIN_RULES, SMART_BEAUTY_RULES):
        try:
            prepared = prepare_image(data, rules)
        except errors.ValidationError as exc:
            assert exc.rule
            assert exc.input == "<bytes>"
        else:
            assert prepared.format in rules.formats
            assert prepared.size == len(data)


@given(
    prefix=st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"]),
    tail=st.binary(max_size=200),
)
@settings(max_examples=400)
def test_damaged_headers_of_known_formats_never_crash(prefix: bytes, tail: bytes) -> None:
    for rules in (SMART_SKIN_RULES, SMART_BEAUTY_RULES):
        with contextlib.suppress(errors.ValidationError):
            prepare_image(prefix + tail, rules)


@given(
    width=st.integers(min_value=1, max_value=9000),
    height=st.integers(min_value=1, max_value=9000),
    padding=st.integers(min_value=0, max_value=3000),
)
@settings(max_examples=200)
def test_jpeg_resolution_rule_matches_the_documented_bounds(
    width: int, height: int, padding: int
) -> None:
    data = jpeg_header(width, height, app_padding=padding)
    acceptable = min(width, height) > 128 and max(width, height) < 5000
    try:
        prepared = prepare_image(data, SMART_SKIN_RULES)
    except errors.ValidationError as exc:
        assert not acceptable
        assert exc.rule == "resolution"
    else:
        assert acceptable
        assert (prepared.width, prepared.height) == (width, height)


def test_png_helper_is_a_valid_fixture() -> None:
    assert prepare_image(png_bytes(300, 200), SMART_SKIN_RULES).height == 200
