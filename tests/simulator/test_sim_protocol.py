"""The simulator speaks the documented protocol: envelopes, statuses, tasks, result URLs."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from ailab_async.testing.simulator import (
    Fixed,
    ManualClock,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    make_app,
)
from tests.simulator._helpers import SimFactory

LEGACY_OK_DETAIL = {"status_code": 200, "code": "", "code_message": "", "message": ""}


async def test_smart_skin_success_has_the_legacy_envelope_and_a_hosted_png(
    make_sim: SimFactory, face: bytes
) -> None:
    api = await make_sim()
    answer = await api.skin(face, retouch_degree=0.5, whitening_degree=0.5)
    assert answer.status == 200
    body = answer.json
    assert set(body) == {
        "request_id",
        "log_id",
        "error_code",
        "error_code_str",
        "error_msg",
        "error_detail",
        "data",
    }
    assert body["error_code"] == 0
    assert body["error_code_str"] == ""
    assert body["error_msg"] == ""
    assert body["error_detail"] == LEGACY_OK_DETAIL
    url = body["data"]["image_url"]
    assert url.startswith(api.sim.url + "/results/")
    assert url.endswith(".png")

    image = await api.fetch(url)
    assert image.status == 200
    assert image.content_type == "image/png"
    with Image.open(io.BytesIO(image.raw)) as decoded:
        assert decoded.format == "PNG"
        assert decoded.size == (256, 256)


async def test_error_envelope_status_equals_error_code(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    answer = await api.skin(face, key="wrong-key")
    assert answer.status == 401
    body = answer.json
    assert body["error_code"] == 401
    assert body["error_code_str"] == "ERROR_USER_NOT_EXISTS"
    assert body["error_msg"]
    assert body["error_detail"]["status_code"] == 401
    assert body["error_detail"]["code"] == "ERROR_USER_NOT_EXISTS"
    assert body["error_detail"]["message"]
    assert "data" not in body


async def test_modern_envelope_omits_the_retired_fields(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim(SimulatorConfig(envelope="modern"))
    ok = (await api.skin(face)).json
    assert "error_code" not in ok
    assert "error_code_str" not in ok
    assert "error_msg" not in ok
    assert ok["error_detail"] == {"code": "", "code_message": "", "message": ""}
    bad = await api.skin(face, key=None)
    assert bad.status == 401
    assert "error_code" not in bad.json
    assert "status_code" not in bad.json["error_detail"]
    assert bad.code == "ERROR_USER_NOT_EXISTS"


async def test_request_and_log_ids_are_unique_per_response(
    make_sim: SimFactory, face: bytes
) -> None:
    api = await make_sim()
    bodies = [(await api.credits()).json for _ in range(5)]
    bodies.append((await api.skin(face)).json)
    ids = [b["request_id"] for b in bodies] + [b["log_id"] for b in bodies]
    assert len(set(ids)) == len(ids)


async def test_smart_beauty_task_goes_queued_processing_succeeded(
    make_sim: SimFactory, face: bytes, clock: ManualClock
) -> None:
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Fixed(10.0), queued_fraction=0.3))
    api = await make_sim(config, clock=clock)
    submit = await api.beauty(face, beauty_level=0.7)
    assert submit.status == 200
    body = submit.json
    assert body["task_type"] == "async"
    task_id = body["task_id"]
    assert task_id
    assert body["error_code"] == 0

    seen = []
    for _ in range(3):
        answer = await api.query(task_id)
        assert answer.status == 200
        seen.append((answer.json["task_status"], answer.json["data"]["task_status"]))
        clock.advance(5.0)
    assert seen == [(0, 0), (1, 1), (2, 2)]

    done = (await api.query(task_id)).json
    url = done["data"]["image_url"]
    image = await api.fetch(url)
    assert image.status == 200
    assert image.content_type == "image/png"


async def test_task_status_can_be_top_level_only(
    make_sim: SimFactory, face: bytes, clock: ManualClock
) -> None:
    behaviour = TaskBehaviour(duration=Fixed(1.0), task_status_in_data=False)
    api = await make_sim(SimulatorConfig(tasks=behaviour), clock=clock)
    task_id = (await api.beauty(face)).json["task_id"]
    pending = (await api.query(task_id)).json
    assert pending["task_status"] == 0
    assert "data" not in pending
    clock.advance(1.0)
    done = (await api.query(task_id)).json
    assert done["task_status"] == 2
    assert set(done["data"]) == {"image_url"}


async def test_sync_smart_beauty_returns_base64_image(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    answer = await api.beauty(face, task_type="sync")
    assert answer.status == 200
    assert answer.json["task_type"] == "sync"
    png = base64.b64decode(answer.json["data"]["image"])
    assert png.startswith(b"\x89PNG")


async def test_sync_can_be_switched_off(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim(SimulatorConfig(allow_sync_beauty=False))
    answer = await api.beauty(face, task_type="sync")
    assert (answer.status, answer.code) == (400, "ERROR_INVALID_PARAMETER")


async def test_query_credits_lists_the_account(make_sim: SimFactory) -> None:
    api = await make_sim()
    answer = await api.credits()
    assert answer.status == 200
    (account,) = answer.json["data"]
    assert {"unique_sign", "name", "balance", "total"} <= set(account)
    assert account["balance"] == account["total"]


async def test_unknown_task_id_is_an_error_envelope(make_sim: SimFactory) -> None:
    api = await make_sim()
    answer = await api.query("0" * 32)
    assert answer.status == 400
    assert answer.code == "ERROR_INVALID_PARAMETER"
    missing = await api.query(None)
    assert (missing.status, missing.code) == (400, "MISSING_PARAMETERS")


async def test_another_keys_task_is_unknown(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim(SimulatorConfig(extra_api_keys=("sim-key-001",)))
    task_id = (await api.beauty(face)).json["task_id"]
    assert (await api.query(task_id, key="sim-key-001")).status == 400
    assert (await api.query(task_id)).status == 200


async def test_result_url_expires_after_the_ttl(
    make_sim: SimFactory, face: bytes, clock: ManualClock
) -> None:
    api = await make_sim(SimulatorConfig(result_ttl=60.0), clock=clock)
    url = (await api.skin(face)).json["data"]["image_url"]
    clock.advance(59.0)
    assert (await api.fetch(url)).status == 200
    clock.advance(2.0)
    expired = await api.fetch(url)
    assert expired.status == 410
    assert expired.code == "RESULT_EXPIRED"
    unknown = await api.fetch(api.sim.url + "/results/not-a-token.png")
    assert (unknown.status, unknown.code) == (404, "RESULT_NOT_FOUND")


async def test_default_ttl_is_24_hours(
    make_sim: SimFactory, face: bytes, clock: ManualClock
) -> None:
    api = await make_sim(clock=clock)
    url = (await api.skin(face)).json["data"]["image_url"]
    clock.advance(24 * 3600 - 1)
    assert (await api.fetch(url)).status == 200
    clock.advance(2)
    assert (await api.fetch(url)).status == 410


async def test_finished_task_expires_with_its_result(
    make_sim: SimFactory, face: bytes, clock: ManualClock
) -> None:
    config = SimulatorConfig(result_ttl=100.0, tasks=TaskBehaviour(duration=Fixed(5.0)))
    api = await make_sim(config, clock=clock)
    task_id = (await api.beauty(face)).json["task_id"]
    clock.advance(5.0)
    url = (await api.query(task_id)).json["data"]["image_url"]
    clock.advance(101.0)
    assert (await api.query(task_id)).code == "ERROR_INVALID_PARAMETER"
    assert (await api.fetch(url)).status == 410


async def test_unknown_api_path_is_capability_unavailable(make_sim: SimFactory) -> None:
    api = await make_sim()
    answer = await api.fetch(api.sim.url + "/api/portrait/effects/no-such-thing")
    assert (answer.status, answer.code) == (404, "ERROR_AI_NOT_EXISTS")


async def test_simulator_binds_loopback_on_a_free_port(make_sim: SimFactory) -> None:
    api = await make_sim()
    assert api.sim.url.startswith("http://127.0.0.1:")
    assert not api.sim.url.endswith(":0")
    assert api.sim.api_key == "sim-key-000"


async def test_start_stop_without_context_manager() -> None:
    sim = Simulator()
    await sim.start()
    try:
        assert sim.url
    finally:
        await sim.stop()
    with pytest.raises(RuntimeError):
        _ = sim.url


def test_make_app_builds_an_embeddable_application() -> None:
    app = make_app(SimulatorConfig(seed=5))
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert "/api/portrait/effects/smart-skin" in paths
    assert "/api/common/query-async-task-result" in paths
