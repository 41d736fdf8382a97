"""The shared-limit benchmark's fixed pace: one schedule dealt to the processes in turn."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks._common import FixedPace
from benchmarks.bench_shared_limit import _parse_args, fixed_phases, per_second


class FakeTime:
    """A wall clock that only the sleeper moves."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _limiter(fake: FakeTime, index: int, *, start: float = 100.0) -> FixedPace:
    return FixedPace(start, 40.0, index, 4, clock=fake.clock, sleep=fake.sleep)


def test_the_processes_take_the_slots_of_one_schedule_in_turn() -> None:
    # 40/s in all, 4 processes: process 1 owns slots 1, 5, 9, ... (25 ms apart in all).
    fake = FakeTime(99.0)
    limiter = _limiter(fake, 1)
    slots = [asyncio.run(limiter.acquire()) for _ in range(3)]
    assert slots == pytest.approx([100.025, 100.125, 100.225])
    assert fake.now == pytest.approx(100.225)  # slept until each slot
    assert limiter.current_rate() == limiter.configured_rate == 40.0


def test_a_slot_already_past_is_skipped_not_sent_late() -> None:
    # Asked at 100.13 (after a 429's wait, say), process 0 skips its slot at 100.1 and
    # takes the next of its own, 100.2: sent late, it would crowd process 1's at 100.125.
    fake = FakeTime(100.13)
    limiter = _limiter(fake, 0)
    assert asyncio.run(limiter.acquire()) == pytest.approx(100.2)
    assert asyncio.run(limiter.acquire()) == pytest.approx(100.3)


def test_a_429_is_only_counted() -> None:
    fake = FakeTime(99.0)
    limiter = _limiter(fake, 2)
    sent = asyncio.run(limiter.acquire())
    limiter.on_rate_limited(sent, 1.0)
    limiter.on_success(sent)
    assert limiter.rate_limited_count == 1
    assert asyncio.run(limiter.acquire()) == pytest.approx(sent + 0.1)  # the pace stays


def test_paces_are_read_from_the_command_line_and_scaled_by_default() -> None:
    assert _parse_args(["--phases", "pace", "--paces", "37,36.5"]).paces == [37.0, 36.5]
    assert _parse_args(["--phases", "pace", "--rate", "20"]).paces == [19.0, 18.5, 18.0]
    assert [p.label for p in fixed_phases([37.0, 36.5])] == [
        "fixed pace 37/s",
        "fixed pace 36.5/s",
    ]
    with pytest.raises(SystemExit):
        _parse_args(["--paces", "0"])


def test_arrivals_are_counted_per_second_from_the_first_of_either_kind() -> None:
    accepted, refused = [10.2, 10.9, 11.5, 13.0], [10.0, 12.1]
    assert per_second(accepted, refused) == [2, 1, 0, 1]
    assert per_second(refused, accepted) == [1, 0, 1]
    assert per_second([], refused) == []


def test_the_fixed_paces_run_only_when_asked_for() -> None:
    assert _parse_args([]).phases == ["shared", "wrong", "per-process"]
    assert _parse_args(["--phases", "shared,pace"]).phases == ["shared", "pace"]
