"""Image inputs: normalisation and pre-flight validation.

An image is a path (``str`` / ``os.PathLike``), a bytes-like object, or a binary file
object. Before anything is sent we check what the endpoint would refuse anyway (its
``ImageRules``, an entry of the endpoint table in :mod:`._endpoints`): the format (by magic
bytes, never by file name), the byte size, and the resolution read from the file header
(without decoding the image). A failed check raises
:class:`~ailab_async.errors.ValidationError` naming the input and the rule, and costs no
request. Nothing here ever waits on input that may never come:

- A path must name a regular file. It is opened without blocking (a FIFO, a device or a
  socket is refused, never waited on) and read from disk again for every retry (a file up
  to 256 KiB is read whole with its check, and its first attempt sends those bytes).
- A file object is read once, when it is checked: only the image's bytes, from its current
  position, and never more than the endpoint's size limit (a huge or endless stream is
  refused after ``max_bytes + 1`` bytes). What was checked is what every attempt sends, and
  the caller's object is left open, at the position it had.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Union

import attrs

from ._endpoints import ImageRules
from ._threads import to_executor
from .errors import AILabError, ValidationError

__all__ = [
    "ImageInput",
    "PreparedImage",
    "aprepare_image",
    "prepare_image",
    "sniff_dimensions",
    "sniff_format",
]

#: What the SDK accepts as an image.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

_MB = 1024 * 1024
_CHUNK = 256 * 1024
#: A file up to this size is read whole in the same worker-thread hop that checks its
#: header, and its first attempt sends those bytes: one hop and one open instead of three
#: hops and two opens, and the first attempt sends exactly what was checked. A retry reads
#: the file afresh, as for a larger file (so a file deleted or changed by then is refused,
#: as before). The transport sends a body this small as one buffer.
READ_WHOLE_LIMIT = 256 * 1024

_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "bmp": "image/bmp"}
_EXTENSIONS = {"jpeg": "jpg", "png": "png", "bmp": "bmp"}


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

# The DIB header sizes decoders know: OS/2 core (12), BITMAPINFOHEADER (40), its V2/V3
# extensions (52, 56), OS/2 2.x (64), V4 (108) and V5 (124). Anything else is not a BMP.
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_PNG_IHDR = struct.pack(">I", 13) + b"IHDR"


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
            # A height of 0 defers it to a DNL marker after the first scan; the caller
            # refuses the zero side (the API does not decode such files).
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        offset += 2 + length
    return None


def _bmp_dimensions(read_at: ReadAt) -> tuple[int, int] | None:
    head = read_at(14, 12)
    if len(head) < 4:
        return None
    (dib_size,) = struct.unpack("<I", head[:4])
    if dib_size not in _BMP_DIB_SIZES:
        return None
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sides
        if len(head) < 8:
            return None
        width, height = struct.unpack("<HH", head[4:8])
        return width, height
    if len(head) < 12:
        return None
    width, height = struct.unpack("<ii", head[4:12])
    if width < 0:  # only the height's sign means something
        return None
    return width, abs(height)  # negative height: a top-down bitmap


def sniff_dimensions(fmt: str, read_at: ReadAt) -> tuple[int, int] | None:
    """Width and height from the header of an image of format ``fmt``, without decoding it.

    ``None`` when the header is damaged or is not one the API's decoder accepts.

    >>> png = b"\\x89PNG\\r\\n\\x1a\\n" + bytes.fromhex("0000000d49484452 00000100 00000080")
    >>> sniff_dimensions("png", lambda offset, n: png[offset : offset + n])
    (256, 128)
    """
    if fmt == "png":
        head = read_at(8, 16)
        if len(head) < 16 or head[:8] != _PNG_IHDR:
            return None
        width, height = struct.unpack(">II", head[8:16])
        return width, height
    if fmt == "bmp":
        return _bmp_dimensions(read_at)
    if fmt == "jpeg":
        return _jpeg_dimensions(read_at)
    return None


# --- labels and failures --------------------------------------------------------------------


def _escaped(text: str) -> str:
    """``text`` with control and other unprintable characters escaped as ``repr`` would.

    Labels end up in messages and terminals: a hostile file name must not inject escape
    sequences. Printable text (any script) is kept as it is.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _label(image: object) -> str:
    """How errors name ``image``: its escaped path or name, never its content."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(image, (str, os.PathLike)):
        try:
            return _escaped(os.fsdecode(image))
        except Exception:  # a PathLike whose __fspath__ fails or returns a non-path
            return "<path>"
    try:
        name = getattr(image, "name", None)
    except Exception:  # a hostile property
        name = None
    return _escaped(name) if isinstance(name, str) else "<file object>"


def _invalid(label: str, rule: str, why: str, endpoint: str | None = None) -> ValidationError:
    where = f" ({endpoint})" if endpoint else ""
    return ValidationError(f"{label}: {why}{where}", input=label, rule=rule)


def _describe(exc: BaseException) -> str:
    """A short, safe account of an exception raised by the caller's file object or disk."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = _escaped(str(exc))
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _reading(label: str) -> Iterator[None]:
    """Turn any failure of a read, seek or tell into a ValidationError naming ``label``."""
    try:
        yield
    except AILabError:
        raise
    except Exception as exc:  # whatever the caller's object (or the disk) raises
        raise _invalid(label, "readable", f"cannot be read ({_describe(exc)})") from exc


# --- paths: regular files only, opened without ever blocking ---------------------------------

# O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting forever (we
# refuse it right after). O_NOCTTY: opening a terminal must not make it ours.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS = (
    os.O_RDONLY
    | _NONBLOCK
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
)

_SPECIAL_FILES = (
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _require_regular(mode: int, label: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise _invalid(label, "exists", "is a directory, not an image file")
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "special file")
    raise _invalid(label, "not_regular", f"is a {kind}, not a regular file")


def _open_regular(path: str, label: str) -> tuple[io.BufferedReader, int]:
    """Open ``path`` for reading if it is a regular file, and its size; never blocks.

    Race-free: the type is checked on the opened descriptor, so a file swapped for a FIFO
    after the first look is still refused.
    """
    if "\x00" in path:
        raise _invalid(label, "path", "is not a valid path (it contains a NUL character)")
    try:
        # A first look, so that devices are not even opened (opening some has effects).
        _require_regular(os.stat(path).st_mode, label)
        fd = os.open(path, _OPEN_FLAGS)
    except AILabError:
        raise
    except FileNotFoundError:
        if os.path.islink(path):
            raise _invalid(label, "exists", "is a symbolic link to a missing file") from None
        raise _invalid(label, "exists", "no such file") from None
    except OSError as exc:  # permission denied, name too long, symlink loop, ...
        raise _invalid(label, "readable", f"cannot be read ({_describe(exc)})") from None
    except ValueError:
        raise _invalid(label, "path", "is not a valid path") from None
    try:
        info = os.fstat(fd)
        _require_regular(info.st_mode, label)
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise _invalid(label, "readable", f"cannot be read ({_describe(exc)})") from None
        raise
    return os.fdopen(fd, "rb"), info.st_size


def _file_reader(handle: IO[bytes], label: str) -> ReadAt:
    def read_at(offset: int, n: int) -> bytes:
        with _reading(label):
            handle.seek(offset)
            return handle.read(n)

    return read_at


# --- prepared inputs ------------------------------------------------------------------------


@attrs.frozen
class PreparedImage:
    """A validated image, ready to be (re)sent on every attempt.

    Either ``path`` (read from disk for every attempt, see :meth:`open`) or ``data`` (the
    caller's bytes, or what was read from a file object; sent as it is, never copied) is
    set. A file up to :data:`READ_WHOLE_LIMIT` also holds the bytes that were checked, for
    its first attempt: :meth:`take_first_attempt` hands them out once.
    """

    label: str
    format: str
    size: int
    width: int
    height: int
    path: Path | None = attrs.field(default=None, repr=False)
    data: bytes | None = attrs.field(default=None, repr=False)
    first_attempt: list[bytes] = attrs.field(factory=list, repr=False, eq=False)

    def take_first_attempt(self) -> bytes | None:
        """A small file's checked bytes the first time (then ``None``: read it afresh)."""
        return self.first_attempt.pop() if self.first_attempt else None

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self.format]

    @property
    def filename(self) -> str:
        # Never the local file name: it would leak to the provider, and names with control
        # characters cannot go in a multipart header anyway.
        return f"image.{_EXTENSIONS[self.format]}"

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        """A fresh handle on the image's file, for one attempt (an image given as a path).

        Raises :class:`~ailab_async.errors.ValidationError` if the file is gone, is no
        longer a regular file, or changed size since it was checked.
        """
        if self.path is None:
            raise TypeError("this image is held in memory (.data): there is no file to open")
        handle, size = _open_regular(os.fspath(self.path), self.label)
        with handle:
            if size != self.size:
                raise _invalid(
                    self.label,
                    "changed",
                    f"the file changed since it was checked ({self.size} -> {size} bytes)",
                )
            yield handle


def _check_format(label: str, head: bytes, rules: ImageRules) -> str:
    fmt = sniff_format(head)
    if fmt not in rules.formats:
        allowed = "/".join(sorted(f.upper() for f in rules.formats))
        found = fmt.upper() if fmt else "not a recognised image"
        raise _invalid(
            label, "format", f"format {found} is not accepted; use {allowed}", rules.endpoint
        )
    return fmt


def _check(label: str, size: int, read_at: ReadAt, rules: ImageRules) -> tuple[str, int, int]:
    def fail(rule: str, why: str) -> ValidationError:
        return _invalid(label, rule, why, rules.endpoint)

    if size == 0:
        raise fail("empty", "the image is empty")
    fmt = _check_format(label, read_at(0, 32), rules)
    if size > rules.max_bytes:
        raise fail("max_bytes", f"{size} bytes is over the {rules.max_bytes // _MB} MiB limit")
    dims = sniff_dimensions(fmt, read_at)
    if dims is None:
        raise fail("decodable", "the image header is damaged; its resolution cannot be read")
    width, height = dims
    if min(width, height) < 1:
        raise fail("resolution", f"resolution {width}x{height} has a zero side")
    low, high = rules.min_side_exclusive, rules.max_side_exclusive
    if (low is not None and min(width, height) <= low) or max(width, height) >= high:
        bounds = f"larger than {low}x{low} and " if low is not None else ""
        raise fail(
            "resolution", f"resolution {width}x{height} must be {bounds}smaller than {high}x{high}"
        )
    return fmt, width, height


def prepare_image(image: ImageInput, rules: ImageRules) -> PreparedImage:
    """Normalise and validate ``image`` for an endpoint (blocking: reads a path's header).

    Every refusal is a :class:`~ailab_async.errors.ValidationError`; nothing here waits on
    a FIFO or device, and a stream is never read past ``rules.max_bytes + 1`` bytes.

    >>> from ailab_async._endpoints import SMART_SKIN_RULES
    >>> prepare_image(b"not an image", SMART_SKIN_RULES)
    Traceback (most recent call last):
    ...
    ailab_async.errors.ValidationError: <bytes>: format not a recognised image is not ...
    """
    if type(image) is bytes:  # the common case: nothing to copy, no read that can fail
        return _prepare_bytes(image, "<bytes>", rules)
    label = _label(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        with _reading(label):  # a released memoryview
            data = bytes(image)
        return _prepare_bytes(data, label, rules)

    if isinstance(image, (str, os.PathLike)):
        try:
            path = os.fsdecode(image)
        except Exception as exc:
            raise _invalid(label, "type", f"is not a usable path ({_describe(exc)})") from exc
        handle, size = _open_regular(path, label)
        with handle:
            if size > READ_WHOLE_LIMIT:
                fmt, width, height = _check(label, size, _file_reader(handle, label), rules)
                return PreparedImage(label, fmt, size, width, height, path=Path(path))
            with _reading(label):
                data = handle.read(size + 1)
        if len(data) != size:
            raise _invalid(label, "changed", "the file changed while it was being read")
        fmt, width, height = _check(label, size, lambda off, n: data[off : off + n], rules)
        return PreparedImage(label, fmt, size, width, height, path=Path(path), first_attempt=[data])

    try:
        readable = callable(getattr(image, "read", None))
    except Exception:
        readable = False
    if not readable:
        raise ValidationError(
            f"expected a path, bytes or a binary file object, got {type(image).__name__}",
            input=label,
            rule="type",
        )
    data = _read_fileobj(image, label, rules)
    if len(data) > rules.max_bytes:
        # Cut short at max_bytes + 1: the true size is unknown. A non-image says so first.
        _check_format(label, data[:32], rules)
        raise _invalid(
            label,
            "max_bytes",
            f"the image is over the {rules.max_bytes // _MB} MiB limit",
            rules.endpoint,
        )
    return _prepare_bytes(data, label, rules)


def _prepare_bytes(data: bytes, label: str, rules: ImageRules) -> PreparedImage:
    fmt, width, height = _check(label, len(data), lambda off, n: data[off : off + n], rules)
    return PreparedImage(label, fmt, len(data), width, height, data=data)


def _read_fileobj(fileobj: Any, label: str, rules: ImageRules) -> bytes:
    """The image's bytes from the caller's object, at most ``max_bytes + 1`` of them.

    Read once, so that every attempt sends what was checked and the HTTP layer never holds
    (or closes) the caller's object; it is left open, where it was.
    """
    if isinstance(fileobj, io.TextIOBase):
        raise _invalid(label, "type", "the file object must be opened in binary mode ('rb')")
    limit = rules.max_bytes + 1
    with _reading(label):
        if getattr(fileobj, "closed", False) is True:
            raise _invalid(label, "closed", "the file object is closed")
        start = _position(fileobj)
        try:
            if type(fileobj) is io.BytesIO and start is not None:
                # No copy for the common case of a BytesIO over bytes read from elsewhere.
                return fileobj.getvalue()[start : start + limit]
            return _read_at_most(fileobj, limit, label)
        finally:
            if start is not None:
                with contextlib.suppress(Exception):
                    fileobj.seek(start)


def _position(fileobj: Any) -> int | None:
    """Where a seekable object stands (to put it back there afterwards), else ``None``."""
    seekable = getattr(fileobj, "seekable", None)
    if not callable(seekable) or not seekable():
        return None
    position = fileobj.tell()
    return position if isinstance(position, int) and position >= 0 else None


def _read_at_most(fileobj: Any, limit: int, label: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        chunk: object = fileobj.read(min(_CHUNK, limit - total))
        if chunk is None:  # a non-blocking stream with nothing to give now
            raise _invalid(label, "readable", "the stream has no data ready (is it non-blocking?)")
        if isinstance(chunk, str):
            raise _invalid(label, "type", "the file object must be opened in binary mode ('rb')")
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise _invalid(label, "type", f"read() returned {type(chunk).__name__}, not bytes")
        if not chunk:
            break
        chunks.append(bytes(chunk))
        total += len(chunks[-1])
    return b"".join(chunks)


async def aprepare_image(image: ImageInput, rules: ImageRules) -> PreparedImage:
    """:func:`prepare_image` without blocking the event loop on disk reads.

    Cancelling the caller does not wait for the worker thread (a caller's stream may block
    in ``read()``): the thread's result is dropped.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return prepare_image(image, rules)
    return await to_executor(prepare_image, image, rules)
