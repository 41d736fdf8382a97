"""Proof of fidelity: the provider's official SDK (``ailabtools-sdk``), unchanged, against us.

If the simulator drifted from the real protocol (paths, field names, envelopes, where
``task_status`` lives), the provider's own client would notice here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ailab_async.testing.simulator import (
    Fixed,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    sample_image,
)

# The official SDK (and httpx, which it brings) is a dev extra: without it, skip cleanly, even
# when it is present but broken (an ImportError other than "not found").
ailabtools = pytest.importorskip("ailabtools", exc_type=ImportError)
httpx = pytest.importorskip("httpx", exc_type=ImportError)

FAST_TASKS = TaskBehaviour(duration=Fixed(0.05))


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(tasks=FAST_TASKS)) as simulator:
        yield simulator


@pytest.fixture
async def sdk(sim: Simulator) -> AsyncIterator[Any]:
    client = ailabtools.AILabClient(api_key=sim.api_key, base_url=sim.url, timeout=10.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def portrait() -> bytes:
    return sample_image(256, 256, seed=21)


async def test_sdk_smart_skin(sdk: Any, sim: Simulator, portrait: bytes) -> None:
    response = await sdk.portrait.portraitIntelligentSkinRetouching(
        {"image": portrait, "retouchDegree": 0.6, "whiteningDegree": 0.4}
    )
    assert response["error_code"] == 0
    assert response["request_id"]
    url = response["data"]["image_url"]
    async with httpx.AsyncClient() as http:
        image = await http.get(url)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert sim.stats.count("smart-skin", "OK") == 1


async def test_sdk_smart_beauty_then_wait_for_task(
    sdk: Any, sim: Simulator, portrait: bytes
) -> None:
    submitted = await sdk.portrait.portraitIntelligentBeautification(
        {"imageTarget": portrait, "taskType": "async", "beautyLevel": 0.8}
    )
    assert submitted["task_type"] == "async"
    task_id = submitted["task_id"]
    done = await sdk.wait_for_task(task_id, interval=0.02, timeout=5.0)
    assert done["task_status"] == 2
    assert done["data"]["image_url"].startswith(sim.url + "/results/")
    assert sim.stats.polls_per_task[task_id] >= 1


async def test_sdk_query_credits(sdk: Any) -> None:
    response = await sdk.common.commonQueryCredits({})
    (account,) = response["data"]
    assert account["balance"] == account["total"]
    assert account["unique_sign"]


async def test_sdk_sees_a_bad_key(sim: Simulator, portrait: bytes) -> None:
    client = ailabtools.AILabClient(api_key="not-the-key", base_url=sim.url, timeout=10.0)
    try:
        with pytest.raises(ailabtools.AILabApiError) as caught:
            await client.portrait.portraitIntelligentSkinRetouching({"image": portrait})
    finally:
        await client.aclose()
    assert caught.value.detail.status_code == 401
    assert caught.value.detail.code == "ERROR_USER_NOT_EXISTS"
    assert caught.value.request_id


async def test_sdk_sees_an_oversized_image(sdk: Any) -> None:
    jpeg = sample_image(200, 200)
    oversized = jpeg + b"\x00" * (6 * 1024 * 1024 + 1 - len(jpeg))
    with pytest.raises(ailabtools.AILabApiError) as caught:
        await sdk.portrait.portraitIntelligentSkinRetouching({"image": oversized})
    assert caught.value.detail.status_code == 413
    assert caught.value.detail.code == "FILE_SIZE_EXCEEDS_LIMIT"


async def test_sdk_sees_an_unsupported_format(sdk: Any) -> None:
    with pytest.raises(ailabtools.AILabApiError) as caught:
        await sdk.portrait.portraitIntelligentBeautification(
            {"imageTarget": b"GIF89a" + b"\x00" * 64, "taskType": "async"}
        )
    assert caught.value.detail.code == "UNSUPPORTED_FILE_TYPES"


async def test_sdk_wait_for_task_sees_failure_both_ways(portrait: bytes) -> None:
    envelope = TaskBehaviour(duration=Fixed(0.02), failure_share=1.0)
    status = TaskBehaviour(duration=Fixed(0.02), failure_share=1.0, failure_report="status")
    for behaviour, expected in ((envelope, ailabtools.AILabApiError), (status, RuntimeError)):
        async with Simulator(SimulatorConfig(tasks=behaviour)) as sim:
            client = ailabtools.AILabClient(api_key=sim.api_key, base_url=sim.url)
            try:
                submitted = await client.portrait.portraitIntelligentBeautification(
                    {"imageTarget": portrait, "taskType": "async"}
                )
                with pytest.raises(expected):
                    await client.wait_for_task(submitted["task_id"], interval=0.02, timeout=5.0)
            finally:
                await client.aclose()


async def test_sdk_accepts_the_modern_envelope(portrait: bytes) -> None:
    async with Simulator(SimulatorConfig(envelope="modern")) as sim:
        client = ailabtools.AILabClient(api_key=sim.api_key, base_url=sim.url)
        try:
            response = await client.portrait.portraitIntelligentSkinRetouching({"image": portrait})
            assert "error_code" not in response
            assert response["data"]["image_url"]
            with pytest.raises(ailabtools.AILabApiError) as caught:
                await client.portrait.portraitIntelligentSkinRetouching({"image": b"\x89PNG"})
            assert caught.value.detail.status_code == 415  # taken from the HTTP status
        finally:
            await client.aclose()
