"""A headless Chromium driven over the DevTools Protocol, for tests that look at a page.

No new dependency: Chromium (Debian's ``chromium``; ``AILAB_CHROMIUM`` names another binary)
started with ``--remote-debugging-port=0`` writes the port it chose to ``DevToolsActivePort``
in its profile folder; the protocol is JSON over a websocket, spoken here with aiohttp.
:func:`chromium_binary` is ``None`` when there is none, so the tests can skip.

Waiting is on events and on conditions evaluated in the page (a promise that resolves when
the condition holds), never on fixed sleeps; every wait has a generous timeout for a busy
machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

#: Seconds any one wait may take: generous, the machine running the tests may be busy.
TIMEOUT = 90.0

#: Installed in every page before its own scripts: records Content-Security-Policy
#: violations, so a test can assert the page stayed within its policy.
_RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__violations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


def chromium_binary() -> str | None:
    """The Chromium to drive, or ``None``."""
    named = os.environ.get("AILAB_CHROMIUM")
    if named:
        return shutil.which(named)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One browser tab over the DevTools Protocol."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse[bool]) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        #: Every URL the page asked the network stack for (Network.requestWillBeSent).
        self.requests: list[str] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            payload = json.loads(message.data)
            if "id" in payload:
                future = self._pending.pop(payload["id"], None)
                if future is not None and not future.done():
                    future.set_result(payload)
                continue
            method = payload.get("method", "")
            if method == "Network.requestWillBeSent":
                self.requests.append(payload["params"]["request"]["url"])
            for waiter in self._waiters.pop(method, []):
                if not waiter.done():
                    waiter.set_result(payload.get("params", {}))
        for future in self._pending.values():  # the browser went away
            if not future.done():
                future.set_exception(ConnectionError("the browser closed the connection"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a protocol method; its result (raises on a protocol error)."""
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        await self._socket.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, TIMEOUT)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def event(self, method: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``method`` event (ask before causing it)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(method, []).append(future)
        return future

    async def open(self, url: str) -> None:
        """Navigate to ``url`` and wait for its load event."""
        loaded = self.event("Page.loadEventFired")
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(loaded, TIMEOUT)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, condition: str) -> None:
        """Wait until the JavaScript ``condition`` is true in the page (checked each frame)."""
        await self.evaluate(
            "new Promise(function (resolve) { (function check() {"
            f" if ({condition}) {{ resolve(true); }} else {{ requestAnimationFrame(check); }}"
            " })(); })"
        )

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page at ``path``."""
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def browser_page(binary: str, profile: Path) -> AsyncIterator[Page]:
    """A fresh headless Chromium with ``profile`` as its user-data-dir, and one tab in it."""
    profile.mkdir(parents=True, exist_ok=True)
    arguments = [
        binary,
        "--headless",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-extensions",
        "--window-size=1280,900",
        "about:blank",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        arguments.insert(1, "--no-sandbox")  # Chromium refuses to run as root with it
    process = await asyncio.create_subprocess_exec(
        *arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        port = await _devtools_port(profile / "DevToolsActivePort", process)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
            async with session.ws_connect(url, max_msg_size=0) as socket:
                page = Page(socket)
                try:
                    await page.send(
                        "Page.addScriptToEvaluateOnNewDocument", source=_RECORD_VIOLATIONS
                    )
                    await page.send("Page.enable")
                    await page.send("Network.enable")
                    yield page
                finally:
                    await page.close()
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), TIMEOUT)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


async def _devtools_port(path: Path, process: asyncio.subprocess.Process) -> int:
    """The port Chromium wrote to ``DevToolsActivePort`` (it writes it once listening)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + TIMEOUT
    while loop.time() < give_up:
        if process.returncode is not None:
            raise RuntimeError(f"chromium exited with status {process.returncode}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])
        # Polling a file another process writes: nothing to await on; a short pause.
        await asyncio.sleep(0.05)
    raise TimeoutError("chromium wrote no DevToolsActivePort")
