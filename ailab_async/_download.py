"""Fetching result images: checked, capped, streamed, and written atomically."""

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

import aiohttp
import anyio.to_thread

from ._dispatch import Dispatcher
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


def _check_response(response: aiohttp.ClientResponse, max_bytes: int, shown: str) -> None:
    if response.status != 200:
        # A result URL that no longer works is final; a 5xx or 429 may pass.
        retryable = response.status >= 500 or response.status in (408, 429)
        raise DownloadError(
            f"download of {shown} answered HTTP {response.status}",
            status=response.status,
            retryable=retryable,
        )
    if not response.content_type.startswith("image/"):
        raise DownloadError(
            f"download of {shown} is not an image (Content-Type {response.content_type!r})",
            status=response.status,
        )
    length = response.content_length
    if length is not None and length > max_bytes:
        raise DownloadError(
            f"download of {shown} is {length} bytes, over the {max_bytes}-byte cap",
            status=response.status,
        )


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int, shown: str) -> bytes:
    data = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        data += chunk
        if len(data) > max_bytes:
            raise DownloadError(f"download of {shown} exceeds the {max_bytes}-byte cap")
    return bytes(data)


async def _stream_to_file(
    response: aiohttp.ClientResponse, dest: Path, max_bytes: int, shown: str
) -> Path:
    """Write the body next to ``dest`` (``.part``), then rename it into place.

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
            async for chunk in response.content.iter_chunked(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise DownloadError(f"download of {shown} exceeds the {max_bytes}-byte cap")
                await _locally(handle.write, chunk, dest=dest, shown=shown)
            await _locally(_flush_and_sync, handle, dest=dest, shown=shown)
        await _locally(os.replace, tmp, dest, dest=dest, shown=shown)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


async def _locally(fn: Callable[..., object], *args: Any, dest: Path, shown: str) -> None:
    """Run a local file operation off the loop; an ``OSError`` becomes a typed error."""
    try:
        await anyio.to_thread.run_sync(fn, *args)
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

    async def consume(response: aiohttp.ClientResponse) -> bytes | Path:
        _check_response(response, max_bytes, shown)
        if dest is None:
            return await _read_capped(response, max_bytes, shown)
        target = dest(response.content_type) if callable(dest) else dest
        return await _stream_to_file(response, target, max_bytes, shown)

    return await dispatcher.fetch(url, consume, deadline=deadline)
