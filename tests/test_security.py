"""Secrets stay secret: the key and result URLs never reach logs, reprs, errors or files."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from ailab_async import AILabClient, AILabError, ConfigurationError, PollingConfig
from ailab_async.batch import BatchSpec, Operation, discover_inputs, run_batch
from ailab_async.simulator import (
    Faults,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)

SECRET_KEY = "sk-live-DO-NOT-LEAK-7f3a9c"  # a made-up key with a recognisable shape


async def test_key_and_result_urls_never_leak_anywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    config = SimulatorConfig(
        api_key=SECRET_KEY,
        tasks=TaskBehaviour(duration=Uniform(0.01, 0.05), failure_share=0.3),
        faults=Faults(error_503=0.1, truncated_json=0.05, html_502=0.05),
        blank_is_no_face=True,
        seed=2,
    )
    photos = tmp_path / "in"
    photos.mkdir()
    for i in range(8):
        (photos / f"p{i}.jpg").write_bytes(sample_image(160, 160, seed=i))
    (photos / "tiny.png").write_bytes(sample_image(64, 64, fmt="PNG"))  # fails validation
    texts: list[str] = []
    urls: list[str] = []
    async with Simulator(config) as sim:
        polling = PollingConfig(fallback_interval=0.05, min_interval=0.01)
        async with AILabClient(
            api_key=SECRET_KEY, base_url=sim.url, backoff_initial=0.01, polling=polling
        ) as client:
            texts.append(repr(client))
            result = await client.smart_skin(sample_image(200, 200, seed=50))
            urls.append(result.image_url)
            texts += [repr(result), str(result)]
            for spec in (
                BatchSpec(Operation.SKIN, {}, tmp_path / "out-skin"),
                BatchSpec(Operation.BEAUTY, {"beauty_level": 0.4}, tmp_path / "out-beauty"),
            ):
                report = await run_batch(client, discover_inputs([photos]), spec)
                assert report.failed >= 1  # error paths were exercised too
            try:
                await client.download(result.image_url + "-nope")
            except AILabError as exc:
                texts += [str(exc), repr(exc)]
        async with AILabClient(api_key=SECRET_KEY + "-wrong", base_url=sim.url) as bad:
            try:
                await bad.credits()
            except AILabError as exc:
                texts += [str(exc), repr(exc)]
    texts.append(caplog.text)
    texts += [p.read_text() for p in tmp_path.rglob("manifest.jsonl")]
    # The journal keeps result URLs on purpose (to download after a restart), never the key.
    stored = [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*.sqlite3*")]
    for journal in tmp_path.rglob("*.sqlite3"):
        with sqlite3.connect(journal) as db:
            stored.append(repr(db.execute("SELECT * FROM items").fetchall()))
        db.close()
    assert "ailab_async" in caplog.text  # the SDK did log
    for text in texts + stored:
        assert SECRET_KEY not in text
    for text in texts:
        for url in urls:
            assert url not in text


def test_plain_http_to_a_remote_host_is_refused_by_default() -> None:
    with pytest.raises(ConfigurationError, match="plain HTTP") as info:
        AILabClient(api_key=SECRET_KEY, base_url="http://api.example.com")
    assert SECRET_KEY not in str(info.value)
    for loopback in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:2"):
        AILabClient(api_key=SECRET_KEY, base_url=loopback)


async def test_tls_verification_stays_on() -> None:
    async with AILabClient(api_key=SECRET_KEY, base_url="https://api.example.com") as client:
        session = await client._sessions.get()
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector._ssl is True  # aiohttp's default: verify certificates
