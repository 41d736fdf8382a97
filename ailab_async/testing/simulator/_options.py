"""A :class:`SimulatorConfig` from plain option values: what ``ailab-async simulate`` and
``--simulate`` are given on the command line, or any other front end holding strings and
numbers.

This module owns the meaning of the flat knobs (a duration spec such as ``0.5:2.0`` or
``lognormal:1:0.5``, a rate schedule such as ``0:50,10:20``, which rate-limit options go with
which shape, one ``fault_5xx`` rate split evenly over 500/502/503/504, latency on the API
endpoints but not on result downloads unless asked). It is pure: no I/O, no clock. Like
the rest of the simulator it imports nothing from the SDK, whose behaviour it checks.

>>> config = config_from_options(task_duration="1:2", fault_5xx=0.2, credits=10.0)
>>> config.tasks.duration, config.faults.error_503, config.credits.balance
(Uniform(low=1.0, high=2.0), 0.05, 10.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs

from ._config import (
    RATE_SHAPES,
    Credits,
    Distribution,
    Faults,
    Latency,
    RateLimit,
    RateSchedule,
    RateShape,
    SimulatorConfig,
    TaskBehaviour,
    parse_distribution,
    parse_task_duration,
)

__all__ = ["SimulatorOptionError", "config_from_options", "parse_rate_schedule"]


class SimulatorOptionError(ValueError):
    """An option value the simulator cannot use; ``option`` names it (the keyword of
    :func:`config_from_options`).

    The message may quote the value (``bad duration spec '9:1': ...``): a front end that
    must not echo values (a key pasted into the wrong option) hides them before printing.
    """

    def __init__(self, message: str, *, option: str) -> None:
        super().__init__(message)
        self.option = option


@contextlib.contextmanager
def _blame(option: str) -> Iterator[None]:
    """Turn the ``ValueError`` of a duration spec or a config validator into an error that
    names ``option``."""
    try:
        yield
    except SimulatorOptionError:
        raise
    except ValueError as exc:
        raise SimulatorOptionError(str(exc), option=option) from None


def _duration(option: str, spec: str | None) -> Distribution | None:
    if not spec:
        return None
    with _blame(option):
        return parse_distribution(spec)


def parse_rate_schedule(spec: str) -> RateSchedule:
    """Parse ``"SECONDS:RPS,SECONDS:RPS,..."`` (seconds since a key's first request).

    >>> parse_rate_schedule("0:50, 10:20, 20:50")
    ((0.0, 50.0), (10.0, 20.0), (20.0, 50.0))
    """
    steps = []
    for step in spec.split(","):
        at, sep, rate = step.partition(":")
        try:
            if not sep:
                raise ValueError("each step is SECONDS:RPS")
            steps.append((float(at), float(rate)))
        except ValueError as exc:
            raise ValueError(f"bad rate schedule {spec!r}: {exc}") from None
    return tuple(steps)


def _shape(name: str) -> RateShape:
    for shape in RATE_SHAPES:
        if name == shape:
            return shape
    raise SimulatorOptionError(
        f"rate_shape must be one of {', '.join(RATE_SHAPES)}, got {name!r}", option="rate_shape"
    )


def _rate_limit(
    *,
    rate: float | None,
    shape_name: str | None,
    schedule: str | None,
    burst: int | None,
    window: float | None,
    max_in_flight: int | None,
    retry_after: bool,
    instant_429: bool,
) -> RateLimit | None:
    """The per-key limit the rate options describe, ``None`` when they describe none."""
    shape = _shape(shape_name) if shape_name is not None else "token-bucket"
    if shape == "concurrency":
        if rate is not None or schedule:
            raise SimulatorOptionError(
                "the concurrency shape limits requests in flight (max_in_flight), not a rate",
                option="rate_shape",
            )
        if max_in_flight is None:
            raise SimulatorOptionError(
                "the concurrency shape needs max_in_flight", option="max_in_flight"
            )
        with _blame("max_in_flight"):
            return RateLimit.concurrency(
                max_in_flight, retry_after=retry_after, instant_429=instant_429
            )
    if max_in_flight is not None:
        raise SimulatorOptionError(
            "max_in_flight goes with the concurrency rate_shape", option="max_in_flight"
        )
    if burst is not None and shape != "token-bucket":
        raise SimulatorOptionError(
            f"burst goes with the token-bucket rate_shape, not {shape}", option="burst"
        )
    steps: RateSchedule = ()
    if schedule:
        with _blame("rate_schedule"):
            steps = parse_rate_schedule(schedule)
    if rate is None and steps and steps[0][0] == 0:
        rate = steps[0][1]  # the schedule says where it starts
    if rate is None:
        if shape_name is not None or steps:
            raise SimulatorOptionError(
                "give rate_limit (or a rate_schedule starting at 0) with this shape",
                option="rate_limit",
            )
        return None
    # The window and the schedule are checked on their own first, so an error names them.
    with _blame("rate_window"):
        options: dict[str, Any] = {} if window is None else {"window": window}
        RateLimit(1.0, **options)
    with _blame("rate_schedule"):
        RateLimit(1.0, schedule=steps)
    with _blame("rate_limit"):
        return RateLimit(
            rate,
            burst,
            retry_after,
            shape=shape,
            instant_429=instant_429,
            schedule=steps,
            **options,
        )


def config_from_options(
    *,
    api_key: str | None = None,
    host: str | None = None,
    port: int | None = None,
    seed: int = 0,
    envelope: str | None = None,
    latency: str | None = None,
    result_latency: str | None = None,
    rate_limit: float | None = None,
    rate_shape: str | None = None,
    rate_schedule: str | None = None,
    burst: int | None = None,
    rate_window: float | None = None,
    max_in_flight: int | None = None,
    retry_after: bool = True,
    instant_429: bool = False,
    concurrency_limit: int | None = None,
    credits: float | None = None,
    task_duration: str | None = None,
    failure_share: float = 0.0,
    result_ttl: float | None = None,
    fault_5xx: float = 0.0,
    fault_reset: float = 0.0,
    fault_html: float = 0.0,
    fault_truncated: float = 0.0,
    fault_stall: float = 0.0,
    stall_seconds: float | None = None,
    fault_after_processing: float = 0.0,
) -> SimulatorConfig:
    """Build a :class:`SimulatorConfig`; an option left ``None`` keeps its default there.

    Durations (``latency``, ``result_latency``) are specs for
    :func:`~ailab_async.testing.simulator.parse_distribution`, ``task_duration`` one for
    :func:`~ailab_async.testing.simulator.parse_task_duration`. ``latency`` applies to every
    API endpoint, ``result_latency`` to result downloads. ``rate_limit`` is requests per
    second per key, limited the ``rate_shape`` way (a :class:`RateLimit` shape, default the
    token bucket; ``burst``: its size; ``rate_window``: the window shapes' seconds),
    changing over time by ``rate_schedule`` (``"0:50,10:20"``, from which ``rate_limit``
    may be left out); the ``"concurrency"`` shape takes ``max_in_flight`` instead of a rate.
    ``retry_after`` sends the header, ``instant_429`` answers refusals without the latency.
    ``credits`` is a balance per key. Raises :class:`SimulatorOptionError` naming the option
    whose value cannot be used.

    >>> config_from_options(latency="0.1").latency.smart_skin
    Fixed(seconds=0.1)
    >>> config_from_options(task_duration="9:1")
    Traceback (most recent call last):
    ...
    ailab_async.testing.simulator._options.SimulatorOptionError: bad duration spec '9:1': ...
    """
    chosen: dict[str, Any] = {
        name: value
        for name, value in (
            ("api_key", api_key),
            ("host", host),
            ("port", port),
            ("envelope", envelope),
            ("result_ttl", result_ttl),
        )
        if value is not None
    }
    api_latency = _duration("latency", latency)
    task_time = None
    if task_duration:
        with _blame("task_duration"):
            task_time = parse_task_duration(task_duration)
    rate = _rate_limit(
        rate=rate_limit,
        shape_name=rate_shape,
        schedule=rate_schedule,
        burst=burst,
        window=rate_window,
        max_in_flight=max_in_flight,
        retry_after=retry_after,
        instant_429=instant_429,
    )
    with _blame("credits"):
        balance = Credits(credits) if credits is not None else None
    with _blame("failure_share"):
        tasks = TaskBehaviour(failure_share=failure_share)
        if task_time is not None:
            tasks = attrs.evolve(tasks, duration=task_time)
    each_5xx = fault_5xx / 4  # split evenly over 500, 502, 503 and 504
    with _blame("faults"):  # the message names the rate at fault
        faults = Faults(
            error_500=each_5xx,
            error_502=each_5xx,
            error_503=each_5xx,
            error_504=each_5xx,
            connection_reset=fault_reset,
            html_502=fault_html,
            truncated_json=fault_truncated,
            stall=fault_stall,
            after_processing_share=fault_after_processing,
        )
        if stall_seconds is not None:
            faults = attrs.evolve(faults, stall_seconds=stall_seconds)
    with _blame("config"):
        return SimulatorConfig(
            seed=seed,
            latency=Latency(
                api_latency,
                api_latency,
                api_latency,
                api_latency,
                _duration("result_latency", result_latency),
            ),
            rate_limit=rate,
            concurrency_limit=concurrency_limit,
            credits=balance,
            tasks=tasks,
            faults=faults,
            **chosen,
        )
