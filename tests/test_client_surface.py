"""The client's surface: bad arguments end in a clear AILabError before any request, and a
client stays in the event loop it was first used in."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest
from aioresponses import aioresponses
from yarl import URL

from ailab_async import (
    AILabClient,
    AILabError,
    ClientClosedError,
    ConfigurationError,
    ValidationError,
)

from .conftest import BASE_URL, CREDITS_URL, QUERY_URL, SKIN_URL, TEST_KEY, envelope, skin_ok

RESULT_URL = "https://results.example/r/1.png?sig=s3cret"
CREDITS_BODY = envelope([{"unique_sign": "s", "name": "calls", "balance": 1, "total": 2}])


def requests_sent(mocked: aioresponses) -> int:
    return sum(len(calls) for calls in (mocked.requests or {}).values())


# -- client set-up --------------------------------------------------------------------------


# Each rule is pinned, value by value, in test_config.py; these show the client applies
# every family of them, with the key kept out of the message.
@pytest.mark.parametrize(
    "kwargs",
    [
        {"deadline": math.nan},
        {"task_timeout": -3},
        {"backoff_initial": 5, "backoff_max": 1},
        {"rate_limit": True},
        {"max_concurrency": 2.0},
        {"trust_env": 1},
        {"clock": 5},
        {"polling": {"poll_share": 0.5}},
        {"session": "not a session"},
        {"base_url": "http://[::1"},
    ],
)
def test_bad_settings_are_a_configuration_error(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("base_url", BASE_URL)
    with pytest.raises(ConfigurationError) as info:
        AILabClient(api_key=TEST_KEY, **kwargs)
    assert TEST_KEY not in str(info.value)


def test_none_task_timeout_means_no_limit_and_is_accepted() -> None:
    AILabClient(api_key=TEST_KEY, base_url=BASE_URL, task_timeout=None)


def test_an_unsendable_key_is_refused_without_echoing_it() -> None:
    key = "abc-123\r\nX-Injected: 1"
    with pytest.raises(ConfigurationError, match="control character") as info:
        AILabClient(api_key=key, base_url=BASE_URL)
    assert key not in str(info.value) + repr(info.value)


def test_an_unsendable_key_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AILAB_API_KEY", "env-key\nsecond-line")
    with pytest.raises(ConfigurationError, match="control character"):
        AILabClient(base_url=BASE_URL)


async def test_surrounding_white_space_of_a_key_is_dropped(mocked: aioresponses) -> None:
    mocked.get(CREDITS_URL, payload=CREDITS_BODY)
    async with AILabClient(api_key=f"  {TEST_KEY}\n", base_url=BASE_URL) as client:
        await client.credits()
    [call] = (mocked.requests or {})[("GET", URL(CREDITS_URL))]
    assert call.kwargs["headers"]["ailabapi-api-key"] == TEST_KEY


# -- per-call arguments ---------------------------------------------------------------------


BAD_DEADLINES = [math.nan, "5", -1, 0, math.inf, True]


@pytest.mark.parametrize("deadline", BAD_DEADLINES)
async def test_a_bad_per_call_deadline_is_a_validation_error_before_any_request(
    mocked: aioresponses, mock_client: AILabClient, face_png: bytes, deadline: Any
) -> None:
    mocked.post(SKIN_URL, payload=skin_ok(), repeat=True)
    mocked.get(CREDITS_URL, payload=CREDITS_BODY, repeat=True)
    mocked.get(RESULT_URL, body=b"img", content_type="image/png", repeat=True)
    calls = [
        mock_client.smart_skin(face_png, deadline=deadline),
        mock_client.submit_smart_beauty(face_png, deadline=deadline),
        mock_client.smart_beauty(face_png, deadline=deadline),
        mock_client.credits(deadline=deadline),
        mock_client.download(RESULT_URL, deadline=deadline),
    ]
    for call in calls:
        with pytest.raises(ValidationError, match="deadline") as info:
            await call
        assert info.value.input == "deadline"
    assert requests_sent(mocked) == 0


@pytest.mark.parametrize("timeout", [math.nan, "5", -1, math.inf])
async def test_a_bad_result_timeout_is_refused_before_submitting(
    mocked: aioresponses, mock_client: AILabClient, face_png: bytes, timeout: Any
) -> None:
    with pytest.raises(ValidationError, match="timeout"):
        await mock_client.smart_beauty(face_png, timeout=timeout)
    assert requests_sent(mocked) == 0  # nothing was submitted (and billed)


@pytest.mark.parametrize("max_bytes", ["x", 0, -1, True, 1.5, None])
async def test_a_bad_max_bytes_is_a_validation_error_before_any_request(
    mocked: aioresponses, mock_client: AILabClient, tmp_path: Path, max_bytes: Any
) -> None:
    mocked.get(RESULT_URL, body=b"img", content_type="image/png", repeat=True)
    with pytest.raises(ValidationError, match="max_bytes"):
        await mock_client.download(RESULT_URL, max_bytes=max_bytes)
    with pytest.raises(ValidationError, match="max_bytes"):
        await mock_client.download_to_dir(
            RESULT_URL, lambda _: tmp_path / "x.png", max_bytes=max_bytes
        )
    assert requests_sent(mocked) == 0


async def test_a_destination_that_is_a_directory_is_refused_before_any_request(
    mocked: aioresponses, mock_client: AILabClient, tmp_path: Path
) -> None:
    mocked.get(RESULT_URL, body=b"img", content_type="image/png", repeat=True)
    with pytest.raises(ValidationError, match="is a directory") as info:
        await mock_client.download(RESULT_URL, tmp_path)
    assert info.value.rule == "destination"
    assert requests_sent(mocked) == 0
    assert list(tmp_path.iterdir()) == []


async def test_a_destination_under_a_regular_file_is_refused_before_any_request(
    mocked: aioresponses, mock_client: AILabClient, tmp_path: Path
) -> None:
    mocked.get(RESULT_URL, body=b"img", content_type="image/png", repeat=True)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for dest in (blocker / "out.png", blocker / "deeper" / "out.png", str(blocker / "o.png")):
        with pytest.raises(ValidationError, match="not a directory"):
            await mock_client.download(RESULT_URL, dest)
    with pytest.raises(ValidationError, match="must be a path"):
        await mock_client.download(RESULT_URL, 42)  # type: ignore[call-overload]
    assert requests_sent(mocked) == 0
    assert blocker.read_text() == "not a folder"


async def test_a_destination_in_missing_folders_is_still_fine(
    mocked: aioresponses, mock_client: AILabClient, tmp_path: Path
) -> None:
    mocked.get(RESULT_URL, body=b"img", content_type="image/png")
    written = await mock_client.download(RESULT_URL, tmp_path / "a" / "b" / "out.png")
    assert written.read_bytes() == b"img"


# Every rule for task ids is pinned in test_endpoints.py, for submitted_at in test_config.py.
@pytest.mark.parametrize("task_id", ["", None, "abc\n"])
async def test_a_bad_task_id_is_a_validation_error(mock_client: AILabClient, task_id: Any) -> None:
    with pytest.raises(ValidationError, match="task_id") as info:
        mock_client.track(task_id)
    assert info.value.input == "task_id"
    assert mock_client.tracker.pending == 0


@pytest.mark.parametrize(
    ("submitted_at", "words"),
    [(dt.datetime(2026, 1, 1, 12, 0), "timezone-aware UTC"), (dt.date(2026, 1, 1), "datetime")],
)
async def test_a_bad_submitted_at_is_a_validation_error(
    mock_client: AILabClient, submitted_at: Any, words: str
) -> None:
    with pytest.raises(ValidationError, match=words) as info:
        mock_client.track("task-1", submitted_at=submitted_at)
    assert info.value.input == "submitted_at"
    assert mock_client.tracker.pending == 0


async def test_a_submitted_at_in_the_future_counts_as_just_submitted(
    mocked: aioresponses, mock_client: AILabClient
) -> None:
    mocked.get(
        f"{QUERY_URL}?task_id=task-1",
        payload=envelope({"image_url": RESULT_URL}, task_status=2),
    )
    ahead = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=3)  # a skewed clock
    task = mock_client.track("task-1", submitted_at=ahead)
    result = await task.result(timeout=60)
    assert result.task_id == "task-1"


async def test_any_timezone_is_accepted_for_submitted_at(
    mocked: aioresponses, mock_client: AILabClient
) -> None:
    mocked.get(
        f"{QUERY_URL}?task_id=task-2",
        payload=envelope({"image_url": RESULT_URL}, task_status=2),
    )
    tokyo = dt.timezone(dt.timedelta(hours=9))
    task = mock_client.track("task-2", submitted_at=dt.datetime.now(tokyo))
    assert (await task.result(timeout=60)).task_id == "task-2"


# -- one client, one event loop -------------------------------------------------------------


def test_track_outside_a_running_loop_is_a_clear_error() -> None:
    client = AILabClient(api_key=TEST_KEY, base_url=BASE_URL)
    with pytest.raises(ConfigurationError, match="running event loop"):
        client.track("task-1")
    assert client.tracker.pending == 0


def test_a_second_asyncio_run_on_one_client_is_a_clear_error(mocked: aioresponses) -> None:
    mocked.get(CREDITS_URL, payload=CREDITS_BODY, repeat=True)
    client = AILabClient(api_key=TEST_KEY, base_url=BASE_URL)
    assert asyncio.run(client.credits()).balance == 1  # first loop: bound to it
    with pytest.raises(ConfigurationError, match="one AILabClient per event loop") as info:
        asyncio.run(client.credits())
    assert isinstance(info.value, AILabError)

    async def track() -> None:
        client.track("task-1")

    with pytest.raises(ConfigurationError, match="one AILabClient per event loop"):
        asyncio.run(track())
    assert requests_sent(mocked) == 1
    # The first loop is gone: closing from another one closes what is left, quietly.
    asyncio.run(client.aclose())
    assert client.closed
    with pytest.raises(ClientClosedError):
        asyncio.run(client.credits())


def test_a_client_bound_to_a_live_loop_refuses_another_and_closes_in_its_own(
    mocked: aioresponses,
) -> None:
    mocked.get(CREDITS_URL, payload=CREDITS_BODY, repeat=True)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        client = AILabClient(api_key=TEST_KEY, base_url=BASE_URL)
        first.run_until_complete(client.credits())
        with pytest.raises(ConfigurationError, match="create the client inside the loop"):
            second.run_until_complete(client.credits())

        async def enter() -> None:
            async with client:
                pass

        with pytest.raises(ConfigurationError, match="one AILabClient per event loop"):
            second.run_until_complete(enter())
        with pytest.raises(ConfigurationError):
            second.run_until_complete(client.aclose())  # its loop still lives: close it there
        assert not client.closed
        first.run_until_complete(client.aclose())
        assert client.closed
    finally:
        first.close()
        second.close()


async def test_a_client_created_outside_the_loop_binds_on_first_use(
    mocked: aioresponses,
) -> None:
    mocked.get(CREDITS_URL, payload=CREDITS_BODY, repeat=True)
    client = AILabClient(api_key=TEST_KEY, base_url=BASE_URL)  # no loop involved yet
    async with client:
        await client.credits()
        await asyncio.gather(*(client.credits() for _ in range(3)))  # same loop, any task
    assert requests_sent(mocked) == 4
