"""Task-duration shapes (bimodal, a growing queue, a mid-run drift), their specs, their use."""

from __future__ import annotations

import random

import pytest

from ailab_async.testing.simulator import (
    Bimodal,
    Drift,
    Fixed,
    LogNormal,
    ManualClock,
    QueueGrowth,
    SimulatorConfig,
    TaskBehaviour,
    TaskContext,
    Uniform,
    parse_distribution,
    parse_task_duration,
    sample_task_duration,
)
from tests.simulator._helpers import SimFactory

# --------------------------------------------------------------------------- pure shapes


def test_bimodal_draws_the_long_kind_at_its_share() -> None:
    mix = Bimodal(Uniform(1, 2), Uniform(20, 30), long_share=0.2)
    draws = [mix.sample(random.Random(i)) for i in range(2000)]
    short = [d for d in draws if 1 <= d <= 2]
    long = [d for d in draws if 20 <= d <= 30]
    assert len(short) + len(long) == len(draws)  # nothing in between
    assert 300 <= len(long) <= 500  # 400 expected
    assert draws == [mix.sample(random.Random(i)) for i in range(2000)]  # seeded


@pytest.mark.parametrize(("share", "expected"), [(0.0, {1.0}), (1.0, {9.0})])
def test_bimodal_extreme_shares_are_one_kind(share: float, expected: set[float]) -> None:
    mix = Bimodal(Fixed(1.0), Fixed(9.0), long_share=share)
    assert {mix.sample(random.Random(i)) for i in range(50)} == expected


def test_queue_growth_adds_per_pending_task() -> None:
    queue = QueueGrowth(Fixed(2.0), per_pending=0.25)
    rng = random.Random(0)
    assert [queue.sample(rng, TaskContext(pending=n)) for n in (0, 1, 8)] == [2.0, 2.25, 4.0]


def test_drift_switches_after_a_number_of_tasks() -> None:
    drift = Drift(Fixed(1.0), Fixed(5.0), after_tasks=3)
    got = [drift.sample(random.Random(0), TaskContext(submitted=n)) for n in range(5)]
    assert got == [1.0, 1.0, 1.0, 5.0, 5.0]


def test_drift_switches_after_some_seconds_and_can_reach_a_queue() -> None:
    drift = Drift(Fixed(1.0), QueueGrowth(Fixed(1.0), 1.0), after_seconds=10)
    early = TaskContext(submitted=50, elapsed=9.9, pending=3)
    late = TaskContext(submitted=51, elapsed=10.0, pending=3)
    assert sample_task_duration(drift, random.Random(0), early) == 1.0
    assert sample_task_duration(drift, random.Random(0), late) == 4.0


def test_sample_task_duration_ignores_the_context_of_plain_distributions() -> None:
    busy = TaskContext(submitted=9, elapsed=99.0, pending=99)
    assert sample_task_duration(Uniform(1, 2), random.Random(3), busy) == Uniform(1, 2).sample(
        random.Random(3)
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: Bimodal(Fixed(1), Fixed(2), long_share=1.5),
        lambda: QueueGrowth(Fixed(1), per_pending=-0.1),
        lambda: Drift(Fixed(1), Fixed(2)),
        lambda: Drift(Fixed(1), Fixed(2), after_tasks=3, after_seconds=3.0),
        lambda: Drift(Fixed(1), Fixed(2), after_tasks=-1),
        lambda: Drift(Fixed(1), Fixed(2), after_seconds=float("inf")),
    ],
)
def test_duration_shapes_validate_their_values(make: object) -> None:
    with pytest.raises(ValueError, match=r"must|exactly one"):
        make()  # type: ignore[operator]


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bimodal:0.2/1:2/20:30", Bimodal(Uniform(1, 2), Uniform(20, 30), 0.2)),
        ("bimodal:0.5/0.5/lognormal:10:0.5:60", Bimodal(Fixed(0.5), LogNormal(10, 0.5, 60), 0.5)),
        ("BIMODAL:0/1/2", Bimodal(Fixed(1), Fixed(2), 0.0)),
    ],
)
def test_parse_distribution_reads_bimodal(spec: str, expected: object) -> None:
    assert parse_distribution(spec) == expected
    assert parse_task_duration(spec) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("queue:0.05/1:6", QueueGrowth(Uniform(1, 6), 0.05)),
        ("drift:100/1:6/5:10", Drift(Uniform(1, 6), Uniform(5, 10), after_tasks=100)),
        ("drift:30s/2/lognormal:3:1", Drift(Fixed(2), LogNormal(3, 1), after_seconds=30.0)),
        ("1:6", Uniform(1, 6)),
    ],
)
def test_parse_task_duration_reads_queue_and_drift(spec: str, expected: object) -> None:
    assert parse_task_duration(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "bimodal:0.2/1:2",
        "bimodal:2/1/2",
        "bimodal:x/1/2",
        "bimodal:0.2/1:2:3/4",
        "bimodal:0.2/bimodal:0.1/1/2/3",
        "queue:0.1",
        "queue:-1/1",
        "queue:0.1/1/2",
        "drift:10/1",
        "drift:ten/1/2",
        "drift:1.5/1/2",
        "drift:-3s/1/2",
    ],
)
def test_bad_composite_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="bad duration spec"):
        parse_task_duration(spec)


@pytest.mark.parametrize("spec", ["queue:0.1/1", "drift:10/1/2"])
def test_latency_specs_cannot_read_a_task_context(spec: str) -> None:
    with pytest.raises(ValueError, match="bad duration spec"):
        parse_distribution(spec)


# --------------------------------------------------------------------------- on the server


async def test_a_growing_queue_lengthens_tasks_submitted_while_others_are_pending(
    make_sim: SimFactory, faces: list[bytes], clock: ManualClock
) -> None:
    behaviour = TaskBehaviour(duration=QueueGrowth(Fixed(10.0), per_pending=1.0))
    api = await make_sim(SimulatorConfig(tasks=behaviour), clock=clock)
    ids = [(await api.beauty(img)).json["task_id"] for img in faces[:4]]
    clock.advance(100)  # all four done: the queue is empty again
    ids.append((await api.beauty(faces[4])).json["task_id"])
    durations = [api.sim.state.tasks[i].duration for i in ids]
    assert durations == [10.0, 11.0, 12.0, 13.0, 10.0]


async def test_a_drift_changes_durations_after_n_tasks_on_the_server(
    make_sim: SimFactory, faces: list[bytes], clock: ManualClock
) -> None:
    behaviour = TaskBehaviour(duration=Drift(Fixed(1.0), Fixed(4.0), after_tasks=3))
    api = await make_sim(SimulatorConfig(tasks=behaviour), clock=clock)
    ids = []
    for img in faces[:5]:
        ids.append((await api.beauty(img)).json["task_id"])
        clock.advance(0.5)
    assert [api.sim.state.tasks[i].duration for i in ids] == [1.0, 1.0, 1.0, 4.0, 4.0]


async def test_a_drift_after_seconds_counts_from_the_first_task(
    make_sim: SimFactory, faces: list[bytes], clock: ManualClock
) -> None:
    behaviour = TaskBehaviour(duration=Drift(Fixed(1.0), Fixed(4.0), after_seconds=10))
    api = await make_sim(SimulatorConfig(tasks=behaviour), clock=clock)
    clock.advance(50)  # the server was up long before the first task: that does not count
    ids = []
    for img in faces[:3]:
        ids.append((await api.beauty(img)).json["task_id"])
        clock.advance(6)
    assert [api.sim.state.tasks[i].duration for i in ids] == [1.0, 1.0, 4.0]
