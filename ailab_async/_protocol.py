"""The API's envelopes, without I/O: what a request's body is, what a response means, and
what its payload holds.

A multipart upload is framed here (:func:`multipart_frame`: the bytes around the image).
Response classification (success, or which typed error, retryable or not, with its
``Retry-After``) and payload parsing are pure functions of bytes and mappings, so each is
tested table-driven without a network or loop. What each endpoint is and takes (path,
billing, image rules, parameters) lives in the endpoint table, :mod:`._endpoints`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import json
import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from . import errors
from .models import CreditBalance, Credits, ImageResult, RawResult, TaskStatus, converter

__all__ = [
    "API_KEY_HEADER",
    "DEFAULT_BASE_URL",
    "MAX_RESPONSE_BYTES",
    "MAX_RETRY_AFTER",
    "RESPONSE_TOO_LARGE",
    "THROTTLING_CODES",
    "UNEXPECTED_REDIRECT",
    "Envelope",
    "classify_response",
    "error_class_for",
    "form_text_problem",
    "multipart_content_type",
    "multipart_form",
    "multipart_frame",
    "parse_credits",
    "parse_image_result",
    "parse_raw_result",
    "parse_retry_after",
    "parse_task_id",
    "parse_task_status",
]

API_KEY_HEADER = "ailabapi-api-key"
DEFAULT_BASE_URL = "https://www.ailabapi.com"

#: The most bytes (after decompression) read from an API answer. Envelopes are a few
#: hundred bytes; the cap keeps a hostile or broken server (a gzip bomb, an endless body)
#: from filling memory. A body over the cap is a :class:`MalformedResponseError`. (Should
#: smart-beauty's ``task_type=sync``, a base64 image in the body, ever be wrapped, that
#: endpoint needs a larger cap: about 7 MiB for its 5 MiB image limit.)
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

#: The longest ``Retry-After`` any part of the client honours, in seconds (retries, the rate
#: limiters, the task poller). The provider promises none; a misconfigured gateway sending
#: ``Retry-After: 1000000000`` must not stall a call, or every process sharing a budget.
MAX_RETRY_AFTER = 120.0

#: Codes this SDK gives to answers it refuses on its own (not the API's word about a call).
UNEXPECTED_REDIRECT = "UNEXPECTED_REDIRECT"
RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"

#: Codes that mean "slow down": the API refused the request unprocessed, whatever the
#: HTTP status they arrive under (the provider's documents disagree: 422, 429, 400, 503).
THROTTLING_CODES = frozenset(
    {"EXCEEDING_LIMITS", "AI_SERVICE_FLOW_RESTRICTION", "ERROR_BATCH_TASK_LIMIT_EXCEEDED"}
)


# --- requests ----------------------------------------------------------------------------

#: What may not appear in a name, file name or content type written into a part's headers:
#: it would end the quoted string or the header line.
_NOT_IN_HEADERS = re.compile(r'["\\\r\n]')


def multipart_frame(
    fields: Sequence[tuple[str, str]],
    file_field: str,
    filename: str,
    content_type: str,
    boundary: str,
) -> tuple[bytes, bytes]:
    """A ``multipart/form-data`` body around one file: the bytes before it and after it.

    The body is ``head + file + tail``: the text fields in order, then the file part, as a
    browser's form sends them. Framed by hand rather than with ``aiohttp.FormData`` because
    this is the per-request hot path: FormData builds a payload object and a header
    dictionary per part and writes every part's headers, value and separator apart (13
    ``send()`` calls for two fields and an image), where this is two small buffers a
    transport can send with the image in one write. Names, the file name and the content
    type go into part headers: ASCII without quotes, backslashes or line breaks. A value is
    any text (sent as UTF-8, as a browser sends a form) that does not contain the boundary.
    ``ValueError`` for anything that would break the framing.

    >>> head, tail = multipart_frame([("level", "0.5")], "image", "a.png", "image/png", "B")
    >>> (head + b"<png>" + tail).split(b"\\r\\n")  # doctest: +NORMALIZE_WHITESPACE
    [b'--B', b'Content-Disposition: form-data; name="level"', b'', b'0.5',
     b'--B', b'Content-Disposition: form-data; name="image"; filename="a.png"',
     b'Content-Type: image/png', b'', b'<png>', b'--B--', b'']
    """
    parts = _field_parts(fields, boundary)
    parts.append(f"--{boundary}\r\n{_file_part_headers(file_field, filename, content_type)}")
    return "".join(parts).encode(), f"\r\n--{boundary}--\r\n".encode("ascii")


@functools.lru_cache(maxsize=64)
def _file_part_headers(file_field: str, filename: str, content_type: str) -> str:
    """The headers of the file's part, each text checked (remembered: an endpoint sends
    the same few on every call; a refusal is not remembered)."""
    if any(form_text_problem(text) for text in (file_field, filename, content_type)):
        raise ValueError("multipart names and types must be ASCII without quotes or CR/LF")
    return (
        f'Content-Disposition: form-data; name="{file_field}"; '
        f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
    )


def multipart_form(fields: Sequence[tuple[str, str]], boundary: str) -> bytes:
    """A ``multipart/form-data`` body of text fields only (a POST without a file), framed
    as :func:`multipart_frame` frames them.

    >>> multipart_form([("a", "1")], "B").split(b"\\r\\n")
    [b'--B', b'Content-Disposition: form-data; name="a"', b'', b'1', b'--B--', b'']
    """
    return ("".join(_field_parts(fields, boundary)) + f"--{boundary}--\r\n").encode()


def _field_parts(fields: Sequence[tuple[str, str]], boundary: str) -> list[str]:
    """The text parts of a multipart body; the boundary and every name checked first."""
    if form_text_problem(boundary) or any(form_text_problem(name) for name, _ in fields):
        raise ValueError("multipart names and types must be ASCII without quotes or CR/LF")
    if any(boundary in value for _, value in fields):
        raise ValueError("the boundary occurs in a field value")
    return [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]


def form_text_problem(text: str) -> str | None:
    """Why ``text`` cannot go into a multipart part's headers (a name, a file name, a content
    type) as :func:`multipart_frame` frames them; ``None`` if it can.

    >>> form_text_problem("0.5"), form_text_problem('say "hi"')
    (None, 'must be ASCII without quotes, backslashes or line breaks')
    """
    if _NOT_IN_HEADERS.search(text) or not text.isascii():
        return "must be ASCII without quotes, backslashes or line breaks"
    return None


def multipart_content_type(boundary: str) -> str:
    """The ``Content-Type`` of a body framed by :func:`multipart_frame` with ``boundary``."""
    return f"multipart/form-data; boundary={boundary}"


# --- responses ---------------------------------------------------------------------------


@attrs.define  # made for every success: slotted, never changed once made (not frozen: cheaper)
class Envelope:
    """A successful response: HTTP 200 and no error signalled in the body."""

    status: int
    body: Mapping[str, Any]
    request_id: str | None
    log_id: str | None

    @property
    def data(self) -> Any:
        return self.body.get("data")


_CODE_CLASSES: dict[str, type[errors.APIError]] = {
    **dict.fromkeys(
        (
            "ERROR_PARAMETERS",
            "MISSING_PARAMETERS",
            "ERROR_INVALID_PARAMETER",
            "PARAMETERS_CANNOT_EMPTY",
            "ERROR_AI_NOT_EXISTS",
        ),
        errors.InvalidRequestError,
    ),
    "PROCESSING_FAILURE": errors.ServerError,
    "ERROR_USER_NOT_EXISTS": errors.AuthenticationError,
    "ERROR_APPLICATIONS_NOT_EXISTS": errors.AuthenticationError,
    "ERROR_USER_LOCKED": errors.PermissionDeniedError,
    **dict.fromkeys(
        (
            "FILE_SIZE_EXCEEDS_LIMIT",
            "FILE_RESOLUTION_EXCEEDS_LIMITS",
            "UNSUPPORTED_FILE_TYPES",
            "FILE_DECODING_FAILURE",
            "ERROR_NO_FACE_IN_FILE",
            "ERROR_FACE_SIZE_RATIO_NOT_MET",
            "ERROR_BLURRY_FACE",
            "ERROR_CONTENT_NON_COMPLIANCE",
            "FILE_CONTENT_NON_COMPLIANCE",
        ),
        errors.ImageRejectedError,
    ),
    **dict.fromkeys(THROTTLING_CODES, errors.RateLimitedError),
    "ERROR_NOT_ENOUGH_CREDITS": errors.InsufficientCreditsError,
    "AI_SERVICE_ERROR": errors.ServerError,
    "ERROR_INSUFFICIENT_RESOURCES": errors.ServerError,
    "AI_SERVICE_TIMEOUT": errors.ServerError,
}


def error_class_for(status: int, code: str) -> type[errors.APIError]:
    """The exception type for an error: by documented ``code``, else by HTTP status family."""
    if code in _CODE_CLASSES:
        return _CODE_CLASSES[code]
    if 300 <= status < 400:
        # Redirects are never followed (the key would go with them): see classify_response.
        return errors.InvalidRequestError
    if status == 401:
        return errors.AuthenticationError
    if status == 403:
        return errors.PermissionDeniedError
    if status == 429:
        return errors.RateLimitedError
    if status in (413, 415, 422):
        return errors.ImageRejectedError
    if 400 <= status < 500:
        return errors.InvalidRequestError
    if status >= 500:
        return errors.ServerError
    return errors.APIError


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    Junk (``"soon"``, ``"nan"``, ``"inf"``, ``"1e309"``, an impossible date) is ``None``;
    a negative value or a date in the past is ``0``. Never raises. The value is not capped
    here: how long a call is willing to wait is the dispatcher's decision
    (``RetryPolicy.max_retry_after`` and the call's deadline).

    >>> parse_retry_after("3")
    3.0
    """
    if not value or not isinstance(value, str):
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.timezone.utc)
            seconds = (when - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()
        except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _opt_id(value: Any) -> str | None:
    if type(value) is str:  # what the API sends: one test, no copy (this runs on every answer)
        return value or None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


_INT_TEXT = re.compile(r"-?[0-9]{1,18}")


def _int_or_none(value: Any) -> int | None:
    """An int from an int or a plain ASCII decimal string (``"422"``); else ``None``."""
    if type(value) is int:  # the common case first (never a bool: its type is bool)
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _http_status(value: Any) -> int | None:
    """An HTTP status from an envelope field, if it looks like one (100-599)."""
    number = _int_or_none(value)
    return number if number is not None and 100 <= number <= 599 else None


def _plain_success(body: bytes) -> Envelope | None:
    """The envelope of a 200 whose body is UTF-8 JSON signalling no error in the plainest
    way (``error_code`` 0 or absent, no ``error_code_str``, no ``error_detail.code``), else
    ``None``: :func:`classify_response` then reads it in full. What this accepts, the full
    reading accepts the same way; it only skips the checks such a body cannot fail (the
    common answer: every successful call and every poll of a pending task)."""
    try:
        parsed = json.loads(body.decode())  # UTF-8, as the API sends it: no sniffing
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    if type(parsed) is not dict:
        return None
    error_code = parsed.get("error_code")
    if not (error_code is None or (type(error_code) is int and error_code == 0)):
        return None
    detail = parsed.get("error_detail")
    if parsed.get("error_code_str") or (type(detail) is dict and detail.get("code")):
        return None
    return Envelope(
        status=200,
        body=parsed,
        request_id=_opt_id(parsed.get("request_id")),
        log_id=_opt_id(parsed.get("log_id")),
    )


def classify_response(
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
) -> Envelope | errors.APIError:
    """Decide what a response means: a success :class:`Envelope` or a typed API error.

    Accepts both envelope generations: the legacy one (``error_code``, ``error_msg``,
    ``error_detail.status_code``) and the newer one that relies on the HTTP status and
    ``error_detail.code``. Never raises: any bytes and status give one of the two.

    Throttling is recognised in every shape the provider and its gateways use
    (:data:`THROTTLING_CODES` under any status, a bare 429 with an HTML, empty or
    non-JSON body): all are :class:`~ailab_async.errors.RateLimitedError`, which is safe
    to retry and slows the rate limiter. A 3xx is an
    :class:`~ailab_async.errors.InvalidRequestError` (not retried): redirects are never
    followed, since following one would send the API key to wherever it points; a
    redirect means ``base_url`` is wrong.

    >>> type(classify_response(429, b"<html>Too Many Requests</html>")).__name__
    'RateLimitedError'
    """
    if status == 200:
        success = _plain_success(body)
        if success is not None:
            return success
    return _classify_in_full(status, body, retry_after)


def _classify_in_full(
    status: int, body: bytes, retry_after: str | None
) -> Envelope | errors.APIError:
    """:func:`classify_response` without its shortcut for a plain success."""
    wait = parse_retry_after(retry_after)
    if not 100 <= status <= 599:
        return errors.MalformedResponseError(
            f"the server answered with an invalid HTTP status ({status})",
            status=status,
            retry_after=wait,
            retryable=False,
        )
    if 300 <= status < 400:
        return errors.InvalidRequestError(
            f"the server answered with a redirect (HTTP {status}); redirects are not "
            "followed, so the API key is never sent elsewhere: check base_url",
            status=status,
            code=UNEXPECTED_REDIRECT,
            retryable=False,
        )
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        what = "an empty body" if not body.strip() else "a body that is not a JSON object"
        if body.lstrip()[:1] in (b"<",):
            what = "an HTML page (a proxy or gateway answered, not the API)"
        elif parsed is None and body.lstrip()[:1] in (b"{", b"["):
            what = "a truncated or invalid JSON body"
        if status == 429:
            # A gateway's throttling page: refused before the API saw the request, so it
            # is safe to repeat and must slow us down like the API's own 429.
            return errors.RateLimitedError(
                f"rate limited (HTTP 429 with {what})",
                status=status,
                code="",
                retry_after=wait,
            )
        return errors.MalformedResponseError(
            f"expected a JSON envelope, got {what}",
            status=status,
            retry_after=wait,
            # A gateway error or a cut-off body is worth another try; a 4xx page is not.
            retryable=status >= 500 or status in (200, 408),
        )

    detail = parsed.get("error_detail")
    detail = detail if isinstance(detail, dict) else {}
    code = _text(detail.get("code")) or _text(parsed.get("error_code_str"))
    error_code = _int_or_none(parsed.get("error_code"))
    request_id = _opt_id(parsed.get("request_id"))
    log_id = _opt_id(parsed.get("log_id"))

    if status == 200 and not code and not error_code:
        return Envelope(status=status, body=parsed, request_id=request_id, log_id=log_id)

    effective = status
    if status == 200:
        # An error signalled in a 200 body: error_code mirrors the real status.
        effective = _http_status(error_code) or _http_status(detail.get("status_code")) or status
    message = (
        _text(detail.get("message"))
        or _text(detail.get("code_message"))
        or _text(parsed.get("error_msg"))
        or (f"{code}" if code else "the API reported an error")
    )
    cls = error_class_for(effective, code)
    return cls(
        _clip(message),
        status=effective,
        code=_clip(code, 80),
        request_id=_clip_id(request_id),
        log_id=_clip_id(log_id),
        retry_after=wait,
    )


def _clip(text: str, limit: int = 500) -> str:
    """Server text put into an error, bounded (a hostile body may be megabytes)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _clip_id(value: str | None) -> str | None:
    return None if value is None else _clip(value, 200)


# --- payloads ----------------------------------------------------------------------------


def _malformed(envelope: Envelope, what: str) -> errors.MalformedResponseError:
    return errors.MalformedResponseError(
        f"success response without {what}",
        status=envelope.status,
        request_id=envelope.request_id,
        log_id=envelope.log_id,
        retryable=False,
    )


def _find(envelope: Envelope, key: str) -> Any:
    """A field the API has placed both at top level and inside ``data``."""
    data = envelope.data
    if isinstance(data, dict) and data.get(key) is not None:
        return data[key]
    return envelope.body.get(key)


def parse_image_result(envelope: Envelope, *, task_id: str | None = None) -> ImageResult:
    """The ``data.image_url`` of a smart-skin response or finished task."""
    url = _find(envelope, "image_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise _malformed(envelope, "an http(s) data.image_url")
    return ImageResult(
        image_url=url, request_id=envelope.request_id, log_id=envelope.log_id, task_id=task_id
    )


def parse_raw_result(envelope: Envelope, *, task_id: str | None = None) -> RawResult:
    """Any endpoint's success answer as it came: its ``data`` and the whole body."""
    return RawResult(
        envelope.data,
        request_id=envelope.request_id,
        log_id=envelope.log_id,
        task_id=task_id,
        body=envelope.body,
    )


def parse_task_id(envelope: Envelope) -> str:
    """The ``task_id`` of an accepted task submit (smart-beauty, or any task endpoint)."""
    task_id = _opt_id(_find(envelope, "task_id"))
    if task_id is None:
        raise _malformed(envelope, "a task_id")
    return task_id


def parse_task_status(
    envelope: Envelope, *, task_id: str
) -> TaskStatus | errors.TaskFailedError | errors.MalformedResponseError:
    """A task's state; a terminal failure for a status outside 0-2; or, with no status at
    all, a (retryable) malformed answer: a shapeless body says nothing about the task.

    The status is read where the API or its official SDK have put it: ``data.task_status``,
    ``data.taskStatus`` or a top-level ``task_status``.
    """
    raw = _find(envelope, "task_status")
    if raw is None:
        raw = _find(envelope, "taskStatus")
    if raw is None:
        return errors.MalformedResponseError(
            "success response without a task_status",
            status=envelope.status,
            request_id=envelope.request_id,
            log_id=envelope.log_id,
            retryable=True,
        )
    value = _int_or_none(raw)
    status = None if value is None else TaskStatus.from_wire(value)
    if status is not None:
        return status
    shown = _clip(reprlib.repr(raw), 80)
    suffix = str(value) if value is not None else raw if isinstance(raw, str) else shown
    return errors.TaskFailedError(
        f"the task reported task_status={shown} (not queued, processing or succeeded)",
        task_id=task_id,
        status=envelope.status,
        code=f"TASK_STATUS_{_clip(suffix, 40)}",
        request_id=envelope.request_id,
        log_id=envelope.log_id,
    )


def parse_credits(envelope: Envelope) -> Credits:
    """The credit buckets of ``query-credits``."""
    data = envelope.data
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise _malformed(envelope, "a data list of credit balances")
    try:
        balances = tuple(converter.structure(item, CreditBalance) for item in data)
    except (ValueError, TypeError, KeyError, Exception) as exc:  # cattrs raises groups
        raise _malformed(envelope, f"readable credit balances ({type(exc).__name__})") from None
    return Credits(balances=balances, request_id=envelope.request_id, log_id=envelope.log_id)
