"""A thin raw-HTTP caller for the simulator's tests, so they see exactly what is on the wire."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import attrs

from ailab_async.testing.simulator import Simulator

KEY_HEADER = "ailabapi-api-key"


@attrs.frozen
class Answer:
    status: int
    raw: bytes
    headers: Any
    content_type: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.raw)  # type: ignore[no-any-return]

    @property
    def code(self) -> str:
        return str(self.json["error_detail"]["code"])


class SimApi:
    """Raw calls to a simulator, so the tests see exactly what goes over the wire."""

    def __init__(self, session: aiohttp.ClientSession, sim: Simulator) -> None:
        self.session = session
        self.sim = sim

    @property
    def stats(self) -> Any:
        return self.sim.stats

    async def _answer(self, response: aiohttp.ClientResponse) -> Answer:
        raw = await response.read()
        return Answer(response.status, raw, response.headers, response.content_type)

    def _headers(self, key: str | None) -> dict[str, str]:
        key = self.sim.api_key if key == "default" else key
        return {} if key is None else {KEY_HEADER: key}

    async def post(
        self,
        path: str,
        files: dict[str, bytes],
        fields: dict[str, Any],
        *,
        key: str | None = "default",
        filename: str = "face.jpg",
    ) -> Answer:
        form = aiohttp.FormData()
        for name, data in files.items():
            # BytesIO, not bytes: aiohttp warns about large raw-bytes bodies.
            form.add_field(name, io.BytesIO(data), filename=filename, content_type="image/jpeg")
        for name, value in fields.items():
            form.add_field(name, str(value))
        async with self.session.post(
            self.sim.url + path, data=form, headers=self._headers(key)
        ) as response:
            return await self._answer(response)

    async def skin(
        self,
        image: bytes | None,
        *,
        key: str | None = "default",
        filename: str = "face.jpg",
        **fields: Any,
    ) -> Answer:
        files = {} if image is None else {"image": image}
        return await self.post(
            "/api/portrait/effects/smart-skin", files, fields, key=key, filename=filename
        )

    async def beauty(
        self,
        image: bytes | None,
        *,
        key: str | None = "default",
        filename: str = "face.jpg",
        **fields: Any,
    ) -> Answer:
        fields.setdefault("task_type", "async")
        if fields["task_type"] is None:
            del fields["task_type"]
        files = {} if image is None else {"image_target": image}
        return await self.post(
            "/api/portrait/effects/smart-beauty", files, fields, key=key, filename=filename
        )

    async def query(self, task_id: str | None, *, key: str | None = "default") -> Answer:
        params = {} if task_id is None else {"task_id": task_id}
        async with self.session.get(
            self.sim.url + "/api/common/query-async-task-result",
            params=params,
            headers=self._headers(key),
        ) as response:
            return await self._answer(response)

    async def credits(self, *, key: str | None = "default") -> Answer:
        async with self.session.get(
            self.sim.url + "/api/common/query-credits", headers=self._headers(key)
        ) as response:
            return await self._answer(response)

    async def fetch(self, url: str) -> Answer:
        async with self.session.get(url) as response:
            return await self._answer(response)


SimFactory = Callable[..., Awaitable[SimApi]]
