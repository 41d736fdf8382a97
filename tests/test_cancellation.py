"""Callers cancelled at random points leave nothing behind: slots, tasks, sessions, journal."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from pathlib import Path

import pytest

from ailab_async import AILabClient, PollingConfig
from ailab_async.batch import BatchSpec, Operation, discover_inputs, run_batch
from ailab_async.batch.journal import ItemState, Journal
from ailab_async.testing.simulator import (
    Faults,
    Latency,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)


def other_tasks() -> set[asyncio.Task[object]]:
    """Tasks other than this test's, leaving out the in-process simulator's own handlers."""
    return {
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and not getattr(t.get_coro(), "__qualname__", "").startswith("RequestHandler.")
    }


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_cancellations_release_everything(seed: int) -> None:
    asyncio.get_running_loop().set_debug(True)
    rng = random.Random(seed)
    config = SimulatorConfig(
        latency=Latency(smart_skin=Uniform(0.01, 0.08), smart_beauty=Uniform(0.01, 0.05)),
        tasks=TaskBehaviour(duration=Uniform(0.05, 0.3)),
        faults=Faults(error_503=0.2),  # some callers are cancelled during backoff
        seed=seed,
    )
    small = [sample_image(160, 160, seed=i) for i in range(40)]
    big = sample_image(1800, 1800, seed=99)  # ~ a slower upload, to be cut mid-way
    async with Simulator(config) as sim:
        client = AILabClient(
            api_key=sim.api_key,
            base_url=sim.url,
            max_concurrency=4,
            backoff_initial=0.05,
            backoff_max=0.2,
            polling=PollingConfig(fallback_interval=0.05, min_interval=0.01),
        )
        before = other_tasks()
        try:
            outcomes = await cancel_at_random(client, small, big, rng)
            assert any(isinstance(o, asyncio.CancelledError) for o in outcomes)
            assert any(not isinstance(o, BaseException) for o in outcomes)
            gc.collect()  # the handles of cancelled smart_beauty calls are unreachable now
            await settle()
            # The tracker keeps only tasks somebody can still read; all of them unanswered.
            assert client.tracker.pending == 0
            assert all(not t.future.done() for t in client._tracker._pending.values())
            session = client._sessions._session
        finally:
            await client.aclose()
        await settle()
        # Every slot is back; nothing counts as in flight; the session is closed.
        assert client.stats.in_flight == 0
        assert client._dispatcher._slots.free == 4
        assert session is None or session.closed
        leftover = other_tasks() - before
        assert leftover == set(), [repr(t) for t in leftover]  # no tracker, poll, request task


async def cancel_at_random(
    client: AILabClient, small: list[bytes], big: bytes, rng: random.Random
) -> list[object]:
    """Forty calls (skin, beauty, big uploads), most cancelled at a random moment."""

    async def call(index: int) -> object:
        kind = index % 3
        if kind == 0:
            return await client.smart_skin(small[index])
        if kind == 1:
            return await client.smart_beauty(small[index])
        return await client.smart_skin(big)

    callers = [asyncio.create_task(call(i)) for i in range(len(small))]
    loop = asyncio.get_running_loop()
    for index, caller in enumerate(callers):
        # A few are never cancelled, so some calls finish however slow the machine is.
        if index % 10 != 9:
            loop.call_later(rng.uniform(0.0, 0.4), caller.cancel)
    return await asyncio.gather(*callers, return_exceptions=True)


async def test_cancelling_a_batch_leaves_a_consistent_journal_that_resumes(
    tmp_path: Path,
) -> None:
    asyncio.get_running_loop().set_debug(True)
    photos = tmp_path / "in"
    photos.mkdir()
    for i in range(24):
        (photos / f"p{i:02d}.jpg").write_bytes(sample_image(160, 160, seed=i))
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Uniform(0.05, 0.3)), seed=5)
    spec = BatchSpec(
        operation=Operation.BEAUTY, params={"beauty_level": 0.5}, out_dir=tmp_path / "o"
    )
    polling = PollingConfig(fallback_interval=0.05, min_interval=0.01)
    async with Simulator(config) as sim:
        finished = 0
        enough = asyncio.Event()

        def on_event(kind: str, _outcome: object) -> None:
            nonlocal finished
            if kind == "finished":
                finished += 1
                if finished == 6:
                    enough.set()

        async with AILabClient(api_key=sim.api_key, base_url=sim.url, polling=polling) as client:
            batch = asyncio.create_task(
                run_batch(client, discover_inputs([photos]), spec, on_event=on_event)
            )
            await asyncio.wait_for(enough.wait(), timeout=30)
            batch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batch
        async with await Journal.open(spec.journal_file) as journal:
            entries = await journal.entries()
        states = {e.state for e in entries}
        assert states <= set(ItemState)
        assert ItemState.DOWNLOADED in states  # some work was done before the cancel
        for entry in entries:
            if entry.state is ItemState.SUBMITTED:
                assert entry.task_id
            if entry.state is ItemState.DOWNLOADED:
                assert entry.output_path
                assert Path(entry.output_path).is_file()
        submitted_before = sim.stats.count("smart-beauty")

        async with AILabClient(api_key=sim.api_key, base_url=sim.url, polling=polling) as client:
            report = await run_batch(client, discover_inputs([photos]), spec)
        assert report.failed == 0
        assert report.total == 24
        assert sim.stats.duplicate_submits() <= sum(
            1 for e in entries if e.state is ItemState.SENDING
        )
        assert sim.stats.count("smart-beauty") - submitted_before <= 24 - sum(
            1 for e in entries if e.state in (ItemState.SUBMITTED, ItemState.DOWNLOADED)
        )
