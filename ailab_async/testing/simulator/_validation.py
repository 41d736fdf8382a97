"""Server-side request rules, written independently of the client's own validator.

Deliberately imports nothing from the client modules: if both sides shared code, a bug in it
could hide behind agreement.  Everything here is pure except :func:`check_image`, which asks
:mod:`._imaging` to decode.
"""

from __future__ import annotations

import math

import attrs

from ._config import ImageRules
from ._imaging import DecodedImage, decode_image, looks_blank, probe_size

__all__ = [
    "Rejection",
    "check_image",
    "parse_degree",
    "sniff_format",
]


@attrs.frozen
class Rejection:
    """Why a request was refused: the HTTP status, the ``error_detail.code`` and a message."""

    status: int
    code: str
    message: str


def sniff_format(data: bytes) -> str | None:
    """The image format told by the leading bytes (never by a file name), or ``None``.

    >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n....")
    'PNG'
    """
    # Alike the SDK's ``_images.sniff_format`` on purpose, never shared: the simulator is a
    # server the SDK is tested against, so it keeps its own reading of the formats.
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"BM") and len(data) >= 26:
        return "BMP"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    return None


def parse_degree(name: str, raw: str | None, default: float, upper: float) -> float | Rejection:
    """Parse an optional float form field that must lie within ``[0, upper]``."""
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        return Rejection(400, "ERROR_INVALID_PARAMETER", f"{name} must be a number")
    if not (math.isfinite(value) and 0.0 <= value <= upper):
        return Rejection(400, "ERROR_INVALID_PARAMETER", f"{name} must be within [0, {upper}]")
    return value


def check_image(
    field: str, data: bytes, rules: ImageRules, *, blank_is_no_face: bool
) -> DecodedImage | Rejection:
    """Apply ``rules`` to an uploaded image, in the order: empty, format (by content), byte
    size, header readable, resolution, full decode, face.  Returns the decoded image when
    every rule passes.

    Blocking (decodes with Pillow): run it off the event loop.
    """
    if not data:
        return Rejection(400, "MISSING_PARAMETERS", f"{field} is empty")
    fmt = sniff_format(data)
    if fmt is None or fmt not in rules.formats:
        allowed = "/".join(sorted(rules.formats))
        return Rejection(415, "UNSUPPORTED_FILE_TYPES", f"{field}: only {allowed} are supported")
    if len(data) > rules.max_bytes:
        return Rejection(413, "FILE_SIZE_EXCEEDS_LIMIT", f"{field} exceeds {rules.max_bytes} bytes")
    size = probe_size(data)
    if size is None:
        return Rejection(422, "FILE_DECODING_FAILURE", f"{field} could not be decoded")
    width, height = size
    too_big = width >= rules.max_side_exclusive or height >= rules.max_side_exclusive
    low = rules.min_side_exclusive
    too_small = low is not None and (width <= low or height <= low)
    if too_big or too_small:
        bounds = f"smaller than {rules.max_side_exclusive}x{rules.max_side_exclusive}"
        if low is not None:
            bounds = f"larger than {low}x{low} and {bounds}"
        return Rejection(
            413, "FILE_RESOLUTION_EXCEEDS_LIMITS", f"{field} must be {bounds}, got {width}x{height}"
        )
    decoded = decode_image(data)
    if decoded is None:
        return Rejection(422, "FILE_DECODING_FAILURE", f"{field} could not be decoded")
    if blank_is_no_face and looks_blank(decoded):
        return Rejection(422, "ERROR_NO_FACE_IN_FILE", f"no face found in {field}")
    return decoded
