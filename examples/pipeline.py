"""An async pipeline: an async source of photos -> client.map -> an async consumer.

    AILAB_API_KEY=... python examples/pipeline.py PHOTO_DIR OUT_DIR
    python examples/pipeline.py --simulate PHOTO_DIR OUT_DIR

The source is an async generator (it could read a queue or a bucket listing); ``client.map``
keeps a bounded number of photos in progress and yields outcomes as they finish; the consumer
downloads each result and reports failures with their error code, without stopping the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread

from ailab_async import AILabClient, APIError

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


async def photos_from(folder: Path) -> AsyncIterator[Path]:
    """The source stage: photos as they are found (lazily, one at a time)."""

    def listing() -> list[Path]:
        return sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()
        )

    for path in await anyio.to_thread.run_sync(listing):
        yield path  # a real source might read a queue or page through a bucket listing


async def run_pipeline(
    client: AILabClient, source: AsyncIterator[Path], out_dir: Path, *, retouch: float = 0.6
) -> dict[str, int]:
    """Retouch every photo from ``source`` into ``out_dir``; counts by outcome."""
    counts = {"done": 0, "failed": 0}
    outcomes = client.map(client.smart_skin, source, retouch_degree=retouch, concurrency=16)
    async with contextlib.aclosing(outcomes):
        async for outcome in outcomes:
            if outcome.result is not None:
                await client.download(outcome.result, out_dir / f"{outcome.item.stem}.png")
                counts["done"] += 1
            else:
                code = outcome.error.code if isinstance(outcome.error, APIError) else ""
                print(f"failed: {outcome.item.name}: {type(outcome.error).__name__} {code}")
                counts["failed"] += 1
    return counts


async def amain(photo_dir: Path, out_dir: Path, *, simulate: bool) -> dict[str, int]:
    async with contextlib.AsyncExitStack() as stack:
        api_key = base_url = None
        if simulate:
            from ailab_async.testing.simulator import Simulator  # noqa: PLC0415 - needs [simulator]

            sim = await stack.enter_async_context(Simulator())
            api_key, base_url = sim.api_key, sim.url
        client = await stack.enter_async_context(AILabClient(api_key=api_key, base_url=base_url))
        return await run_pipeline(client, photos_from(photo_dir), out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--simulate", action="store_true", help="use a local simulator")
    args = parser.parse_args()
    counts = asyncio.run(amain(args.photo_dir, args.out_dir, simulate=args.simulate))
    print(counts)


if __name__ == "__main__":
    main()
