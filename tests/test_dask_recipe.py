"""The Dask recipe, for real: a 2-process ``LocalCluster`` against the simulator.

The cluster binds 127.0.0.1 only. The workers share one rate budget through a throw-away
``redis-server`` when it is installed (CI installs it); otherwise each worker gets half of it
in-process, and the shared-budget assertions are skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import pytest

from ailab_async.batch import Operation
from ailab_async.contrib.dask import (
    JOURNAL_SHARDS,
    RedisLimiterFactory,
    WorkerClientConfig,
    partition_of,
    run_on_cluster,
    shard_of,
)
from ailab_async.testing.simulator import RateLimit, Simulator, sample_image

from ._ledger import check_ledger
from .test_report import page_data

REDIS_SERVER = shutil.which("redis-server")
ROOT = Path(__file__).resolve().parents[1]
PHOTOS = 40
#: The simulator's (the "account's") limit, and the share of it the workers aim for.
ACCOUNT_RATE = 20.0
BUDGET = 16.0


pytestmark = pytest.mark.dask


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str | None]:
    """A throw-away ``redis-server`` on 127.0.0.1, or ``None`` when it is not installed."""
    if REDIS_SERVER is None:
        yield None
        return
    port = _free_port()
    command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def _local_cluster(**kwargs: Any) -> Any:
    return distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        # The scheduler serves HTTP even with the dashboard off, by default on port 8787;
        # a free loopback port cannot clash with another cluster on this machine.
        dashboard_address="127.0.0.1:0",
        **kwargs,
    )


def _read(manifest: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_partition_of_is_stable_and_spreads_photos() -> None:
    names = [f"album/{i:03d}.jpg" for i in range(400)]
    buckets = [partition_of(name, 8) for name in names]
    assert buckets == [partition_of(name, 8) for name in reversed(names)][::-1]
    assert set(buckets) == set(range(8))
    assert max(buckets.count(b) for b in range(8)) < 2 * 400 / 8
    # A partition is a range of whole shards: one shard, one journal, one task.
    for partitions in (1, 3, 8, JOURNAL_SHARDS):
        owner: dict[int, int] = {}
        for name in names:
            assert owner.setdefault(shard_of(name), partition_of(name, partitions)) == (
                partition_of(name, partitions)
            )
    with pytest.raises(ValueError, match="partitions"):
        partition_of("a.jpg", JOURNAL_SHARDS + 1)


def test_inputs_that_could_share_an_output_share_a_shard() -> None:
    for family in [("a.png", "a_png.jpg", "A.png", "a~2.png"), ("d/x.jpg", "D/x_jpg.png")]:
        assert len({shard_of(name) for name in family}) == 1, family


@pytest.mark.ailab_simulator(rate_limit=RateLimit(ACCOUNT_RATE))
async def test_photos_fan_out_over_two_worker_processes_into_one_manifest(
    ailab_simulator: Simulator, redis_url: str | None, tmp_path: Path
) -> None:
    photo_dir, out_dir = tmp_path / "photos", tmp_path / "out"
    photo_dir.mkdir()
    for index in range(PHOTOS):
        (photo_dir / f"face-{index:02d}.jpg").write_bytes(sample_image(192, 192, seed=index))
    budget_name = f"dask-test-{uuid.uuid4().hex[:8]}"
    if redis_url is not None:
        factory = RedisLimiterFactory(
            redis_url, rate=BUDGET, expected_processes=2, name=budget_name
        )
        config = WorkerClientConfig(base_url=ailab_simulator.url, limiter_factory=factory)
    else:  # no shared budget here: each of the two processes gets half of it
        config = WorkerClientConfig(base_url=ailab_simulator.url, rate_limit=BUDGET / 2)

    def run_on_a_cluster() -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]], int]:
        # The key reaches the workers through their environment, never the task graph.
        with (
            _local_cluster(env={"AILAB_API_KEY": ailab_simulator.api_key}) as cluster,
            distributed.Client(cluster) as dask_client,
        ):
            options: dict[str, Any] = {
                "operation": Operation.SKIN,
                "params": {"retouch_degree": 0.8, "whitening_degree": 0.5},
                "partition_size": 5,
            }
            manifest = run_on_cluster(
                dask_client, [photo_dir], out_dir=out_dir, config=config, **options
            )
            first = _read(manifest)
            rerun = run_on_cluster(
                dask_client, [photo_dir], out_dir=out_dir, config=config, **options
            )
            # A partition that fails as a whole (here: no key on the workers) still gives
            # each of its photos a line.
            keyless = WorkerClientConfig(base_url=ailab_simulator.url, api_key_env="NO_SUCH_KEY")
            failed = _read(
                run_on_cluster(
                    dask_client,
                    [photo_dir],
                    out_dir=tmp_path / "keyless",
                    config=keyless,
                    **options,
                )
            )
            # Unregistering the plugin closed each worker's client and stopped its loop.
            loop_threads = dask_client.run(
                lambda: sum(t.name == "ailab-worker-loop" for t in threading.enumerate())
            )
            return rerun, first, failed, sum(loop_threads.values())

    # The simulator serves on this test's loop; the blocking Dask calls run beside it.
    manifest, first_run, failed_run, loop_threads_left = await asyncio.to_thread(run_on_a_cluster)

    assert manifest == out_dir / "manifest.jsonl"
    assert len(first_run) == PHOTOS
    # The report a batch writes, from the whole manifest: every photo, all of them done,
    # and the failed partition's photos shown as failures in its own report.
    page = (out_dir / "report.html").read_text(encoding="utf-8")
    assert [item["s"] for item in page_data(page)["items"]] == ["downloaded"] * PHOTOS
    failed_page = (tmp_path / "keyless" / "report.html").read_text(encoding="utf-8")
    assert {item["s"] for item in page_data(failed_page)["items"]} == {"failed"}
    assert ailab_simulator.api_key not in page + failed_page
    assert sorted(line["relative"] for line in first_run) == sorted(
        f"photos/face-{i:02d}.jpg" for i in range(PHOTOS)
    )
    assert {line["state"] for line in first_run} == {"downloaded"}
    assert {line["how"] for line in first_run} == {"ran"}
    root = out_dir.resolve()
    for line in first_run:
        output = (out_dir / line["output"]).resolve()
        assert output.is_relative_to(root)
        assert output.read_bytes().startswith(b"\x89PNG")
    # One client per worker process, and the work really was spread over two of them.
    worker_pids = {line["pid"] for line in first_run}
    assert len(worker_pids) == 2
    assert os.getpid() not in worker_pids
    assert {line["partition"] for line in first_run} == {
        f"part-{partition_of(line['relative'], PHOTOS // 5):04d}-of-{PHOTOS // 5:04d}"
        for line in first_run
    }

    # The rerun found every photo in its shard's journal: nothing was paid twice.
    second_run = _read(manifest)
    assert len(second_run) == PHOTOS
    assert {line["how"] for line in second_run} == {"skipped"}
    assert ailab_simulator.stats.count("smart-skin", "OK") == PHOTOS
    assert ailab_simulator.stats.duplicate_submits() == 0
    # No faults are injected: the workers' clients made no ambiguous retries.
    await check_ledger(
        ailab_simulator,
        sorted(photo_dir.iterdir()),
        journals=sorted((out_dir / ".journals").glob("*.sqlite3")),
        every_input_paid=True,
    )
    assert ailab_simulator.api_key not in manifest.read_text(encoding="utf-8")

    assert loop_threads_left == 0
    assert len(failed_run) == PHOTOS
    assert {(line["state"], line["error_code"]) for line in failed_run} == {
        ("failed", "ConfigurationError")
    }
    assert "NO_SUCH_KEY" in failed_run[0]["error_message"]

    if redis_url is not None:
        import redis  # noqa: PLC0415 - only with the Redis budget

        with redis.Redis.from_url(redis_url) as check:
            assert check.exists(f"{{{budget_name}}}:ailab-rate")  # the workers used it
        # Two processes on one 16/s budget never overran the 20/s account.
        assert ailab_simulator.stats.count(outcome="EXCEEDING_LIMITS") == 0


def test_example_script_runs_on_a_local_cluster(redis_url: str | None, tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "examples" / "dask_batch.py"), "--simulate"]
    command += ["--samples", "8", "--partition-size", "2", "--workers", "2", "--rate", "20"]
    if redis_url is not None:
        command += ["--redis-url", redis_url]
    done = subprocess.run(
        [*command, str(tmp_path / "photos"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["photos"] == 8
    assert summary["states"] == {"downloaded": 8}
    assert len(summary["worker_pids"]) == 2


async def test_one_more_photo_pays_for_one_more_photo(
    ailab_simulator: Simulator, tmp_path: Path
) -> None:
    """Growing the set changes the partition count; the journals do not move with it."""
    photo_dir, out_dir = tmp_path / "photos", tmp_path / "out"
    photo_dir.mkdir()
    for index in range(101):
        (photo_dir / f"face-{index:03d}.jpg").write_bytes(sample_image(160, 160, seed=index))
    extra = photo_dir / "face-100.jpg"
    held_back = tmp_path / "held-back.jpg"
    extra.rename(held_back)
    config = WorkerClientConfig(base_url=ailab_simulator.url)

    def two_runs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with (
            _local_cluster(env={"AILAB_API_KEY": ailab_simulator.api_key}) as cluster,
            distributed.Client(cluster) as dask_client,
        ):
            options: dict[str, Any] = {"out_dir": out_dir, "config": config}
            # 100 photos make 10 partitions of about 10; 101 make 11.
            first = _read(run_on_cluster(dask_client, [photo_dir], partition_size=10, **options))
            held_back.rename(extra)
            second = _read(run_on_cluster(dask_client, [photo_dir], partition_size=10, **options))
            return first, second

    first, second = await asyncio.to_thread(two_runs)
    assert len({line["partition"] for line in first}) == 10
    assert len({line["partition"] for line in second}) == 11
    assert {line["state"] for line in second} == {"downloaded"}
    how = [line["how"] for line in second]
    assert (how.count("skipped"), how.count("ran")) == (100, 1)
    ledger = await check_ledger(
        ailab_simulator,
        sorted(photo_dir.iterdir()),
        journals=sorted((out_dir / ".journals").glob("*.sqlite3")),
        every_input_paid=True,
    )
    assert ledger.total_paid == 101
