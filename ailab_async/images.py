"""Image inputs: normalisation and pre-flight validation.

An image is a path (``str`` / ``os.PathLike``), a bytes-like object, or a binary file
object. Before anything is sent we check, per endpoint, what the API would refuse anyway:
the format (by magic bytes, never by file name), the byte size, and the resolution read from
the file header (without decoding the image). A failed check raises
:class:`~ailab_async.errors.ValidationError` naming the input and the rule, and costs no
request.

Paths are streamed from disk for every attempt; file objects are rewound to where they were.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Union

import anyio.to_thread
import attrs

from .errors import ValidationError

__all__ = [
    "SMART_BEAUTY_RULES",
    "SMART_SKIN_RULES",
    "ImageInput",
    "ImageRules",
    "PreparedImage",
    "prepare_image",
    "sniff_dimensions",
    "sniff_format",
]

#: What the SDK accepts as an image.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

_MB = 1024 * 1024

_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "bmp": "image/bmp"}
_EXTENSIONS = {"jpeg": "jpg", "png": "png", "bmp": "bmp"}


@attrs.frozen
class ImageRules:
    """What one endpoint accepts.

    Resolution bounds are exclusive, as the API states them ("larger than 128x128 and
    smaller than 5000x5000"); ``None`` means no bound.
    """

    endpoint: str
    formats: frozenset[str]
    max_bytes: int
    min_side_exclusive: int | None
    max_side_exclusive: int


SMART_SKIN_RULES = ImageRules(
    endpoint="smart-skin",
    formats=frozenset({"jpeg", "png"}),
    max_bytes=6 * _MB,
    min_side_exclusive=128,
    max_side_exclusive=5000,
)
SMART_BEAUTY_RULES = ImageRules(
    endpoint="smart-beauty",
    formats=frozenset({"jpeg", "png", "bmp"}),
    max_bytes=5 * _MB,
    min_side_exclusive=None,
    max_side_exclusive=4096,
)


# --- header sniffing (pure) ----------------------------------------------------------------

#: Reads ``n`` bytes at ``offset`` (fewer at the end of the input).
ReadAt = Callable[[int, int], bytes]


def sniff_format(head: bytes) -> str | None:
    """The image format from its first bytes, or ``None`` if it is none we know."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


# JPEG start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_dimensions(read_at: ReadAt) -> tuple[int, int] | None:
    offset = 2
    # A valid file reaches its frame header within a few dozen segments.
    for _ in range(1000):
        head = read_at(offset, 4)
        if len(head) < 2 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _STANDALONE_MARKERS:
            offset += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if len(head) < 4:
            return None
        (length,) = struct.unpack(">H", head[2:4])
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            frame = read_at(offset + 4, 5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        offset += 2 + length
    return None


def sniff_dimensions(fmt: str, read_at: ReadAt) -> tuple[int, int] | None:
    """Width and height from the header of an image of format ``fmt``, without decoding it."""
    if fmt == "png":
        head = read_at(12, 12)
        if len(head) < 12 or head[:4] != b"IHDR":
            return None
        width, height = struct.unpack(">II", head[4:12])
        return width, height
    if fmt == "bmp":
        head = read_at(14, 12)
        if len(head) < 8:
            return None
        (dib_size,) = struct.unpack("<I", head[:4])
        if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sides
            width, height = struct.unpack("<HH", head[4:8])
            return width, height
        if len(head) < 12:
            return None
        width, height = struct.unpack("<ii", head[4:12])
        return abs(width), abs(height)  # negative height: a top-down bitmap
    if fmt == "jpeg":
        return _jpeg_dimensions(read_at)
    return None


# --- prepared inputs ------------------------------------------------------------------------


@attrs.frozen
class PreparedImage:
    """A validated image, ready to be (re)sent on every attempt."""

    label: str
    format: str
    size: int
    width: int
    height: int
    path: Path | None = attrs.field(default=None, repr=False)
    data: bytes | None = attrs.field(default=None, repr=False)
    fileobj: IO[bytes] | None = attrs.field(default=None, repr=False)
    start: int = attrs.field(default=0, repr=False)

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self.format]

    @property
    def filename(self) -> str:
        # Never the local file name: it would leak to the provider, and names with control
        # characters cannot go in a multipart header anyway.
        return f"image.{_EXTENSIONS[self.format]}"

    @contextlib.contextmanager
    def open(self) -> Iterator[bytes | IO[bytes]]:
        """The body of one attempt: a fresh file handle, the bytes, or the rewound object."""
        if self.path is not None:
            with self.path.open("rb") as handle:
                yield handle
        elif self.fileobj is not None:
            self.fileobj.seek(self.start)
            yield self.fileobj
        else:
            assert self.data is not None
            # A buffer, not raw bytes: aiohttp streams it in chunks (and does not warn that a
            # large bytes body may block the loop). BytesIO shares the bytes, no copy.
            yield io.BytesIO(self.data)


def _label(image: object) -> str:
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    name = getattr(image, "name", None)
    return name if isinstance(name, str) else "<file object>"


def _check(label: str, size: int, read_at: ReadAt, rules: ImageRules) -> tuple[str, int, int]:
    def fail(rule: str, why: str) -> ValidationError:
        return ValidationError(f"{label}: {why} ({rules.endpoint})", input=label, rule=rule)

    if size == 0:
        raise fail("empty", "the image is empty")
    fmt = sniff_format(read_at(0, 32))
    if fmt not in rules.formats:
        allowed = "/".join(sorted(f.upper() for f in rules.formats))
        found = fmt.upper() if fmt else "not a recognised image"
        raise fail("format", f"format {found} is not accepted; use {allowed}")
    if size > rules.max_bytes:
        raise fail("max_bytes", f"{size} bytes is over the {rules.max_bytes // _MB} MB limit")
    dims = sniff_dimensions(fmt, read_at)
    if dims is None:
        raise fail("decodable", "the image header is damaged; its resolution cannot be read")
    width, height = dims
    low, high = rules.min_side_exclusive, rules.max_side_exclusive
    if (low is not None and min(width, height) <= low) or max(width, height) >= high:
        bounds = f"larger than {low}x{low} and " if low is not None else ""
        raise fail(
            "resolution", f"resolution {width}x{height} must be {bounds}smaller than {high}x{high}"
        )
    return fmt, width, height


def prepare_image(image: ImageInput, rules: ImageRules) -> PreparedImage:
    """Normalise and validate ``image`` for an endpoint (blocking: reads a path's header).

    >>> prepare_image(b"not an image", SMART_SKIN_RULES)
    Traceback (most recent call last):
    ...
    ailab_async.errors.ValidationError: <bytes>: format not a recognised image is not ...
    """
    label = _label(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        fmt, width, height = _check(label, len(data), lambda off, n: data[off : off + n], rules)
        return PreparedImage(label, fmt, len(data), width, height, data=data)

    if isinstance(image, (str, os.PathLike)):
        path = Path(os.fspath(image))
        try:
            size = path.stat().st_size
            handle = path.open("rb")
        except FileNotFoundError:
            raise ValidationError(f"{label}: no such file", input=label, rule="exists") from None
        except IsADirectoryError:
            raise ValidationError(
                f"{label}: is a directory, not an image file", input=label, rule="exists"
            ) from None
        except OSError as exc:
            raise ValidationError(
                f"{label}: cannot be read ({exc.strerror})", input=label, rule="readable"
            ) from None
        with handle:
            fmt, width, height = _check(label, size, _file_reader(handle, 0), rules)
        return PreparedImage(label, fmt, size, width, height, path=path)

    if not callable(getattr(image, "read", None)):
        raise ValidationError(
            f"expected a path, bytes or a binary file object, got {type(image).__name__}",
            input=label,
            rule="type",
        )
    fileobj = image
    seekable = getattr(fileobj, "seekable", lambda: False)()
    if not seekable:
        # A stream we cannot rewind could not be re-sent on retry: buffer it once.
        return prepare_image(_read_all(fileobj, label), rules)
    start = fileobj.tell()
    size = fileobj.seek(0, io.SEEK_END) - start
    fileobj.seek(start)
    fmt, width, height = _check(label, size, _file_reader(fileobj, start), rules)
    fileobj.seek(start)
    return PreparedImage(label, fmt, size, width, height, fileobj=fileobj, start=start)


def _read_all(fileobj: IO[bytes], label: str) -> bytes:
    data = fileobj.read()
    if not isinstance(data, (bytes, bytearray)):
        raise ValidationError(
            f"{label}: file object must be opened in binary mode", input=label, rule="type"
        )
    return bytes(data)


def _file_reader(handle: IO[bytes], start: int) -> ReadAt:
    def read_at(offset: int, n: int) -> bytes:
        handle.seek(start + offset)
        chunk = handle.read(n)
        if not isinstance(chunk, (bytes, bytearray)):
            raise ValidationError(
                "file object must be opened in binary mode", input="<file object>", rule="type"
            )
        return bytes(chunk)

    return read_at


async def aprepare_image(image: ImageInput, rules: ImageRules) -> PreparedImage:
    """:func:`prepare_image` without blocking the event loop on disk reads."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return prepare_image(image, rules)
    return await anyio.to_thread.run_sync(prepare_image, image, rules)
