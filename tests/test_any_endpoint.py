"""Any endpoint through the same engine: ``client.call``, ``submit_task``/``track_task``, map.

Against the simulator (a server we did not write: its smart-skin and smart-beauty endpoints
called as if they were any other), aioresponses (error families, retries, ambiguity,
deadline, on fake time) and real local servers (what goes on the wire, and that the key
never reaches another host whatever path is given).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aioresponses import aioresponses
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from ailab_async import (
    AILabClient,
    DeadlineExceededError,
    ImageRejectedError,
    InsufficientCreditsError,
    MalformedResponseError,
    RawResult,
    TaskFailedError,
    TaskHandle,
    ValidationError,
    sync,
)
from ailab_async._endpoints import GENERIC_MAX_FILE_BYTES, check_api_path, generic_call
from ailab_async.testing.simulator import Simulator, SimulatorConfig, TaskBehaviour, sample_image

from .conftest import BASE_URL, TEST_KEY, FakeTime, envelope, error_envelope, png_bytes

CUTOUT = "/api/cutout/portrait/portrait-background-removal"
CUTOUT_URL = f"{BASE_URL}{CUTOUT}"
SKIN = "/api/portrait/effects/smart-skin"
BEAUTY = "/api/portrait/effects/smart-beauty"
RESULT = "https://results.example/r/cut.png?sig=s3cret"
Serve = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]


def attempts(mocked: aioresponses, url: str = CUTOUT_URL, method: str = "POST") -> int:
    return sum(
        len(calls)
        for (m, u), calls in mocked.requests.items()
        if m == method and u.with_query(None) == URL(url)
    )


def client_for(fake_time: FakeTime, **kwargs: Any) -> AILabClient:
    kwargs.setdefault("api_key", TEST_KEY)
    kwargs.setdefault("base_url", BASE_URL)
    return AILabClient(clock=fake_time.clock, sleep=fake_time.sleep, random=lambda: 0.5, **kwargs)


# --- the simulator: success, tasks, map --------------------------------------------------


@pytest.fixture
async def sim() -> Any:
    config = SimulatorConfig(seed=3, tasks=TaskBehaviour(failure_share=0.0))
    async with Simulator(config) as simulator:
        yield simulator


def sim_client(sim: Simulator, **kwargs: Any) -> AILabClient:
    return AILabClient(api_key=sim.api_key, base_url=sim.url, **kwargs)


async def submit_beauty(client: AILabClient, seed: int = 0) -> TaskHandle[RawResult]:
    """Smart-beauty submitted as any task endpoint would be."""
    return await client.submit_task(
        "POST",
        BEAUTY,
        files={"image_target": sample_image(96, 96, seed=seed)},
        fields={"task_type": "async"},
    )


async def test_a_call_returns_the_payload_and_the_ids_and_is_billed_once(sim: Simulator) -> None:
    async with sim_client(sim) as client:
        result = await client.call(
            "POST", SKIN, files={"image": sample_image(256, 256)}, fields={"retouch_degree": 0.4}
        )
        image = await client.download(result.image_url or "")
    assert isinstance(result, RawResult)
    assert result.request_id
    assert result.log_id
    assert result.data["image_url"] == result.image_url
    assert image[:3] == b"\xff\xd8\xff" or image[:4] == b"\x89PNG"
    assert sim.stats.count("smart-skin", "OK") == 1
    assert sim.stats.credits_spent == 1


async def test_a_free_get_carries_its_params_and_no_body(sim: Simulator) -> None:
    async with sim_client(sim) as client:
        result = await client.call("get", "/api/common/query-credits", billed=False)
    assert isinstance(result.data, list)
    assert result.data[0]["balance"] > 0


async def test_a_task_of_any_endpoint_is_tracked_to_its_raw_result(sim: Simulator) -> None:
    async with sim_client(sim) as client:
        task = await client.submit_task(
            "POST",
            BEAUTY,
            files={"image_target": sample_image(128, 128)},
            fields={"task_type": "async", "beauty_level": 0.5},
        )
        result = await task.result(timeout=60)
        assert client.tracker.polls_sent >= 1
    assert isinstance(task, TaskHandle)
    assert isinstance(result, RawResult)
    assert result.task_id == task.task_id
    assert result.data["task_status"] == 2
    assert result.image_url is not None
    assert sim.stats.count("smart-beauty", "OK") == 1


async def test_a_task_is_picked_up_by_another_client_without_paying_again(sim: Simulator) -> None:
    async with sim_client(sim) as first:
        task = await submit_beauty(first)
        task_id = task.task_id
    async with sim_client(sim) as second:
        result = await second.track_task(task_id, path=BEAUTY).result(timeout=60)
    assert result.task_id == task_id
    assert result.image_url is not None
    assert sim.stats.count("smart-beauty") == 1  # submitted once, whatever the pick-up did


async def test_a_failed_task_of_any_endpoint_is_a_task_failed_error() -> None:
    config = SimulatorConfig(seed=5, tasks=TaskBehaviour(failure_share=1.0))
    async with Simulator(config) as sim, sim_client(sim) as client:
        task = await submit_beauty(client)
        with pytest.raises(TaskFailedError) as caught:
            await task.result(timeout=60)
    assert caught.value.task_id == task.task_id


async def test_one_task_id_is_not_tracked_as_two_kinds(sim: Simulator) -> None:
    async with sim_client(sim) as client:
        handle = client.track_task("t-123")
        with pytest.raises(ValidationError, match="already tracked"):
            client.track("t-123")
        assert handle.task_id == "t-123"


async def test_map_runs_any_endpoint_over_photos(sim: Simulator) -> None:
    photos = [sample_image(192, 192, seed=seed) for seed in range(5)]
    async with sim_client(sim, max_concurrency=2) as client:
        # The documented pattern: a lambda (or an async def) that puts the item in place.
        outcomes = [
            outcome
            async for outcome in client.map(
                lambda photo: client.call("POST", SKIN, files={"image": photo}),
                photos,
                ordered=True,
            )
        ]
        # Or a partial over the method, when the item is the path and the rest is shared.
        paths = ["/api/common/query-credits"] * 3
        free = [
            outcome
            async for outcome in client.map(
                functools.partial(client.call, "GET"), paths, billed=False
            )
        ]
    assert [outcome.item for outcome in outcomes] == photos
    assert all(outcome.ok and isinstance(outcome.result, RawResult) for outcome in outcomes)
    assert all(outcome.ok for outcome in free)
    assert sim.stats.count("smart-skin", "OK") == len(photos)
    assert sim.stats.max_concurrent <= 2


async def test_the_blocking_client_calls_any_endpoint_and_tracks_its_tasks(
    sim: Simulator,
) -> None:
    def work() -> tuple[RawResult, RawResult, RawResult]:
        with sync.AILabClient(api_key=sim.api_key, base_url=sim.url) as client:
            called = client.call("POST", SKIN, files={"image": sample_image(192, 192)})
            task = client.submit_task(
                "POST",
                BEAUTY,
                files={"image_target": sample_image(96, 96)},
                fields={"task_type": "async"},
            )
            finished = task.result(timeout=60)
            again = client.track_task(task.task_id, path=BEAUTY).result(timeout=60)
        return called, finished, again

    called, finished, again = await asyncio.to_thread(work)
    assert called.image_url is not None
    assert finished.task_id is not None
    assert again.task_id == finished.task_id
    assert sim.stats.count("smart-beauty") == 1


# --- error families, retries, ambiguity, deadline (aioresponses, fake time) -------------


async def test_a_4xx_is_typed_and_not_retried(fake_time: FakeTime, mocked: aioresponses) -> None:
    mocked.post(
        CUTOUT_URL, status=422, payload=error_envelope(422, "ERROR_NO_FACE_IN_FILE"), repeat=True
    )
    async with client_for(fake_time) as client:
        with pytest.raises(ImageRejectedError) as caught:
            await client.call("POST", CUTOUT, files={"image": png_bytes()})
    assert caught.value.code == "ERROR_NO_FACE_IN_FILE"
    assert caught.value.request_id == "req-err"
    assert attempts(mocked) == 1


async def test_out_of_credits_is_not_retried(fake_time: FakeTime, mocked: aioresponses) -> None:
    mocked.post(
        CUTOUT_URL, status=429, payload=error_envelope(429, "ERROR_NOT_ENOUGH_CREDITS"), repeat=True
    )
    async with client_for(fake_time) as client:
        with pytest.raises(InsufficientCreditsError):
            await client.call("POST", CUTOUT, files={"image": png_bytes()})
    assert attempts(mocked) == 1


@pytest.mark.parametrize(
    ("answer", "billed", "ambiguous"),
    [
        # A gateway's page: the API may have done (and billed) the work behind it.
        ({"status": 502, "body": "<html>Bad Gateway</html>"}, True, 1),
        ({"status": 502, "body": "<html>Bad Gateway</html>"}, False, 0),
        # The API's own 5xx envelope says it failed: retried, never ambiguous.
        ({"status": 503, "payload": error_envelope(503, "ERROR_INSUFFICIENT_RESOURCES")}, True, 0),
    ],
)
async def test_a_5xx_is_retried_and_counted_ambiguous_only_when_it_may_have_been_billed(
    fake_time: FakeTime,
    mocked: aioresponses,
    answer: dict[str, Any],
    billed: bool,
    ambiguous: int,
) -> None:
    mocked.post(CUTOUT_URL, **answer)
    mocked.post(CUTOUT_URL, payload=envelope({"image_url": RESULT}))
    async with client_for(fake_time) as client:
        result = await client.call("POST", CUTOUT, files={"image": png_bytes()}, billed=billed)
        stats = client.stats
    assert result.image_url == RESULT
    assert stats.retries == 1
    assert stats.ambiguous_retries == ambiguous


async def test_a_connection_dropped_after_the_upload_is_an_ambiguous_retry(serve: Serve) -> None:
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        if len(received) == 1:  # the request arrived whole; the answer never leaves
            assert request.transport is not None
            request.transport.close()
        return web.json_response(envelope({"ok": 1}))

    url = await serve(handler)
    # No jitter: the backoff is 0 s, so no test time is spent waiting.
    async with AILabClient(api_key=TEST_KEY, base_url=url, random=lambda: 0.0) as client:
        result = await client.call("POST", CUTOUT, files={"image": png_bytes()})
        stats = client.stats
    assert result.data == {"ok": 1}
    assert len(received) == 2
    assert all(png_bytes() in body for body in received)  # the image, sent again in full
    assert (stats.retries, stats.ambiguous_retries) == (1, 1)


async def test_a_billed_call_is_not_retried_blindly_when_ambiguous_retries_are_off(
    fake_time: FakeTime, mocked: aioresponses
) -> None:
    mocked.post(CUTOUT_URL, status=502, body="<html>Bad Gateway</html>")
    mocked.post(CUTOUT_URL, payload=envelope({"image_url": RESULT}))
    async with client_for(fake_time, retry_ambiguous=False) as client:
        with pytest.raises(MalformedResponseError):
            await client.call("POST", CUTOUT, files={"image": png_bytes()})
        assert client.stats.ambiguous_retries == 0
    assert attempts(mocked) == 1


async def test_a_429_is_retried_and_slows_the_limiter_without_ambiguity(
    fake_time: FakeTime, mocked: aioresponses
) -> None:
    mocked.post(CUTOUT_URL, status=429, payload=error_envelope(429, "EXCEEDING_LIMITS"))
    mocked.post(CUTOUT_URL, payload=envelope({"image_url": RESULT}))
    async with client_for(fake_time) as client:
        result = await client.call("POST", CUTOUT, files={"image": png_bytes()})
        stats = client.stats
    assert result.image_url == RESULT
    assert stats.rate_limited == 1
    assert stats.ambiguous_retries == 0
    assert attempts(mocked) == 2


async def test_the_deadline_ends_a_call_that_keeps_failing(
    fake_time: FakeTime, mocked: aioresponses
) -> None:
    mocked.post(
        CUTOUT_URL,
        status=503,
        payload=error_envelope(503, "ERROR_INSUFFICIENT_RESOURCES"),
        repeat=True,
    )
    async with client_for(fake_time, max_retries=100) as client:
        with pytest.raises(DeadlineExceededError):
            await client.call("POST", CUTOUT, files={"image": png_bytes()}, deadline=10)
    assert fake_time.now - fake_time.start <= 10


# --- the wire: what a POST sends, and where the key goes ---------------------------------


async def test_a_post_without_a_file_sends_a_multipart_form_and_its_query(serve: Serve) -> None:
    seen: list[tuple[str, dict[str, str], dict[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append(
            (request.content_type, dict(request.query), {k: str(v) for k, v in form.items()})
        )
        return web.json_response(envelope({"ok": 1}))

    url = await serve(handler)
    async with AILabClient(api_key=TEST_KEY, base_url=url) as client:
        result = await client.call(
            "POST", "/api/text/x", fields={"a": "1", "b": 2.5}, params={"v": "2"}
        )
    assert result.data == {"ok": 1}
    assert seen == [("multipart/form-data", {"v": "2"}, {"a": "1", "b": "2.5"})]


async def test_a_file_goes_in_its_field_with_the_form_fields(serve: Serve) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append({k: (v.file.read() if hasattr(v, "file") else v) for k, v in form.items()})
        return web.json_response(envelope({"ok": 1}))

    url = await serve(handler)
    photo = png_bytes()
    async with AILabClient(api_key=TEST_KEY, base_url=url) as client:
        await client.call(
            "POST", CUTOUT, files={"image_file": photo}, fields={"return_form": "mask"}
        )
    assert seen == [{"return_form": "mask", "image_file": photo}]


@pytest.mark.parametrize(
    "value",
    [
        'say "hi"',
        "back\\slash",
        "two\r\nlines\n",
        "tab\there",
        "é 漢字 🙂",
        "--looks-like-a-boundary",
    ],
)
async def test_any_text_value_arrives_as_it_was_given(serve: Serve, value: str) -> None:
    seen: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append(
            (
                dict(request.query),
                {k: (v.file.read() if hasattr(v, "file") else v) for k, v in form.items()},
            )
        )
        return web.json_response(envelope({"ok": 1}))

    url = await serve(handler)
    photo = png_bytes()
    async with AILabClient(api_key=TEST_KEY, base_url=url) as client:
        await client.call("POST", "/api/text/x", fields={"text": value}, params={"q": value})
        await client.call("POST", CUTOUT, files={"image": photo}, fields={"text": value})
    assert seen == [({"q": value}, {"text": value}), ({}, {"text": value, "image": photo})]


def hostile_paths(elsewhere: str) -> list[str]:
    host = URL(elsewhere).authority
    return [
        f"{elsewhere}/api/cutout",  # an absolute URL to another host
        f"//{host}/api/cutout",  # scheme-relative
        f"/\\{host}/api/cutout",  # a backslash some parsers read as a slash
        f"\\\\{host}\\api",
        f"http:{host}/api/x",
        "/api/../../../etc/passwd",
        "/api/./cutout",
        "/api/cutout/..",
        "/api/%2e%2e/%2e%2e/x",
        "/api/cutout%2F..%2Fx",
        "/api/cutout?x=1",
        "/api/cutout#frag",
        "/api/cut out",
        "/api/cutout\r\nHost: evil",
        "/api/cutout\x00",
        "/api/cut\tout",
        "/api/cutout/",
        "/api//cutout",
        "/api/@evil",
        "/api/c:8080",
        "api/cutout",
        "/portrait/effects/smart-skin",  # not under /api/
        "/API/cutout",
        "",
        "/",
        "/api/\uff43\uff55\uff54",  # full-width look-alikes of "cut"
        "/api/" + "x" * 600,
    ]


async def test_every_hostile_path_is_refused_and_the_key_goes_nowhere(serve: Serve) -> None:
    received: dict[str, list[str]] = {"api": [], "elsewhere": []}

    def recorder(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            received[name].append(request.headers.get("ailabapi-api-key", ""))
            return web.json_response(envelope({"ok": 1}))

        return handler

    api = await serve(recorder("api"))
    elsewhere = await serve(recorder("elsewhere"))
    async with AILabClient(api_key=TEST_KEY, base_url=api) as client:
        for path in hostile_paths(elsewhere):
            for method in ("GET", "POST"):
                with pytest.raises(ValidationError) as caught:
                    await client.call(method, path, billed=False)
                assert caught.value.rule in ("path", "type"), path
                assert TEST_KEY not in str(caught.value)
            with pytest.raises(ValidationError):
                await client.submit_task("POST", path)
            with pytest.raises(ValidationError):
                client.track_task("t-1", path=path)
        assert received == {"api": [], "elsewhere": []}
        await client.call("GET", "/api/common/query-credits", billed=False)
    assert received == {"api": [TEST_KEY], "elsewhere": []}


@pytest.mark.parametrize(
    "path",
    [CUTOUT, "/api/portrait/effects/smart-skin", "/api/a_b/c-d/e.f/g~h", "/api/v1.2/x"],
)
def test_paths_under_the_api_are_accepted(path: str) -> None:
    assert check_api_path(path) == path


_VALID = st.from_regex(r"/api(/[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,6}){1,4}", fullmatch=True)
#: Paths put together from pieces that have fooled URL handling somewhere.
_PIECES = ["api", "API", "..", ".", "%2e%2e", "%2F", "a", "x.y", "", "\\", "@evil", "c:1"]
_PATHISH = st.builds(
    lambda lead, pieces, tail: lead + "/".join(pieces) + tail,
    st.sampled_from(["/api/", "/api/", "/", "//", "", "\\"]),
    st.lists(st.sampled_from(_PIECES), max_size=5),
    st.sampled_from(["", "/", "?q=1", "#f", " ", "\t", "\n"]),
)


@settings(max_examples=500)  # pure and fast; hostile shapes are a small share of the space
@given(st.one_of(_VALID, _PATHISH, st.text(max_size=40)))
def test_an_accepted_path_never_leaves_the_base_url(path: str) -> None:
    base = "https://gateway.example:8443/ailab"
    try:
        check_api_path(path)
    except ValidationError:
        return
    # What the dispatcher builds, as aiohttp parses it.
    url = URL(base + path)
    assert (url.scheme, url.host, url.port) == ("https", "gateway.example", 8443)
    assert url.path.startswith("/ailab/api/")
    assert ".." not in url.parts
    assert "." not in url.parts
    assert (url.query_string, url.fragment) == ("", "")
    assert url.path == "/ailab" + path  # nothing was decoded or normalised away


async def test_tasks_of_another_endpoint_learn_their_own_poll_plan(sim: Simulator) -> None:
    async with sim_client(sim) as client:
        for seed in range(3):
            task = await submit_beauty(client, seed)
            await task.result(timeout=60)
        # The typed smart-beauty plan learned nothing from them; their endpoint's did.
        assert client.tracker.observations == 0
        assert client._tracker._planner_for(BEAUTY).observations == 3


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"method": "PUT"}, "method"),
        ({"method": None}, "method"),
        ({"path": b"/api/x"}, "type"),
        ({"fields": {"flag": True}}, "type"),
        ({"fields": {"n": None}}, "type"),
        ({"fields": {"n": float("nan")}}, "type"),
        ({"fields": {"n": {"nested": 1}}}, "type"),
        ({"fields": {"n": [1, 2]}}, "type"),
        ({"fields": {1: "x"}}, "name"),
        ({"fields": {'a"b': "x"}}, "name"),
        ({"fields": {"a": "\x00"}}, "value"),
        ({"fields": {"a": "bell\x07"}}, "value"),
        ({"params": {"a": "\x1b[31m"}}, "value"),
        ({"fields": {"a": "x" * 9000}}, "value"),
        ({"fields": [("a", "1")]}, "type"),
        ({"params": {"a": b"x"}}, "type"),
        ({"files": [png_bytes()]}, "type"),
        ({"files": {"a": png_bytes(), "b": png_bytes()}}, "count"),
        ({"files": {'na"me': png_bytes()}}, "name"),
        ({"billed": "yes"}, "type"),
        ({"method": "GET", "fields": {"a": 1}}, "method"),
        ({"method": "GET", "files": {"image": png_bytes()}}, "method"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_read_or_sent(
    kwargs: dict[str, Any], rule: str
) -> None:
    arguments: dict[str, Any] = {"method": "POST", "path": CUTOUT, **kwargs}
    with pytest.raises(ValidationError) as caught:
        generic_call(arguments.pop("method"), arguments.pop("path"), **arguments)
    assert caught.value.rule == rule


async def test_a_file_that_is_not_an_image_is_refused_without_a_request(
    fake_time: FakeTime, mocked: aioresponses
) -> None:
    async with client_for(fake_time) as client:
        with pytest.raises(ValidationError) as caught:
            await client.call("POST", CUTOUT, files={"video": b"\x00\x00\x00\x18ftypmp42"})
        with pytest.raises(ValidationError):
            await client.call("POST", CUTOUT, files={"image": b"\xff\xd8\xff" * 10}, deadline=-1)
    assert caught.value.rule == "format"
    assert attempts(mocked) == 0
    assert GENERIC_MAX_FILE_BYTES >= 6 * 1024 * 1024  # never tighter than a typed endpoint


def test_a_raw_result_repr_shows_neither_url_nor_payload() -> None:
    result = RawResult({"image_url": RESULT, "faces": [1, 2]}, request_id="r1", task_id="t1")
    shown = repr(result)
    assert "s3cret" not in shown
    assert "results.example" not in shown
    assert "<keys 'image_url', 'faces'>" in shown
    assert repr(RawResult([1, 2, 3])) == (
        "RawResult(data=<list of 3>, request_id=None, log_id=None, task_id=None)"
    )
