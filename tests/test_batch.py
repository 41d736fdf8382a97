"""The batch runner on the simulator: outputs, manifest, resume without paying twice."""

from __future__ import annotations

import datetime as dt
import errno
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ailab_async import AILabClient, PollingConfig, _download
from ailab_async._download import EXTENSIONS
from ailab_async.batch import (
    BatchItem,
    BatchSpec,
    How,
    ItemOutcome,
    Operation,
    discover_inputs,
    planned_actions,
    run_batch,
    safe_output_path,
)
from ailab_async.batch.journal import (
    ItemIdentity,
    ItemState,
    Journal,
    JournalAccount,
    JournalAccountError,
    JournalBusyError,
    ResumeAction,
)
from ailab_async.testing.simulator import (
    Latency,
    ManualClock,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)

from ._killable import run_until_killed
from ._ledger import check_ledger


def make_photos(folder: Path, count: int, *, start_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"p{i:03d}.jpg"
        path.write_bytes(sample_image(200, 200, seed=start_seed + i))
        paths.append(path)
    return paths


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        tasks=TaskBehaviour(duration=Uniform(0.01, 0.05), failure_share=0.0), seed=3
    )
    async with Simulator(config) as simulator:
        yield simulator


def client_for(sim: Simulator) -> AILabClient:
    return AILabClient(
        api_key=sim.api_key,
        base_url=sim.url,
        max_concurrency=8,
        polling=PollingConfig(fallback_interval=0.05, min_interval=0.01),
    )


def manifest(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("operation", [Operation.SKIN, Operation.BEAUTY])
async def test_batch_writes_outputs_and_manifest_then_rerun_is_free(
    sim: Simulator, tmp_path: Path, operation: Operation
) -> None:
    photos = make_photos(tmp_path / "in" / "sub", 6)
    out = tmp_path / "out"
    params = {"retouch_degree": 0.6} if operation is Operation.SKIN else {"beauty_level": 1}
    spec = BatchSpec(operation=operation, params=params, out_dir=out)
    async with client_for(sim) as client:
        report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
    assert (report.total, report.downloaded, report.failed) == (6, 6, 0)
    outputs = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert outputs == [Path("in/sub") / f"p{i:03d}_jpg.png" for i in range(6)]
    for path in outputs:
        assert (out / path).read_bytes().startswith(b"\x89PNG")
    lines = manifest(out)
    assert len(lines) == 6
    assert {line["state"] for line in lines} == {"downloaded"}
    assert all("image_url" not in line for line in lines)
    billed = sim.stats.credits_spent
    retries = client.stats.ambiguous_retries

    async with client_for(sim) as client:
        again = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
    assert (again.total, again.skipped, again.downloaded) == (6, 6, 0)
    assert sim.stats.credits_spent == billed  # nothing paid twice
    assert sim.stats.duplicate_submits() == 0
    await check_ledger(
        sim,
        photos,
        journals=[spec.journal_file],
        ambiguous_retries=retries + client.stats.ambiguous_retries,
        every_input_paid=True,
    )


async def test_rerun_tracks_submitted_tasks_instead_of_resubmitting(
    sim: Simulator, tmp_path: Path
) -> None:
    [photo] = make_photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    spec = BatchSpec(operation=Operation.BEAUTY, params={"beauty_level": 0.5}, out_dir=out)
    # A previous run submitted the task and was killed before the result came back.
    async with client_for(sim) as client:
        task = await client.submit_smart_beauty(photo, beauty_level=0.5)
    async with await Journal.open(spec.journal_file) as journal:
        entry = await journal.claim(
            ItemIdentity.for_path(photo),
            Operation.BEAUTY.value,
            {"beauty_level": 0.5},
            source=str(photo),
            relative=photo.name,
        )
        await journal.mark_sending(entry.item_id)
        await journal.mark_submitted(
            entry.item_id,
            task_id=task.task_id,
            request_id=None,
            log_id=None,
            submitted_at=dt.datetime.now(dt.timezone.utc),
        )
    async with client_for(sim) as client:
        report = await run_batch(client, discover_inputs([photo]), spec)
    assert (report.downloaded, report.resumed) == (1, 1)
    assert sim.stats.count("smart-beauty") == 1  # the task was tracked, not resubmitted
    assert manifest(out)[0]["task_id"] == task.task_id
    await check_ledger(
        sim,
        [photo],
        journals=[spec.journal_file],
        ambiguous_retries=client.stats.ambiguous_retries,
    )


async def test_failed_items_are_isolated_and_retried_only_when_asked(
    tmp_path: Path,
) -> None:
    config = SimulatorConfig(blank_is_no_face=True, seed=1)
    photos = make_photos(tmp_path / "in", 3)
    blank = tmp_path / "in" / "blank.png"
    Image.new("RGB", (300, 300), (128, 128, 128)).save(blank)
    (tmp_path / "in" / "notes.txt").write_text("not a photo")  # ignored: not an image name
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=tmp_path / "out")
    async with Simulator(config) as sim:
        async with client_for(sim) as client:
            report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
        assert (report.total, report.downloaded, report.failed) == (4, 3, 1)
        assert report.errors_by_code == {"ERROR_NO_FACE_IN_FILE": 1}
        failed = [line for line in manifest(tmp_path / "out") if line["state"] == "failed"]
        assert failed[0]["retryable"] is False
        assert failed[0]["input"] == str(blank)
        spent = sim.stats.credits_spent

        async with client_for(sim) as client:
            rerun = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
        assert (rerun.skipped, rerun.failed) == (3, 1)
        assert sim.stats.count("smart-skin") == 4  # the non-retryable failure was not resent

        retry = BatchSpec(
            operation=Operation.SKIN, params={}, out_dir=tmp_path / "out", retry_failed=True
        )
        async with client_for(sim) as client:
            await run_batch(client, discover_inputs([tmp_path / "in"]), retry)
        assert sim.stats.count("smart-skin") == 5
        assert sim.stats.credits_spent == spent
        await check_ledger(sim, [*photos, blank], journals=[spec.journal_file])
    assert len(photos) == 3


async def test_validation_failures_are_journaled_without_a_request(
    sim: Simulator, tmp_path: Path
) -> None:
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(sample_image(64, 64, fmt="PNG"))
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=tmp_path / "out")
    async with client_for(sim) as client:
        report = await run_batch(client, discover_inputs([tiny]), spec)
    assert report.errors_by_code == {"VALIDATION_RESOLUTION": 1}
    assert sim.stats.count() == 0
    await check_ledger(sim, [tiny], journals=[spec.journal_file])
    async with await Journal.open(spec.journal_file) as journal:
        [entry] = await journal.entries()
    assert entry.state is ItemState.FAILED
    assert entry.retryable is False


async def test_an_input_that_vanishes_fails_alone(sim: Simulator, tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "in", 3)
    items = list(discover_inputs([tmp_path / "in"]))
    photos[1].unlink()  # gone between discovery and processing
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=tmp_path / "out")
    async with client_for(sim) as client:
        report = await run_batch(client, items, spec)
    assert (report.total, report.downloaded, report.failed) == (3, 2, 1)
    assert list(report.errors_by_code) == ["FileNotFoundError"]
    await check_ledger(sim, [photos[0], photos[2]], journals=[spec.journal_file])


# --- failures after the paid step: never paid again -------------------------------------------


def _failing_results(sim: Simulator, status: int = 503) -> dict[str, bool]:
    """Make the simulator's result URLs answer ``status`` while ``switch["on"]``."""
    switch = {"on": True}

    @web.middleware
    async def failing(request: web.Request, handler: Any) -> web.StreamResponse:
        if switch["on"] and request.path.startswith("/results/"):
            return web.Response(status=status, text="try later")
        response: web.StreamResponse = await handler(request)
        return response

    sim.app.middlewares.append(failing)  # before the simulator starts
    return switch


def _impatient_client(sim: Simulator, **options: Any) -> AILabClient:
    """A client that gives up quickly: one fast retry, a short task timeout."""
    return AILabClient(
        api_key=sim.api_key,
        base_url=sim.url,
        max_concurrency=8,
        max_retries=1,
        backoff_initial=0.01,
        backoff_max=0.02,
        polling=PollingConfig(fallback_interval=0.05, min_interval=0.01),
        **options,
    )


@pytest.mark.parametrize("retry_failed", [False, True])
async def test_task_slower_than_the_timeout_is_tracked_again_not_resubmitted(
    tmp_path: Path, retry_failed: bool
) -> None:
    photos = make_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    clock = ManualClock()  # the tasks finish only when the test says
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Uniform(5.0, 6.0)), seed=5)
    spec = BatchSpec(operation=Operation.BEAUTY, params={"beauty_level": 0.5}, out_dir=out)
    async with Simulator(config, clock=clock) as sim:
        async with _impatient_client(sim, task_timeout=0.2) as client:
            report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
            retries = client.stats.ambiguous_retries
        # Not done, and said so, but the tasks are still the journal's.
        assert (report.total, report.downloaded, report.failed, report.resumable) == (3, 0, 3, 3)
        assert report.errors_by_code == {"TaskTimeoutError": 3}
        lines = manifest(out)
        assert {(line["state"], line["error_code"]) for line in lines} == {
            ("submitted", "TaskTimeoutError")
        }
        assert all(line["task_id"] for line in lines)

        clock.advance(10.0)
        rerun_spec = attrs.evolve(spec, retry_failed=retry_failed)
        async with client_for(sim) as client:
            rerun = await run_batch(client, discover_inputs([tmp_path / "in"]), rerun_spec)
            retries += client.stats.ambiguous_retries
        assert (rerun.downloaded, rerun.resumed, rerun.failed) == (3, 3, 0)
        assert sim.stats.count("smart-beauty") == 3  # tracked, never resubmitted
        assert {line["error_code"] for line in manifest(out)} == {None}
        await check_ledger(
            sim, photos, journals=[spec.journal_file], ambiguous_retries=retries,
            every_input_paid=True,
        )  # fmt: skip


@pytest.mark.parametrize("operation", [Operation.SKIN, Operation.BEAUTY])
@pytest.mark.parametrize("retry_failed", [False, True])
async def test_download_503_is_downloaded_again_not_run_again(
    tmp_path: Path, operation: Operation, retry_failed: bool
) -> None:
    photos = make_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Uniform(0.01, 0.05)), seed=2)
    spec = BatchSpec(operation=operation, params={}, out_dir=out)
    sim = Simulator(config)
    results_fail = _failing_results(sim, 503)
    async with sim:
        async with _impatient_client(sim) as client:
            report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
            retries = client.stats.ambiguous_retries
        assert (report.downloaded, report.failed, report.resumable) == (0, 3, 3)
        assert {line["state"] for line in manifest(out)} == {"succeeded"}
        assert all(line["error_code"] for line in manifest(out))
        assert not list(out.rglob("*.png"))  # nothing half-written left behind

        results_fail["on"] = False
        rerun_spec = attrs.evolve(spec, retry_failed=retry_failed)
        async with client_for(sim) as client:
            rerun = await run_batch(client, discover_inputs([tmp_path / "in"]), rerun_spec)
            retries += client.stats.ambiguous_retries
        assert (rerun.downloaded, rerun.resumed, rerun.failed) == (3, 3, 0)
        assert sim.stats.count(operation.value) == 3
        assert sorted(p.name for p in out.rglob("*.png")) == [
            "p000_jpg.png",
            "p001_jpg.png",
            "p002_jpg.png",
        ]
        await check_ledger(
            sim, photos, journals=[spec.journal_file], ambiguous_retries=retries,
            every_input_paid=True,
        )  # fmt: skip


@pytest.mark.parametrize("retry_failed", [False, True])
async def test_full_disk_is_downloaded_again_not_run_again(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry_failed: bool
) -> None:
    photos = make_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=out)

    def disk_full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(_download, "_flush_and_sync", disk_full)
        async with client_for(sim) as client:
            report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
            retries = client.stats.ambiguous_retries
    assert (report.downloaded, report.failed, report.resumable) == (0, 3, 3)
    assert {line["state"] for line in manifest(out)} == {"succeeded"}
    assert {line["error_code"] for line in manifest(out)} == {"DISK_FULL"}
    assert not [p for p in out.rglob("*") if ".png" in p.name or ".staging" in p.name]

    rerun_spec = attrs.evolve(spec, retry_failed=retry_failed)
    async with client_for(sim) as client:
        rerun = await run_batch(client, discover_inputs([tmp_path / "in"]), rerun_spec)
        retries += client.stats.ambiguous_retries
    assert (rerun.downloaded, rerun.resumed, rerun.failed) == (3, 3, 0)
    assert sim.stats.count("smart-skin") == 3
    await check_ledger(
        sim, photos, journals=[spec.journal_file], ambiguous_retries=retries,
        every_input_paid=True,
    )  # fmt: skip


async def test_a_dead_result_url_is_run_again(tmp_path: Path) -> None:
    """The one case where paying again is right: the result is gone (404 on its URL)."""
    [photo] = make_photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=out)
    sim = Simulator(SimulatorConfig(seed=4))
    results_gone = _failing_results(sim, 404)
    async with sim:
        async with _impatient_client(sim) as client:
            report = await run_batch(client, discover_inputs([photo]), spec)
        assert (report.failed, report.resumable) == (1, 0)
        [line] = manifest(out)
        assert (line["state"], line["retryable"]) == ("failed", True)
        results_gone["on"] = False
        async with client_for(sim) as client:
            rerun = await run_batch(client, discover_inputs([photo]), spec)
        assert (rerun.downloaded, rerun.failed) == (1, 0)
        await check_ledger(sim, [photo], journals=[spec.journal_file], rerun_allowed={photo: 1})


# --- an interrupted send is counted -----------------------------------------------------------


async def test_a_send_interrupted_by_a_crash_is_resent_and_counted(
    sim: Simulator, tmp_path: Path
) -> None:
    photos = make_photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=out)
    # A previous run wrote SENDING for the first photo, sent it (and was billed), then died.
    async with client_for(sim) as client:
        await client.smart_skin(photos[0])
    async with await Journal.open(spec.journal_file) as journal:
        entry = await journal.claim(
            ItemIdentity.for_path(photos[0]),
            Operation.SKIN.value,
            {},
            source=str(photos[0]),
            relative=f"in/{photos[0].name}",
        )
        await journal.mark_sending(entry.item_id)
    async with client_for(sim) as client:
        report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
    assert (report.downloaded, report.ambiguous_resends) == (2, 1)
    resends = {line["relative"]: line["interrupted_sends"] for line in manifest(out)}
    assert resends == {"in/p000.jpg": 1, "in/p001.jpg": 0}
    ledger = await check_ledger(sim, photos, journals=[spec.journal_file])
    assert [bill.paid for bill in ledger.inputs] == [2, 1]  # the resend is why it paid twice


# --- one output per input ---------------------------------------------------------------------


async def test_two_inputs_wanting_one_output_both_keep_their_result(
    sim: Simulator, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    # The simulator serves PNG: a.jpg becomes a_jpg.png, which a_jpg.png also wants.
    (folder / "a.jpg").write_bytes(sample_image(200, 200, seed=1))
    (folder / "a_jpg.png").write_bytes(sample_image(200, 200, seed=2, fmt="PNG"))
    (folder / "A_JPG.png").write_bytes(sample_image(200, 200, seed=3, fmt="PNG"))
    out = tmp_path / "out"
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=out)
    async with client_for(sim) as client:
        report = await run_batch(client, discover_inputs([folder]), spec)
    assert (report.downloaded, report.failed) == (3, 0)
    outputs = {line["input"]: line["output"] for line in manifest(out)}
    assert len({o.casefold() for o in outputs.values()}) == 3
    written = {p.read_bytes() for p in out.rglob("*.png")}
    assert len(written) == 3  # three different results on disk: none overwritten
    async with client_for(sim) as client:
        rerun = await run_batch(client, discover_inputs([folder]), spec)
    assert rerun.skipped == 3
    assert {line["input"]: line["output"] for line in manifest(out)} == outputs  # stable
    await check_ledger(sim, sorted(folder.iterdir()), journals=[spec.journal_file])


_SUFFIXES = sorted(set(EXTENSIONS.values()) | {".img"})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.lists(
        st.tuples(
            st.sampled_from(["a", "A", "a_jpg", "a_png", "a.jpg", "a~2", "b", "x/a", "X/a"]),
            st.sampled_from(["", ".jpg", ".png", ".JPG", ".bmp", ".webp"]),
            st.sampled_from(_SUFFIXES),
        ),
        min_size=1,
        max_size=12,
    )
)
async def test_output_reservation_is_injective_and_stable(
    names: list[tuple[str, str, str]],
) -> None:
    out = Path("/out")
    async with await Journal.open(":memory:") as journal:
        chosen = []
        for number, (stem, ext, served) in enumerate(names):
            entry = await journal.claim(
                ItemIdentity(f"id-{number}"), "smart-skin", {}, source="s", relative="r"
            )
            wanted = safe_output_path(out, stem + ext, served)
            chosen.append(await journal.reserve_output(entry.item_id, str(wanted)))
            assert chosen[-1].endswith(served)
        assert len({c.casefold() for c in chosen}) == len(chosen)  # one file per input
        for number, (stem, ext, served) in enumerate(names):  # a rerun gets the same paths
            wanted = safe_output_path(out, stem + ext, served)
            assert await journal.reserve_output(number + 1, str(wanted)) == chosen[number]


# --- killed mid-batch ---------------------------------------------------------------------------

KILLABLE_BATCH = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from ailab_async import AILabClient, PollingConfig
    from ailab_async.batch import BatchSpec, Operation, discover_inputs, run_batch

    async def main(url, key, operation, photos, out):
        spec = BatchSpec(operation=Operation(operation), params={}, out_dir=Path(out),
                         concurrency=6)

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


@pytest.mark.parametrize("operation", [Operation.SKIN, Operation.BEAUTY])
async def test_killed_mid_batch_then_rerun_pays_only_for_what_was_in_flight(
    tmp_path: Path, operation: Operation
) -> None:
    photos = make_photos(tmp_path / "in", 24)
    out = tmp_path / "out"
    spec = BatchSpec(operation=operation, params={}, out_dir=out)
    # Slow enough that requests, tasks and downloads are in flight at the kill.
    config = SimulatorConfig(
        latency=Latency.everywhere(Uniform(0.02, 0.1)),
        tasks=TaskBehaviour(duration=Uniform(0.05, 0.3)),
        seed=9,
    )
    async with Simulator(config) as sim:
        await run_until_killed(
            KILLABLE_BATCH, sim.url, sim.api_key, operation.value, str(tmp_path / "in"), str(out)
        )
        async with await Journal.open(spec.journal_file) as journal:
            at_kill = await journal.counts()
        assert 5 <= at_kill[ItemState.DOWNLOADED] < len(photos)

        async with client_for(sim) as client:
            report = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
            retries = client.stats.ambiguous_retries
        assert (report.total, report.succeeded, report.failed) == (24, 24, 0)
        assert report.skipped == at_kill[ItemState.DOWNLOADED]
        assert {line["state"] for line in manifest(out)} == {"downloaded"}
        assert len(list(out.rglob("*.png"))) == len(photos)
        # The killed child could not report its client's counts; no faults were injected,
        # so it made no ambiguous retries: its in-flight sends are the journal's.
        ledger = await check_ledger(
            sim, photos, journals=[spec.journal_file], ambiguous_retries=retries,
            every_input_paid=True,
        )  # fmt: skip
        resent = sum(bill.interrupted_sends for bill in ledger.inputs)
        assert report.ambiguous_resends == resent
        assert ledger.total_paid <= len(photos) + resent


async def test_a_journal_of_another_account_is_refused_before_anything_is_sent(
    sim: Simulator, tmp_path: Path
) -> None:
    photos = make_photos(tmp_path / "in", 2)
    mine = JournalAccount.for_key(sim.url, sim.api_key)
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=tmp_path / "out", account=mine)
    async with client_for(sim) as client:
        await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
    spent = sim.stats.count()
    theirs = attrs.evolve(spec, account=JournalAccount.for_key(sim.url, "someone-else-key"))
    async with client_for(sim) as client:
        with pytest.raises(JournalAccountError, match="another API key"):
            await run_batch(client, discover_inputs([tmp_path / "in"]), theirs)
    assert sim.stats.count() == spent
    await check_ledger(sim, photos, journals=[spec.journal_file], every_input_paid=True)


async def test_run_batch_checks_the_clients_own_account_by_default(
    sim: Simulator, tmp_path: Path
) -> None:
    """Without ``spec.account``, the journal records the client's base URL and key
    fingerprint, and a client of another key is refused before anything is sent."""
    photos = make_photos(tmp_path / "in", 2)
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=tmp_path / "out")
    async with client_for(sim) as client:
        await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
    spent = sim.stats.count()
    other_key = AILabClient(api_key="someone-else-key", base_url=sim.url)
    async with other_key:
        with pytest.raises(JournalAccountError, match="another API key"):
            await run_batch(other_key, discover_inputs([tmp_path / "in"]), spec)
        # A journal that belongs to no account (a throw-away simulator) may opt out.
        unchecked = attrs.evolve(spec, check_account=False)
        report = await run_batch(other_key, discover_inputs([tmp_path / "in"]), unchecked)
    assert report.skipped == 2
    assert sim.stats.count() == spent
    assert "someone-else-key" not in spec.journal_file.read_bytes().decode("latin-1")
    await check_ledger(sim, photos, journals=[spec.journal_file], every_input_paid=True)


async def test_an_older_journals_failed_timeout_is_tracked_not_resubmitted(
    sim: Simulator, tmp_path: Path
) -> None:
    [photo] = make_photos(tmp_path / "in", 1)
    spec = BatchSpec(operation=Operation.BEAUTY, params={}, out_dir=tmp_path / "out")
    # What the code before schema 2 wrote when waiting for a task timed out.
    async with client_for(sim) as client:
        task = await client.submit_smart_beauty(photo)
    async with await Journal.open(spec.journal_file) as journal:
        entry = await journal.claim(
            ItemIdentity.for_path(photo), Operation.BEAUTY.value, {}, source=str(photo),
            relative=photo.name,
        )  # fmt: skip
        await journal.mark_sending(entry.item_id)
        await journal.mark_submitted(
            entry.item_id, task_id=task.task_id, request_id=None, log_id=None,
            submitted_at=dt.datetime.now(dt.timezone.utc),
        )  # fmt: skip
        await journal.mark_failed(
            entry.item_id, code="TaskTimeoutError", message="gave up", retryable=True
        )
    async with client_for(sim) as client:
        report = await run_batch(client, discover_inputs([photo]), spec)
    assert (report.downloaded, report.resumed) == (1, 1)
    assert sim.stats.count("smart-beauty") == 1
    await check_ledger(sim, [photo], journals=[spec.journal_file], every_input_paid=True)


async def test_run_batch_uses_an_open_journal_and_leaves_it_open(
    sim: Simulator, tmp_path: Path
) -> None:
    """The command line holds the journal from its pre-flight through the run: no other run
    can take the lock in between, and run_batch does not close what it did not open."""
    make_photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=out)
    items = list(discover_inputs([tmp_path / "in"]))
    async with await Journal.open(spec.journal_file) as journal, client_for(sim) as client:
        before = await planned_actions(journal, items, spec)
        report = await run_batch(client, items, spec, journal=journal)
        assert not journal.closed
        with pytest.raises(JournalBusyError):
            await Journal.open(spec.journal_file)
        after = await planned_actions(journal, items, spec)
    assert before == [ResumeAction.RUN, ResumeAction.RUN]
    assert (report.downloaded, report.failed) == (2, 0)
    assert after == [ResumeAction.SKIP, ResumeAction.SKIP]
    assert len(manifest(out)) == 2


async def test_planned_actions_follow_the_runners_rules_without_claiming(
    sim: Simulator, tmp_path: Path
) -> None:
    photos = make_photos(tmp_path / "in", 3)
    spec = BatchSpec(operation=Operation.SKIN, params={"retouch_degree": 1}, out_dir=tmp_path)
    async with client_for(sim) as client:
        await run_batch(client, discover_inputs([photos[0]]), spec)
    photos[2].unlink()  # cannot be identified: fails without a request
    items = [*discover_inputs(photos[:2]), BatchItem(photos[2], photos[2].name)]
    async with await Journal.open(spec.journal_file) as journal:
        # 1 and 1.0 are one parameter set: the done photo is found.
        float_spec = attrs.evolve(spec, params={"retouch_degree": 1.0})
        assert await planned_actions(journal, items, float_spec) == [
            ResumeAction.SKIP,
            ResumeAction.RUN,
            None,
        ]
        other = attrs.evolve(spec, params={"retouch_degree": 0.5})
        assert (await planned_actions(journal, items, other))[0] is ResumeAction.RUN
        assert len(await journal.entries()) == 1  # nothing claimed


@pytest.mark.parametrize(
    ("operation", "concurrency", "expected"),
    [
        (Operation.SKIN, None, None),  # the client's map default
        (Operation.BEAUTY, None, 8 * 4),  # beauty items mostly wait on remote tasks
        (Operation.BEAUTY, 5, 5),
        (Operation.SKIN, 3, 3),
    ],
)
def test_item_concurrency_is_decided_by_the_spec(
    operation: Operation, concurrency: int | None, expected: int | None
) -> None:
    spec = BatchSpec(operation, {}, Path("out"), concurrency=concurrency)
    assert spec.item_concurrency(4) == expected


def test_how_is_a_string_enum() -> None:
    outcome = ItemOutcome(item=BatchItem(Path("a.jpg"), "a.jpg"), state=ItemState.FAILED, how="ran")
    assert outcome.how is How.RAN
    assert outcome.how == "ran"
    with pytest.raises(ValueError, match="'flew'"):
        ItemOutcome(item=outcome.item, state=ItemState.FAILED, how="flew")


def test_batch_spec_takes_folders_as_strings(tmp_path: Path) -> None:
    spec = BatchSpec(Operation.SKIN, {}, str(tmp_path / "out"), journal_path=str(tmp_path / "j"))
    assert spec.out_dir == tmp_path / "out"
    assert spec.journal_file == tmp_path / "j"
    assert BatchSpec(Operation.SKIN, {}, "out").journal_file == Path("out/.ailab-journal.sqlite3")
