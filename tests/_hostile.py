"""Servers that misbehave, for tests/test_hostile_server.py and tests/test_wire.py.

Two kinds, both on 127.0.0.1 with an ephemeral port: ``aiohttp.web`` servers for answers
HTTP can express, and raw ``asyncio`` TCP servers for what it cannot (junk status lines,
lying Content-Length, broken chunked encoding, stalls at any byte). Every server records
the raw head of every request it receives, so a test can check where the API key went.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from .conftest import TEST_KEY

WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A raw scenario: gets the connection after the request head (and body) were read.
RawScenario = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

KEY_BYTES = TEST_KEY.encode()


class Servers:
    """Starts servers by name; remembers what each saw; closes them all at the end."""

    def __init__(self) -> None:
        #: name -> raw request heads (request line and headers) received, in order.
        self.heads: dict[str, list[bytes]] = {}
        #: name -> bytes of body each server managed to write (for streaming scenarios).
        self.written: dict[str, int] = {}
        #: name -> whether a streaming write failed (the client dropped the connection).
        self.dropped: dict[str, bool] = {}
        self._runners: list[web.AppRunner] = []
        self._raw: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[Any]] = set()

    # -- starting ----------------------------------------------------------------------------

    async def web(self, name: str, handler: WebHandler) -> str:
        """An aiohttp.web server answering every path with ``handler``; its base URL."""
        self.heads.setdefault(name, [])

        async def recording(request: web.Request) -> web.StreamResponse:
            head = f"{request.method} {request.path_qs} HTTP/1.1\r\n".encode()
            head += b"".join(k + b": " + v + b"\r\n" for k, v in request.raw_headers)
            self.heads[name].append(head)
            return await handler(request)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", recording)
        runner = web.AppRunner(app, shutdown_timeout=0.1, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def raw(self, name: str, scenario: RawScenario, *, read_request: bool = True) -> str:
        """A raw TCP server: reads each request (unless told not to), then runs ``scenario``."""
        self.heads.setdefault(name, [])

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                while True:
                    if read_request:
                        head = await _read_request(reader)
                        if head is None:
                            return
                        self.heads[name].append(head)
                    await scenario(reader, writer)
                    if writer.is_closing() or not read_request:
                        return
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            except asyncio.CancelledError:
                # Test teardown. Swallowed: asyncio reports a cancelled connection task as
                # an error of the loop, which would fail the test.
                pass
            finally:
                writer.close()
                # Awaited, so a connection lost with an error (the client went away while a
                # scenario wrote: BrokenPipeError) has that error retrieved here, rather than
                # reported as "never retrieved" whenever the collector frees its future.
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await writer.wait_closed()
                self._connections.discard(task)

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0, limit=2**24)
        self._raw.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    # -- checking ----------------------------------------------------------------------------

    def saw_key(self, name: str) -> bool:
        return any(KEY_BYTES in head for head in self.heads.get(name, []))

    def requests(self, name: str) -> int:
        return len(self.heads.get(name, []))

    async def aclose(self) -> None:
        for task in list(self._connections):
            task.cancel()
        for server in self._raw:
            server.close()
        for runner in self._runners:
            await runner.cleanup()
        for task in list(self._connections):
            with contextlib.suppress(BaseException):
                await task
        for server in self._raw:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)


@contextlib.asynccontextmanager
async def servers() -> AsyncIterator[Servers]:
    started = Servers()
    try:
        yield started
    finally:
        await started.aclose()


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """Read one request's head and body (Content-Length or chunked); its head."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lowered = head.lower()
    length = 0
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if b"transfer-encoding: chunked" in lowered:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return head


# -- building blocks for scenarios -------------------------------------------------------------


def http_head(status_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return status_line + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"


def raw_reply(
    status_line: bytes,
    body: bytes,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_length: int | None = None,
    close: bool = True,
) -> RawScenario:
    """Send exactly these bytes (the Content-Length may lie), then close the connection."""

    async def scenario(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent_headers = [(b"Content-Type", b"application/json")] + (headers or [])
        length = len(body) if content_length is None else content_length
        if length >= 0:
            sent_headers.append((b"Content-Length", str(length).encode()))
        writer.write(http_head(status_line, sent_headers) + body)
        await writer.drain()
        if close:
            writer.close()

    return scenario


def stall(seconds: float = 30.0) -> RawScenario:
    async def scenario(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(seconds)

    return scenario


@functools.cache
def gzip_bomb(decompressed: int) -> bytes:
    """A gzip stream of ``decompressed`` zero bytes (about a thousandth of that on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    out = [packer.compress(block) for _ in range(decompressed // len(block))]
    out.append(packer.flush())
    return b"".join(out)


async def stream_body(
    request: web.Request,
    servers: Servers,
    name: str,
    *,
    total: int,
    chunk: int = 1024 * 1024,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Stream ``total`` bytes of JSON-looking junk, counting what the client took."""
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "application/json", **(headers or {})})
    await response.prepare(request)
    servers.written[name] = 0
    servers.dropped[name] = False
    block = b'{"data": "' + b"x" * (chunk - 10)
    try:
        while servers.written[name] < total:
            await response.write(block)
            servers.written[name] += len(block)
    except (ConnectionError, RuntimeError):
        servers.dropped[name] = True
        return response
    await response.write_eof()
    return response


def hang_after_upload(arrived: asyncio.Event) -> WebHandler:
    """Read the whole request, set ``arrived``, then answer nothing for 30 s."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        arrived.set()
        await asyncio.sleep(30)
        return web.json_response({})

    return handler


def redirect_to(location: str) -> WebHandler:
    """Answer every request with ``302 Found`` to ``location``."""

    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(location)

    return handler
