"""Everything about the wire protocol that is not I/O.

Request descriptions, parameter checks, response classification and payload parsing are pure
functions of bytes and mappings, so each is tested table-driven without a network or loop.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from . import errors
from .models import CreditBalance, Credits, ImageResult, TaskStatus, converter

API_KEY_HEADER = "ailabapi-api-key"
DEFAULT_BASE_URL = "https://www.ailabapi.com"


@attrs.frozen
class Endpoint:
    """One API operation: how to call it and whether a call is billed."""

    name: str
    method: str
    path: str
    #: Billed operations cost credits per accepted call, so a blind retry may cost twice.
    billed: bool
    #: The multipart field that carries the image, for upload endpoints.
    image_field: str | None = None


SMART_SKIN = Endpoint(
    "smart-skin", "POST", "/api/portrait/effects/smart-skin", billed=True, image_field="image"
)
SMART_BEAUTY = Endpoint(
    "smart-beauty",
    "POST",
    "/api/portrait/effects/smart-beauty",
    billed=True,
    image_field="image_target",
)
QUERY_TASK = Endpoint(
    "query-async-task-result", "GET", "/api/common/query-async-task-result", billed=False
)
QUERY_CREDITS = Endpoint("query-credits", "GET", "/api/common/query-credits", billed=False)


# --- parameters -------------------------------------------------------------------------


def check_degree(name: str, value: float, low: float, high: float) -> str:
    """Validate one float parameter against its documented range; return its form value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.ValidationError(
            f"{name} must be a number in [{low}, {high}], got {type(value).__name__}",
            input=name,
            rule="type",
        )
    if not (math.isfinite(value) and low <= value <= high):
        raise errors.ValidationError(
            f"{name} must be in [{low}, {high}], got {value!r}", input=name, rule="range"
        )
    return repr(float(value))


def smart_skin_fields(retouch_degree: float, whitening_degree: float) -> list[tuple[str, str]]:
    """The non-file form fields of a smart-skin call (ranges per the API: [0, 1.5])."""
    return [
        ("retouch_degree", check_degree("retouch_degree", retouch_degree, 0.0, 1.5)),
        ("whitening_degree", check_degree("whitening_degree", whitening_degree, 0.0, 1.5)),
    ]


def smart_beauty_fields(beauty_level: float, multi_face: bool) -> list[tuple[str, str]]:
    """The non-file form fields of a smart-beauty submit (``beauty_level`` in [0, 1])."""
    fields = [
        ("task_type", "async"),
        ("beauty_level", check_degree("beauty_level", beauty_level, 0.0, 1.0)),
    ]
    if multi_face:
        fields.append(("multi_face", "1"))
    return fields


# --- responses ---------------------------------------------------------------------------


@attrs.frozen
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
    "EXCEEDING_LIMITS": errors.RateLimitedError,
    "ERROR_NOT_ENOUGH_CREDITS": errors.InsufficientCreditsError,
    "AI_SERVICE_ERROR": errors.ServerError,
    "ERROR_INSUFFICIENT_RESOURCES": errors.ServerError,
    "AI_SERVICE_TIMEOUT": errors.ServerError,
}


def error_class_for(status: int, code: str) -> type[errors.APIError]:
    """The exception type for an error: by documented ``code``, else by HTTP status family."""
    if code in _CODE_CLASSES:
        return _CODE_CLASSES[code]
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
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = (when - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _opt_id(value: Any) -> str | None:
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


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
    """
    wait = parse_retry_after(retry_after)
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
        return errors.MalformedResponseError(
            f"expected a JSON envelope, got {what}",
            status=status,
            retry_after=wait,
            # A gateway error or a cut-off body is worth another try; a 4xx page is not.
            retryable=status >= 500 or status in (200, 408, 429),
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
        effective = error_code or _int_or_none(detail.get("status_code")) or status
    message = (
        _text(detail.get("message"))
        or _text(detail.get("code_message"))
        or _text(parsed.get("error_msg"))
        or (f"{code}" if code else "the API reported an error")
    )
    cls = error_class_for(effective, code)
    return cls(
        message,
        status=effective,
        code=code,
        request_id=request_id,
        log_id=log_id,
        retry_after=wait,
    )


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


def parse_task_id(envelope: Envelope) -> str:
    """The ``task_id`` of an accepted smart-beauty submit."""
    task_id = _opt_id(_find(envelope, "task_id"))
    if task_id is None:
        raise _malformed(envelope, "a task_id")
    return task_id


def parse_task_status(envelope: Envelope, *, task_id: str) -> TaskStatus | errors.TaskFailedError:
    """A task's state, or a terminal failure for a status outside 0-2."""
    raw = _find(envelope, "task_status")
    value = _int_or_none(raw)
    if value is not None and value in TaskStatus._value2member_map_:
        return TaskStatus(value)
    return errors.TaskFailedError(
        f"the task reported task_status={raw!r} (not queued, processing or succeeded)",
        task_id=task_id,
        status=envelope.status,
        code=f"TASK_STATUS_{raw}",
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
