"""The batch runner with any other endpoint (``BatchCall``): the same journal guarantees.

The simulator's two endpoints are driven as if they were any others (a synchronous one that
answers an image URL, a task one), plus a local server whose endpoint answers JSON only.
Reruns pay nothing; a batch killed mid-run and run again pays only for what was in flight
(the billing ledger of ``tests/_ledger.py``).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from ailab_async import AILabClient, PollingConfig, ValidationError
from ailab_async.batch import BatchCall, BatchSpec, discover_inputs, run_batch
from ailab_async.batch.journal import ItemState, Journal
from ailab_async.testing.simulator import (
    Latency,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
)

from ._killable import run_until_killed
from ._ledger import check_ledger
from .conftest import TEST_KEY, envelope
from .test_batch import make_photos, manifest

SKIN = BatchCall("POST", "/api/portrait/effects/smart-skin", file_field="image")
BEAUTY = BatchCall(
    "POST", "/api/portrait/effects/smart-beauty", file_field="image_target", task=True
)
PARAMS = {SKIN: {"retouch_degree": "0.6"}, BEAUTY: {"task_type": "async"}}
Serve = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        tasks=TaskBehaviour(duration=Uniform(0.01, 0.05), failure_share=0.0), seed=3
    )
    async with Simulator(config) as simulator:
        yield simulator


def client_for(url: str, key: str) -> AILabClient:
    return AILabClient(
        api_key=key,
        base_url=url,
        max_concurrency=8,
        polling=PollingConfig(fallback_interval=0.05, min_interval=0.01),
    )


@pytest.mark.parametrize("call", [SKIN, BEAUTY], ids=["sync", "task"])
async def test_a_batch_of_any_endpoint_writes_json_and_images_then_rerun_is_free(
    sim: Simulator, tmp_path: Path, call: BatchCall
) -> None:
    photos = make_photos(tmp_path / "in", 5)
    out = tmp_path / "out"
    spec = BatchSpec(operation=call, params=PARAMS[call], out_dir=out)
    async with client_for(sim.url, sim.api_key) as client:
        report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
        retries = client.stats.ambiguous_retries
    assert (report.total, report.downloaded, report.failed) == (5, 5, 0)
    for index in range(5):
        data = json.loads((out / "in" / f"p{index:03d}_jpg.json").read_text())
        assert data["image_url"].startswith("http")
        assert (out / "in" / f"p{index:03d}_jpg.png").read_bytes().startswith(b"\x89PNG")
    lines = manifest(out)
    assert {line["state"] for line in lines} == {"downloaded"}
    assert {line["operation"] for line in lines} == {call.value}
    assert all(str(line["output"]).endswith(".json") for line in lines)
    spent = sim.stats.credits_spent

    async with client_for(sim.url, sim.api_key) as client:
        again = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
        retries += client.stats.ambiguous_retries
    assert (again.total, again.skipped) == (5, 5)
    assert sim.stats.credits_spent == spent
    await check_ledger(
        sim, photos, journals=[spec.journal_file], ambiguous_retries=retries, every_input_paid=True
    )


async def test_a_json_only_answer_is_the_output_and_is_not_paid_for_twice(
    serve: Serve, tmp_path: Path
) -> None:
    uploads: list[tuple[bytes, dict[str, str]]] = []

    async def analyse(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["image"]
        assert isinstance(upload, web.FileField)
        uploads.append((upload.file.read(), {k: str(v) for k, v in form.items() if k != "image"}))
        return web.json_response(envelope({"faces": [{"age": 30}], "count": 1}))

    url = await serve(analyse)
    make_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    call = BatchCall("POST", "/api/face/analysis")
    spec = BatchSpec(operation=call, params={"max_face_num": "1"}, out_dir=out, report=False)
    async with client_for(url, TEST_KEY) as client:
        report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
        again = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
    assert (report.downloaded, again.skipped) == (3, 3)
    assert len(uploads) == 3
    assert all(fields == {"max_face_num": "1"} for _, fields in uploads)
    outputs = sorted(path.name for path in (out / "in").iterdir())
    assert outputs == [f"p{i:03d}_jpg.json" for i in range(3)]  # no image, no staging
    assert json.loads((out / "in" / "p000_jpg.json").read_text()) == {
        "count": 1,
        "faces": [{"age": 30}],
    }


def test_a_batch_call_is_checked_when_built() -> None:
    with pytest.raises(ValidationError, match="POST"):
        BatchCall("GET", "/api/common/query-credits")
    with pytest.raises(ValidationError, match="scheme-relative"):
        BatchCall("POST", "//elsewhere.example/api/x")
    with pytest.raises(ValidationError):
        BatchCall("POST", "/api/x", file_field='im"age')
    with pytest.raises(ValidationError):
        BatchSpec(operation=SKIN, params={"flag": True}, out_dir=Path("out"))


# The child's script is written out whole, as a user would write it, like test_batch's (whose
# scenario and checks this one repeats on purpose, for a BatchCall spec).
KILLABLE_BATCH = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from ailab_async import AILabClient, PollingConfig
    from ailab_async.batch import BatchCall, BatchSpec, discover_inputs, run_batch

    async def main(url, key, task, photos, out):
        call = (
            BatchCall("POST", "/api/portrait/effects/smart-beauty", file_field="image_target",
                      task=True)
            if task == "task" else BatchCall("POST", "/api/portrait/effects/smart-skin")
        )
        params = {"task_type": "async"} if task == "task" else {}
        spec = BatchSpec(operation=call, params=params, out_dir=Path(out), concurrency=6)

        def on_event(kind, outcome):
            if kind == "finished":
                print("finished", flush=True)

        polling = PollingConfig(fallback_interval=0.05, min_interval=0.01)
        async with AILabClient(api_key=key, base_url=url, max_concurrency=6,
                               polling=polling) as client:
            await run_batch(client, discover_inputs([photos]), spec, on_event=on_event)
        print("done", flush=True)

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.mark.parametrize("kind", ["sync", "task"])
async def test_a_batch_of_any_endpoint_killed_mid_run_pays_only_for_what_was_in_flight(
    tmp_path: Path, kind: str
) -> None:
    photos = make_photos(tmp_path / "in", 24)
    out = tmp_path / "out"
    call = BEAUTY if kind == "task" else SKIN
    spec = BatchSpec(operation=call, params=PARAMS[call] if kind == "task" else {}, out_dir=out)
    config = SimulatorConfig(
        latency=Latency.everywhere(Uniform(0.02, 0.1)),
        tasks=TaskBehaviour(duration=Uniform(0.05, 0.3)),
        seed=9,
    )
    async with Simulator(config) as sim:
        await run_until_killed(
            KILLABLE_BATCH, sim.url, sim.api_key, kind, str(tmp_path / "in"), str(out)
        )
        async with await Journal.open(spec.journal_file) as journal:
            at_kill = await journal.counts()
        assert 5 <= at_kill[ItemState.DOWNLOADED] < len(photos)

        async with client_for(sim.url, sim.api_key) as client:
            report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
            retries = client.stats.ambiguous_retries
        assert (report.total, report.succeeded, report.failed) == (24, 24, 0)
        assert report.skipped == at_kill[ItemState.DOWNLOADED]
        assert len(list((out / "in").glob("*.json"))) == len(photos)
        assert len(list(out.rglob("*.png"))) == len(photos)
        ledger = await check_ledger(
            sim, photos, journals=[spec.journal_file], ambiguous_retries=retries,
            every_input_paid=True,
        )  # fmt: skip
        resent = sum(bill.interrupted_sends for bill in ledger.inputs)
        assert report.ambiguous_resends == resent
        assert ledger.total_paid <= len(photos) + resent + retries
