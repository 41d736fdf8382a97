"""The batch runner on the simulator: outputs, manifest, resume without paying twice."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from ailab_async import AILabClient, PollingConfig
from ailab_async.batch import (
    BatchSpec,
    Operation,
    discover_inputs,
    run_batch,
    safe_output_path,
)
from ailab_async.errors import ValidationError
from ailab_async.journal import ItemIdentity, ItemState, Journal
from ailab_async.simulator import Simulator, SimulatorConfig, TaskBehaviour, Uniform, sample_image


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
    make_photos(tmp_path / "in" / "sub", 6)
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

    async with client_for(sim) as client:
        again = await run_batch(client, discover_inputs([tmp_path / "in"]), spec)
    assert (again.total, again.skipped, again.downloaded) == (6, 6, 0)
    assert sim.stats.credits_spent == billed  # nothing paid twice
    assert sim.stats.duplicate_submits() == 0


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
    async with await Journal.open(spec.journal_file) as journal:
        [entry] = await journal.entries()
    assert entry.state is ItemState.FAILED
    assert entry.retryable is False


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("a.jpg", "a_jpg.png"),
        ("a.png", "a.png"),
        ("dir/sub/a.JPG", "dir/sub/a_JPG.png"),
        ("../../etc/passwd", "_/_/etc/passwd.png"),
        ("/abs/path.jpg", "abs/path_jpg.png"),
        ("..\\..\\win.jpg", "_/_/win_jpg.png"),
        (".hidden.png", "_hidden.png"),
        ("we\x00ird:na<me>.png", "we_ird_na_me_.png"),
        ("", "item.png"),
        ("...", "_.png"),
    ],
)
def test_output_paths_never_escape(tmp_path: Path, relative: str, expected: str) -> None:
    path = safe_output_path(tmp_path, relative, ".png")
    assert path == tmp_path / expected
    assert tmp_path.resolve() in path.resolve().parents


def test_output_path_through_a_symlink_out_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(outside)
    with pytest.raises(ValidationError, match="escape"):
        safe_output_path(out, "link/a.png", ".png")


def test_discover_inputs_prefixes_directory_names_and_sorts(tmp_path: Path) -> None:
    make_photos(tmp_path / "a" / "x", 2)
    make_photos(tmp_path / "b", 1)
    (tmp_path / "b" / "skip.gif").write_bytes(b"GIF89a")
    single = tmp_path / "single.jpg"
    single.write_bytes(b"x")
    found = [item.relative for item in discover_inputs([tmp_path / "a", tmp_path / "b", single])]
    assert found == ["a/x/p000.jpg", "a/x/p001.jpg", "b/p000.jpg", "single.jpg"]


def test_over_long_names_are_shortened_by_bytes_and_stay_distinct(tmp_path: Path) -> None:
    first = "写真" * 60 + "A.jpg"  # 360+ bytes in UTF-8
    second = "写真" * 60 + "B.jpg"
    a = safe_output_path(tmp_path, first, ".png")
    b = safe_output_path(tmp_path, second, ".png")
    assert a != b
    for path in (a, b):
        assert len(path.name.encode("utf-8")) <= 180
        assert path.suffix == ".png"


async def test_an_input_that_vanishes_fails_alone(sim: Simulator, tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "in", 3)
    items = list(discover_inputs([tmp_path / "in"]))
    photos[1].unlink()  # gone between discovery and processing
    spec = BatchSpec(operation=Operation.SKIN, params={}, out_dir=tmp_path / "out")
    async with client_for(sim) as client:
        report = await run_batch(client, items, spec)
    assert (report.total, report.downloaded, report.failed) == (3, 2, 1)
    assert list(report.errors_by_code) == ["FileNotFoundError"]
