"""Fault injection: each fault by rate, seeded, before or after processing."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import attrs
import pytest

from ailab_async.testing.simulator import Credits, Faults, SimulatorConfig
from tests.simulator._helpers import SimFactory


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("error_500", 500, "PROCESSING_FAILURE"),
        ("error_502", 502, "AI_SERVICE_ERROR"),
        ("error_503", 503, "ERROR_INSUFFICIENT_RESOURCES"),
        ("error_504", 504, "AI_SERVICE_TIMEOUT"),
    ],
)
async def test_5xx_envelopes(make_sim: SimFactory, fault: str, status: int, code: str) -> None:
    only: dict[str, Any] = {fault: 1.0}
    api = await make_sim(SimulatorConfig(faults=attrs.evolve(Faults(), **only)))
    answer = await api.credits()
    assert answer.status == status
    assert answer.json["error_code"] == status
    assert answer.code == code
    assert api.stats.count("query-credits", code) == 1
    assert api.stats.faults[(fault, "before")] == 1


async def test_connection_reset_is_a_client_connection_error(
    make_sim: SimFactory, face: bytes
) -> None:
    api = await make_sim(SimulatorConfig(faults=Faults(connection_reset=1.0)))
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.skin(face)
    assert api.stats.count("smart-skin", "connection_reset") == 1


async def test_html_502_page(make_sim: SimFactory) -> None:
    api = await make_sim(SimulatorConfig(faults=Faults(html_502=1.0)))
    answer = await api.credits()
    assert answer.status == 502
    assert answer.content_type == "text/html"
    assert b"502 Bad Gateway" in answer.raw


async def test_truncated_json_with_honest_length(make_sim: SimFactory) -> None:
    api = await make_sim(SimulatorConfig(faults=Faults(truncated_json=1.0)))
    answer = await api.credits()
    assert answer.status == 200
    assert answer.content_type == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.raw)


async def test_truncated_json_with_lying_length_errors_instead_of_hanging(
    make_sim: SimFactory,
) -> None:
    faults = Faults(truncated_json=1.0, truncated_lying_length=True)
    api = await make_sim(SimulatorConfig(faults=faults), timeout=5.0)
    with pytest.raises(aiohttp.ClientPayloadError):
        await api.credits()


async def test_stall_holds_the_answer_until_the_client_gives_up(make_sim: SimFactory) -> None:
    faults = Faults(stall=1.0, stall_seconds=30.0)
    api = await make_sim(SimulatorConfig(faults=faults), timeout=0.2)
    with pytest.raises(TimeoutError):
        await api.credits()
    assert api.stats.faults[("stall", "before")] == 1


async def test_short_stall_then_a_normal_answer(make_sim: SimFactory) -> None:
    faults = Faults(stall=1.0, stall_seconds=0.05)
    api = await make_sim(SimulatorConfig(faults=faults), timeout=5.0)
    assert (await api.credits()).status == 200


async def test_fault_before_processing_bills_nothing(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim(SimulatorConfig(credits=Credits(10), faults=Faults(error_503=1.0)))
    assert (await api.skin(face)).status == 503
    assert api.sim.balance() == 10
    assert not api.stats.submits_per_image


async def test_fault_after_processing_is_billed_ambiguous_work(
    make_sim: SimFactory, face: bytes
) -> None:
    faults = Faults(connection_reset=1.0, after_processing_share=1.0)
    api = await make_sim(SimulatorConfig(credits=Credits(10), faults=faults))
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.beauty(face)
    assert api.sim.balance() == 9
    assert len(api.sim.state.tasks) == 1
    assert api.stats.faults[("connection_reset", "after")] == 1


async def test_fault_rates_are_seeded_and_roughly_respected(make_sim: SimFactory) -> None:
    config = SimulatorConfig(seed=3, faults=Faults(error_500=0.25, html_502=0.25))
    runs = []
    for _ in range(2):
        api = await make_sim(config)
        runs.append([(await api.credits()).status for _ in range(80)])
    assert runs[0] == runs[1]
    ok, failed = runs[0].count(200), runs[0].count(500) + runs[0].count(502)
    assert ok + failed == 80
    assert 25 <= ok <= 55


async def test_faults_can_target_some_endpoints_only(make_sim: SimFactory, face: bytes) -> None:
    faults = Faults(error_502=1.0, endpoints=frozenset({"query-credits"}))
    api = await make_sim(SimulatorConfig(faults=faults))
    assert (await api.credits()).status == 502
    assert (await api.skin(face)).status == 200


def test_fault_rates_cannot_exceed_one() -> None:
    with pytest.raises(ValueError, match="at most 1"):
        Faults(error_500=0.6, error_502=0.6)
    with pytest.raises(ValueError, match="unknown endpoints"):
        Faults(endpoints=frozenset({"nope"}))
