"""Every behaviour knob has a visible effect, and seeds make it reproducible."""

from __future__ import annotations

import asyncio
import random

import pytest

from ailab_async.testing.simulator import (
    Credits,
    Fixed,
    Latency,
    LogNormal,
    ManualClock,
    RateLimit,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    parse_distribution,
)
from tests.simulator._helpers import SimApi, SimFactory

# --------------------------------------------------------------------------- distributions


def test_distributions_are_seeded() -> None:
    for dist in (Uniform(0.1, 0.5), LogNormal(0.2, 0.5, cap=1.0)):
        first = [dist.sample(random.Random(7)) for _ in range(3)]
        assert first == [dist.sample(random.Random(7)) for _ in range(3)]
    assert all(0.1 <= Uniform(0.1, 0.5).sample(random.Random(i)) <= 0.5 for i in range(50))
    assert all(LogNormal(5, 3, cap=6).sample(random.Random(i)) <= 6 for i in range(50))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0.25", Fixed(0.25)),
        ("0.1:0.5", Uniform(0.1, 0.5)),
        ("lognormal:0.2:0.4", LogNormal(0.2, 0.4)),
        ("lognormal:0.2:0.4:3", LogNormal(0.2, 0.4, 3.0)),
    ],
)
def test_parse_distribution(spec: str, expected: object) -> None:
    assert parse_distribution(spec) == expected


@pytest.mark.parametrize("spec", ["", "x", "1:2:3", "0.5:0.1", "-1"])
def test_parse_distribution_rejects_nonsense(spec: str) -> None:
    with pytest.raises(ValueError, match=r"duration|must"):
        parse_distribution(spec)


# --------------------------------------------------------------------------- latency


async def test_latency_per_endpoint_is_applied_and_seeded(
    make_sim: SimFactory, face: bytes
) -> None:
    config = SimulatorConfig(
        seed=11, latency=Latency(smart_skin=Uniform(1.0, 2.0), query_credits=Fixed(0.5))
    )
    runs = []
    for _ in range(2):
        clock = ManualClock()
        api = await make_sim(config, clock=clock)
        await api.skin(face)
        await api.skin(face)
        await api.credits()
        runs.append(clock.slept)
    first, second = runs
    assert first == second  # same seed, same latencies
    assert 1.0 <= first[0] <= 2.0
    assert 1.0 <= first[1] <= 2.0
    assert first[0] != first[1]
    assert first[2] == 0.5


async def test_no_latency_by_default(make_sim: SimFactory, face: bytes, clock: ManualClock) -> None:
    api = await make_sim(clock=clock)
    await api.skin(face)
    await api.credits()
    assert clock.slept == []


async def test_latency_really_delays_with_the_system_clock(make_sim: SimFactory) -> None:
    api = await make_sim(SimulatorConfig(latency=Latency.everywhere(Fixed(0.05))))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await api.credits()
    assert loop.time() - started >= 0.045


# --------------------------------------------------------------------------- rate limit


async def test_rate_limit_answers_429_with_retry_after(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    api = await make_sim(SimulatorConfig(rate_limit=RateLimit(2.0)), clock=clock)
    assert (await api.credits()).status == 200
    assert (await api.credits()).status == 200
    limited = await api.credits()
    assert (limited.status, limited.code) == (429, "EXCEEDING_LIMITS")
    assert limited.headers["Retry-After"] == "1"
    clock.advance(0.5)  # one token back at 2/s
    assert (await api.credits()).status == 200
    assert (await api.credits()).status == 429
    assert api.stats.count("query-credits", "EXCEEDING_LIMITS") == 2


async def test_rate_limit_is_per_key_and_burst_is_configurable(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    config = SimulatorConfig(
        extra_api_keys=("sim-key-001",),
        rate_limit=RateLimit(1.0, burst=3, retry_after=False),
    )
    api = await make_sim(config, clock=clock)
    statuses = [(await api.credits()).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert (await api.credits(key="sim-key-001")).status == 200
    limited = await api.credits()
    assert "Retry-After" not in limited.headers


async def test_slow_rate_gives_a_longer_retry_after(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    api = await make_sim(SimulatorConfig(rate_limit=RateLimit(0.2, burst=1)), clock=clock)
    await api.credits()
    limited = await api.credits()
    assert limited.headers["Retry-After"] == "5"


# --------------------------------------------------------------------------- concurrency


async def test_concurrency_limit_rejects_the_excess(make_sim: SimFactory) -> None:
    config = SimulatorConfig(concurrency_limit=2, latency=Latency(query_credits=Fixed(0.1)))
    api = await make_sim(config)
    answers = await asyncio.gather(*(api.credits() for _ in range(6)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert {a.code for a in answers if a.status == 429} == {"EXCEEDING_LIMITS"}
    assert api.stats.max_concurrent == 6


# --------------------------------------------------------------------------- credits


async def test_credits_decrease_per_billed_call_then_run_out(
    make_sim: SimFactory, faces: list[bytes]
) -> None:
    api = await make_sim(SimulatorConfig(credits=Credits(3, total=10)))
    assert (await api.skin(faces[0])).status == 200
    assert (await api.beauty(faces[1])).status == 200
    account = (await api.credits()).json["data"][0]
    assert (account["balance"], account["total"]) == (1, 10)
    task_id = (await api.beauty(faces[2])).json["task_id"]
    await api.query(task_id)  # queries are free
    out = await api.skin(faces[3])
    assert (out.status, out.code) == (429, "ERROR_NOT_ENOUGH_CREDITS")
    assert (await api.credits()).json["data"][0]["balance"] == 0
    assert api.stats.credits_spent == 3


async def test_credits_are_per_key_and_cost_is_configurable(
    make_sim: SimFactory, face: bytes
) -> None:
    config = SimulatorConfig(extra_api_keys=("sim-key-001",), credits=Credits(5, cost_per_call=2.5))
    api = await make_sim(config)
    await api.skin(face)
    assert api.sim.balance() == 2.5
    assert api.sim.balance("sim-key-001") == 5
    assert (await api.skin(face)).status == 200
    assert (await api.skin(face)).code == "ERROR_NOT_ENOUGH_CREDITS"


async def test_unlimited_account_still_reports_usage(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    before = (await api.credits()).json["data"][0]["balance"]
    await api.skin(face)
    assert (await api.credits()).json["data"][0]["balance"] == before - 1


# --------------------------------------------------------------------------- tasks


async def test_task_duration_is_drawn_from_the_distribution(
    make_sim: SimFactory, faces: list[bytes], clock: ManualClock
) -> None:
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Uniform(10.0, 20.0)))
    api = await make_sim(config, clock=clock)
    ids = [(await api.beauty(img)).json["task_id"] for img in faces[:10]]
    durations = [api.sim.state.tasks[i].duration for i in ids]
    assert all(10.0 <= d <= 20.0 for d in durations)
    assert len(set(durations)) == 10
    clock.advance(9.9)
    assert {(await api.query(i)).json["task_status"] for i in ids} <= {0, 1}
    clock.advance(10.2)
    assert {(await api.query(i)).json["task_status"] for i in ids} == {2}


async def test_failure_share_fails_a_seeded_share_of_tasks(
    make_sim: SimFactory, faces: list[bytes], clock: ManualClock
) -> None:
    config = SimulatorConfig(seed=5, tasks=TaskBehaviour(duration=Fixed(1), failure_share=0.5))
    outcomes = []
    for _ in range(2):
        api = await make_sim(config, clock=clock)
        ids = [(await api.beauty(img)).json["task_id"] for img in faces]
        clock.advance(1)
        outcomes.append([(await api.query(i)).status for i in ids])
    assert outcomes[0] == outcomes[1]  # reproducible
    failed = outcomes[0].count(422)
    assert 8 <= failed <= 32
    assert set(outcomes[0]) == {200, 422}


async def test_failed_task_is_an_error_envelope_by_default(
    make_sim: SimFactory, face: bytes, clock: ManualClock
) -> None:
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Fixed(1), failure_share=1.0))
    api = await make_sim(config, clock=clock)
    task_id = (await api.beauty(face)).json["task_id"]
    assert (await api.query(task_id)).json["task_status"] == 0
    clock.advance(1)
    failed = await api.query(task_id)
    assert (failed.status, failed.code) == (422, "ERROR_NO_FACE_IN_FILE")


async def test_failed_task_can_report_status_3(
    make_sim: SimFactory, face: bytes, clock: ManualClock
) -> None:
    behaviour = TaskBehaviour(
        duration=Fixed(1),
        failure_share=1.0,
        failure_code="ERROR_BLURRY_FACE",
        failure_report="status",
    )
    api = await make_sim(SimulatorConfig(tasks=behaviour), clock=clock)
    task_id = (await api.beauty(face)).json["task_id"]
    clock.advance(1)
    answer = await api.query(task_id)
    assert answer.status == 200
    assert answer.json["task_status"] == 3
    assert answer.json["data"]["task_status"] == 3


async def test_failure_code_chooses_the_status(
    make_sim: SimFactory, face: bytes, clock: ManualClock
) -> None:
    behaviour = TaskBehaviour(duration=Fixed(0), failure_share=1.0, failure_code="AI_SERVICE_ERROR")
    api = await make_sim(SimulatorConfig(tasks=behaviour), clock=clock)
    task_id = (await api.beauty(face)).json["task_id"]
    answer = await api.query(task_id)
    assert (answer.status, answer.code) == (502, "AI_SERVICE_ERROR")


# --------------------------------------------------------------------------- seeds


async def _ids(api: SimApi, face: bytes) -> list[str]:
    bodies = [(await api.credits()).json, (await api.beauty(face)).json]
    return [bodies[0]["request_id"], bodies[0]["log_id"], bodies[1]["task_id"]]


async def test_seed_makes_ids_reproducible(make_sim: SimFactory, face: bytes) -> None:
    a = await _ids(await make_sim(SimulatorConfig(seed=1)), face)
    b = await _ids(await make_sim(SimulatorConfig(seed=1)), face)
    c = await _ids(await make_sim(SimulatorConfig(seed=2)), face)
    assert a == b
    assert a != c


def test_config_validates_its_knobs() -> None:
    with pytest.raises(ValueError, match="within"):
        TaskBehaviour(failure_share=1.5)
    with pytest.raises(ValueError, match="high"):
        Uniform(2, 1)
    with pytest.raises(ValueError, match=">= 0"):
        SimulatorConfig(result_ttl=-1)
