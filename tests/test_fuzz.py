"""Property-based tests: parsers turn any input into a typed outcome, never a crash."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ailab_async import _protocol as protocol
from ailab_async import errors
from ailab_async._endpoints import ENDPOINTS, SMART_BEAUTY_RULES, SMART_SKIN_RULES, ImageRules
from ailab_async._images import prepare_image
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
            parse(outcome)
    status_outcome = protocol.parse_task_status(outcome, task_id="T")
    assert isinstance(
        status_outcome, (TaskStatus, errors.TaskFailedError, errors.MalformedResponseError)
    )


PARAMETERS = [(endpoint, param) for endpoint in ENDPOINTS.values() for param in endpoint.settable]


@given(
    target=st.sampled_from(PARAMETERS),
    value=json_values
    | st.binary(max_size=8)
    | st.decimals()
    | st.fractions()
    | st.complex_numbers(),
)
@settings(max_examples=400, deadline=None)
def test_any_parameter_value_is_sent_in_range_or_refused_naming_it(
    target: tuple[Any, Any], value: object
) -> None:
    endpoint, param = target
    try:
        fields = endpoint.encode({param.name: value})
    except errors.ValidationError as exc:
        assert exc.input == param.name
        return
    sent = dict(fields).get(param.name)
    if param.low is not None:  # a number: its wire form is a float within the range
        assert sent is not None
        assert param.low <= float(sent) <= param.high


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


# --- image inputs: any header, any file-like behaviour -> accepted, or a ValidationError ------


def _bmp(dib_size: int, width: int, height: int) -> bytes:
    if dib_size == 12:
        dib = struct.pack("<IHHHH", 12, width & 0xFFFF, height & 0xFFFF, 1, 24)
    else:
        dib = struct.pack("<Iii", dib_size, width, height) + b"\x00" * 28
    return b"BM" + struct.pack("<IHHI", 14 + len(dib), 0, 0, 14 + len(dib)) + dib


sides = st.integers(min_value=0, max_value=2**31 - 1) | st.integers(min_value=0, max_value=6000)
signed_sides = st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.integers(-6000, 6000)

# Headers of every known format with arbitrary sides: zero, huge, negative, plausible.
image_headers = st.one_of(
    st.builds(
        lambda w, h: b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"IHDR", w, h) + b"\x08",
        sides,
        sides,
    ),
    st.builds(jpeg_header, st.integers(0, 65535), st.integers(0, 65535)),
    st.builds(
        _bmp,
        st.sampled_from([0, 12, 16, 40, 41, 52, 56, 64, 108, 124, 2**32 - 1]),
        signed_sides,
        signed_sides,
    ),
)


@given(data=image_headers)
@settings(max_examples=400)
def test_accepted_headers_always_have_sides_within_the_rules(data: bytes) -> None:
    for rules in (SMART_SKIN_RULES, SMART_BEAUTY_RULES):
        try:
            prepared = prepare_image(data, rules)
        except errors.ValidationError as exc:
            assert exc.rule in {"format", "decodable", "resolution"}
        else:
            low = rules.min_side_exclusive or 0
            assert low < prepared.width < rules.max_side_exclusive
            assert low < prepared.height < rules.max_side_exclusive


_FAULTS: list[type[Exception]] = [
    OSError,
    ValueError,
    io.UnsupportedOperation,
    TypeError,
    RuntimeError,
    KeyError,
    AttributeError,
]
_ODD_RESULTS: list[object] = [
    None,
    "text",
    7,
    b"",
    bytearray(b"\x89PNG"),
    memoryview(b"BM"),
    [b"x"],
]


class FuzzFile:
    """A file-like object that may raise, lie or answer oddly at any call."""

    def __init__(
        self,
        data: bytes,
        *,
        seekable: bool,
        fail_at: int | None,
        fault: type[Exception],
        odd_at: int | None,
        odd: object,
        short_reads: int | None,
    ) -> None:
        self._buffer = io.BytesIO(data)
        self._seekable = seekable
        self._fail_at = fail_at
        self._fault = fault
        self._odd_at = odd_at
        self._odd = odd
        self._short_reads = short_reads
        self._calls = 0
        self.served = 0

    def _step(self) -> bool:
        """Count a call; raise if this is the failing one; say if this one answers oddly."""
        self._calls += 1
        if self._calls == self._fail_at:
            if self._fault is OSError:
                raise OSError(errno.EIO, "Input/output error")
            raise self._fault("injected")
        return self._calls == self._odd_at

    def seekable(self) -> object:
        return self._odd if self._step() else self._seekable

    def tell(self) -> object:
        return self._odd if self._step() else self._buffer.tell()

    def seek(self, offset: int, whence: int = 0) -> object:
        return self._odd if self._step() else self._buffer.seek(offset, whence)

    def read(self, n: int = -1) -> object:
        if self._step():
            return self._odd
        if self._short_reads and (n < 0 or n > self._short_reads):
            n = self._short_reads
        chunk = self._buffer.read(n)
        self.served += len(chunk)
        return chunk


@given(
    data=st.sampled_from(
        [png_bytes(300, 300), jpeg_header(640, 480), _bmp(40, 300, -300), b"", b"BM"]
    )
    | st.binary(max_size=300),
    seekable=st.booleans(),
    fail_at=st.none() | st.integers(min_value=1, max_value=12),
    fault=st.sampled_from(_FAULTS),
    odd_at=st.none() | st.integers(min_value=1, max_value=12),
    odd=st.sampled_from(_ODD_RESULTS),
    short_reads=st.none() | st.integers(min_value=1, max_value=64),
    rules=st.sampled_from([SMART_SKIN_RULES, SMART_BEAUTY_RULES]),
)
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_any_file_like_behaviour_is_accepted_or_a_validation_error(
    data: bytes,
    seekable: bool,
    fail_at: int | None,
    fault: type[Exception],
    odd_at: int | None,
    odd: object,
    short_reads: int | None,
    rules: ImageRules,
) -> None:
    fileobj = FuzzFile(
        data,
        seekable=seekable,
        fail_at=fail_at,
        fault=fault,
        odd_at=odd_at,
        odd=odd,
        short_reads=short_reads,
    )
    try:
        prepared = prepare_image(fileobj, rules)  # type: ignore[arg-type]
    except errors.ValidationError as exc:
        assert exc.rule
        assert exc.input == "<file object>"
        str(exc)
    else:
        assert prepared.format in rules.formats
        assert prepared.data is not None
        assert data.startswith(prepared.data[:1])
    assert fileobj.served <= rules.max_bytes + 1
