"""Load generator for the simulator, run as a separate process by ``test_sim_load.py``.

    python loadgen.py URL KEY --requests 2000 --concurrency 64 --mix mixed|credits|skin

Prints one JSON line: elapsed seconds, requests/second, statuses per endpoint, and checks
of every answer (JSON parsed, envelope shape, unique request ids).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

from ailab_async.testing.simulator import sample_image

KEY_HEADER = "ailabapi-api-key"


async def run(url: str, key: str, total: int, concurrency: int, mix: str) -> dict[str, Any]:
    images = [sample_image(192, 192, seed=500 + i) for i in range(8)]
    statuses: Counter[str] = Counter()
    request_ids: set[str] = set()
    task_ids: list[str] = []
    bad: list[str] = []
    counter = iter(range(total))
    headers = {KEY_HEADER: key}

    def kind(i: int) -> str:
        if mix != "mixed":
            return mix
        slot = i % 10
        if slot < 4:
            return "skin"
        if slot < 7:
            return "beauty"
        if slot < 9 and task_ids:
            return "query"
        return "credits"

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        what = kind(i)
        if what in ("skin", "beauty"):
            form = aiohttp.FormData()
            name = "image" if what == "skin" else "image_target"
            form.add_field(name, io.BytesIO(images[i % len(images)]), filename="f.jpg")
            if what == "beauty":
                form.add_field("task_type", "async")
            path = "/api/portrait/effects/" + ("smart-skin" if what == "skin" else "smart-beauty")
            call = session.post(url + path, data=form, headers=headers)
        elif what == "query":
            call = session.get(
                url + "/api/common/query-async-task-result",
                params={"task_id": task_ids[i % len(task_ids)]},
                headers=headers,
            )
        else:
            call = session.get(url + "/api/common/query-credits", headers=headers)
        async with call as response:
            raw = await response.read()
        statuses[f"{what}:{response.status}"] += 1
        try:
            body = json.loads(raw)
        except ValueError:
            bad.append(f"{what}: not JSON")
            return
        if body.get("error_code") != 0 or body["error_detail"]["code"] != "":
            bad.append(f"{what}: {body['error_detail']['code']}")
        request_ids.add(body["request_id"])
        if what == "beauty":
            task_ids.append(body["task_id"])
        if what == "query" and body.get("task_status") != 2:
            bad.append("query: task not finished")

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            await one(session, i)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": total,
        "elapsed": elapsed,
        "rps": total / elapsed,
        "statuses": dict(statuses),
        "unique_request_ids": len(request_ids),
        "bad": bad[:20],
        "bad_count": len(bad),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--mix", choices=("mixed", "credits", "skin", "beauty"), default="mixed")
    args = parser.parse_args()
    report = asyncio.run(run(args.url, args.key, args.requests, args.concurrency, args.mix))
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
