"""A :class:`SimulatorConfig` from plain option values: what ``ailab-async simulate`` and
``--simulate`` are given on the command line, or any other front end holding strings and
numbers.

This module owns the meaning of the flat knobs (a duration spec such as ``0.5:2.0`` or
``lognormal:1:0.5``, one ``fault_5xx`` rate split evenly over 500/502/503/504, latency on the
API endpoints but not on result downloads unless asked). It is pure: no I/O, no clock. Like
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
    Credits,
    Distribution,
    Faults,
    Latency,
    RateLimit,
    SimulatorConfig,
    TaskBehaviour,
    parse_distribution,
)

__all__ = ["SimulatorOptionError", "config_from_options"]


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
    burst: int | None = None,
    retry_after: bool = True,
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

    Durations (``latency``, ``result_latency``, ``task_duration``) are specs for
    :func:`~ailab_async.testing.simulator.parse_distribution`. ``latency`` applies to every
    API endpoint, ``result_latency`` to result downloads. ``rate_limit`` is requests per
    second per key (``burst``: the bucket size, ``retry_after``: send the header);
    ``credits`` a balance per key. Raises :class:`SimulatorOptionError` naming the option
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
    task_time = _duration("task_duration", task_duration)
    with _blame("rate_limit"):
        rate = RateLimit(rate_limit, burst, retry_after) if rate_limit is not None else None
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
