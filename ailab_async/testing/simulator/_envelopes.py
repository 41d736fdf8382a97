"""Response bodies exactly as the provider documents them (pure functions, no I/O)."""

from __future__ import annotations

from typing import Any

from ._config import EnvelopeStyle

__all__ = [
    "FAULT_ENVELOPES",
    "HTML_502_PAGE",
    "error_envelope",
    "status_for_code",
    "success_envelope",
]

#: Injected 5xx faults: fault name -> (HTTP status, ``error_detail.code``, message).
FAULT_ENVELOPES: dict[str, tuple[int, str, str]] = {
    "error_500": (500, "PROCESSING_FAILURE", "Processing failed, please try again."),
    "error_502": (502, "AI_SERVICE_ERROR", "The AI service returned an error."),
    "error_503": (503, "ERROR_INSUFFICIENT_RESOURCES", "Insufficient resources, try later."),
    "error_504": (504, "AI_SERVICE_TIMEOUT", "The AI service timed out."),
}

_CODE_STATUS = {
    "ERROR_PARAMETERS": 400,
    "MISSING_PARAMETERS": 400,
    "ERROR_INVALID_PARAMETER": 400,
    "PARAMETERS_CANNOT_EMPTY": 400,
    "PROCESSING_FAILURE": 500,
    "ERROR_USER_NOT_EXISTS": 401,
    "ERROR_APPLICATIONS_NOT_EXISTS": 401,
    "ERROR_USER_LOCKED": 403,
    "ERROR_AI_NOT_EXISTS": 404,
    "FILE_SIZE_EXCEEDS_LIMIT": 413,
    "FILE_RESOLUTION_EXCEEDS_LIMITS": 413,
    "UNSUPPORTED_FILE_TYPES": 415,
    "FILE_DECODING_FAILURE": 422,
    "ERROR_NO_FACE_IN_FILE": 422,
    "ERROR_FACE_SIZE_RATIO_NOT_MET": 422,
    "ERROR_BLURRY_FACE": 422,
    "ERROR_CONTENT_NON_COMPLIANCE": 422,
    "FILE_CONTENT_NON_COMPLIANCE": 422,
    "EXCEEDING_LIMITS": 429,
    "ERROR_NOT_ENOUGH_CREDITS": 429,
    "AI_SERVICE_ERROR": 502,
    "ERROR_INSUFFICIENT_RESOURCES": 503,
    "AI_SERVICE_TIMEOUT": 504,
}

HTML_502_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def status_for_code(code: str) -> int:
    """The HTTP status the provider pairs with an ``error_detail.code`` (422 if unknown)."""
    return _CODE_STATUS.get(code, 422)


def success_envelope(
    request_id: str, log_id: str, style: EnvelopeStyle, **fields: Any
) -> dict[str, Any]:
    """A success body: the public fields, then ``fields`` (``data``, ``task_id``, ...).

    >>> success_envelope("r", "l", "modern", data={})["error_detail"]
    {'code': '', 'code_message': '', 'message': ''}
    """
    body: dict[str, Any] = {"request_id": request_id, "log_id": log_id}
    if style == "legacy":
        body.update(error_code=0, error_code_str="", error_msg="")
        body["error_detail"] = {"status_code": 200, "code": "", "code_message": "", "message": ""}
    else:
        body["error_detail"] = {"code": "", "code_message": "", "message": ""}
    body.update(fields)
    return body


def error_envelope(
    request_id: str, log_id: str, style: EnvelopeStyle, status: int, code: str, message: str
) -> dict[str, Any]:
    """An error body; the HTTP status goes with it and equals ``error_code`` (legacy style).

    >>> error_envelope("r", "l", "legacy", 401, "ERROR_USER_NOT_EXISTS", "bad key")["error_code"]
    401
    """
    body: dict[str, Any] = {"request_id": request_id, "log_id": log_id}
    detail: dict[str, Any] = {"code": code, "code_message": message, "message": message}
    if style == "legacy":
        body.update(error_code=status, error_code_str=code, error_msg=message)
        detail = {"status_code": status, **detail}
    body["error_detail"] = detail
    return body
