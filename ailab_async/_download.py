"""Fetching result images: checked, capped, streamed, and written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

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
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            written = 0
            async for chunk in response.content.iter_chunked(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise DownloadError(f"download of {shown} exceeds the {max_bytes}-byte cap")
                await anyio.to_thread.run_sync(handle.write, chunk)
            await anyio.to_thread.run_sync(_flush_and_sync, handle)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


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
