"""Fetching result images: the decisions around a download, and the atomic write.

The GET itself goes through the dispatcher (retries, the deadline) and the transport (the
wire; never the API key). This module decides whether an answer is an acceptable image
(:func:`refusal`: status, content type, declared size; pure), reads it whole or streams it
to a file under the size cap, and writes the file atomically with the user's umask. Data
flows one way: ``download_to`` -> ``Dispatcher.fetch`` -> ``Transport.fetch`` -> back into
``consume`` here with the streamed answer.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from . import events
from ._dispatch import Dispatcher
from ._threads import to_thread
from ._transport import StreamedResponse
from .errors import DownloadError
from .models import ImageResult, redact_url

DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
_CHUNK = 256 * 1024

#: File extensions for the image types the API returns.
EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/bmp": ".bmp",
    "image/webp": ".webp",
}


def refusal(
    status: int, content_type: str, content_length: int | None, max_bytes: int, shown: str
) -> DownloadError | None:
    """Why a download's answer cannot be taken (before its body is read), or ``None``.

    >>> refusal(200, "image/png", 1024, 4096, "r/1.png") is None
    True
    >>> refusal(503, "text/html", None, 4096, "r/1.png").retryable
    True
    """
    if status != 200:
        # A result URL that no longer works is final; a 5xx or 429 may pass.
        retryable = status >= 500 or status in (408, 429)
        return DownloadError(
            f"download of {shown} answered HTTP {status}", status=status, retryable=retryable
        )
    if not content_type.startswith("image/"):
        return DownloadError(
            f"download of {shown} is not an image (Content-Type {content_type!r})", status=status
        )
    if content_length is not None and content_length > max_bytes:
        return DownloadError(
            f"download of {shown} is {content_length} bytes, over the {max_bytes}-byte cap",
            status=status,
        )
    return None


def _over_the_cap(max_bytes: int, shown: str) -> DownloadError:
    return DownloadError(f"download of {shown} exceeds the {max_bytes}-byte cap")


async def _stream_to_file(
    response: StreamedResponse, dest: Path, max_bytes: int, shown: str
) -> tuple[Path, int]:
    """Write the body next to ``dest`` (``.part``), then rename it into place; return
    ``dest`` and the bytes written.

    The file gets the mode any file the user creates gets (``0o666`` less the umask), not
    ``mkstemp``'s private ``0o600``. No ``.part`` file is left behind on any failure. A
    local write failure (disk full, no permission) is a non-retryable
    :class:`DownloadError` whose ``__cause__`` is the ``OSError``: it is not the server's
    fault, and the result URL stays valid until it expires, so the caller can free space
    and download again.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise _local_write_error(exc, dest, shown) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            await _locally(os.fchmod, handle.fileno(), 0o666 & ~_umask(), dest=dest, shown=shown)
            written = 0
            async for chunk in response.chunks(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise _over_the_cap(max_bytes, shown)
                await _locally(handle.write, chunk, dest=dest, shown=shown)
            await _locally(_flush_and_sync, handle, dest=dest, shown=shown)
        await _locally(os.replace, tmp, dest, dest=dest, shown=shown)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest, written


async def _locally(fn: Callable[..., object], *args: Any, dest: Path, shown: str) -> None:
    """Run a local file operation off the loop; an ``OSError`` becomes a typed error."""
    try:
        await to_thread(fn, *args)
    except OSError as exc:
        raise _local_write_error(exc, dest, shown) from exc


def _local_write_error(exc: OSError, dest: Path, shown: str) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what, code = "the disk is full", "DISK_FULL"
    else:
        what, code = exc.strerror or type(exc).__name__, "LOCAL_WRITE_FAILED"
    return DownloadError(
        f"download of {shown} could not be written to {dest}: {what}; the result URL is "
        "still valid until it expires: fix the destination and download again",
        retryable=False,
        code=code,
    )


_UMASK_LOCK = threading.Lock()


@functools.cache
def _umask() -> int:
    """The process umask, read once. ``/proc`` when it says; else set-and-restore (locked)."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/self/status", encoding="ascii", errors="replace") as status,
    ):
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        # os.umask can only be read by setting it; the window is this one line.
        current = os.umask(0o022)
        os.umask(current)
    return current


def _flush_and_sync(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


async def download_to(
    dispatcher: Dispatcher,
    result: ImageResult | str,
    dest: Path | Callable[[str], Path] | None,
    *,
    max_bytes: int,
    deadline: float | None,
) -> bytes | Path:
    """Fetch ``result``'s image through the dispatcher; bytes, or ``dest`` once written.

    ``dest`` may be a function of the response's content type (``image/png``) returning
    the path, so the file extension can follow what was actually served.
    """
    url = result.image_url if isinstance(result, ImageResult) else result
    shown = redact_url(url)
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise DownloadError(f"refusing to download a non-http(s) URL ({shown})")
    if isinstance(result, ImageResult) and result.expired():
        raise DownloadError(
            f"the result URL expired at {result.expires_at.isoformat()}; "
            "run the operation again to get a fresh one"
        )

    served: list[tuple[str, int]] = []  # what was fetched, for the DownloadDone event

    async def consume(response: StreamedResponse) -> bytes | Path:
        refused = refusal(
            response.status, response.content_type, response.content_length, max_bytes, shown
        )
        if refused is not None:
            raise refused
        if dest is None:
            data = await response.read(max_bytes)
            if data is None:
                raise _over_the_cap(max_bytes, shown)
            served.append((response.content_type, len(data)))
            return data
        target = dest(response.content_type) if callable(dest) else dest
        written, size = await _stream_to_file(response, target, max_bytes, shown)
        served.append((response.content_type, size))
        return written

    fetched = await dispatcher.fetch(url, consume, deadline=deadline)
    hooks = dispatcher.hooks
    if hooks is not None and served:
        content_type, size = served[-1]
        host = urlsplit(url).hostname or ""
        hooks.emit(events.DownloadDone(host, content_type, size, to_file=dest is not None))
    return fetched
