"""A ``SimulatorConfig`` from plain option values (``testing.simulator._options``): what the
flat knobs mean, and errors that name the option at fault."""

from __future__ import annotations

from typing import Any

import pytest

from ailab_async.testing.simulator import (
    Credits,
    Fixed,
    Latency,
    LogNormal,
    RateLimit,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    parse_task_duration,
)
from ailab_async.testing.simulator._options import (
    SimulatorOptionError,
    config_from_options,
    parse_rate_schedule,
)


def test_no_options_are_the_default_config() -> None:
    assert config_from_options() == SimulatorConfig()


@pytest.mark.parametrize(
    ("spec", "distribution"),
    [
        ("0.5", Fixed(0.5)),
        ("0.5:2.0", Uniform(0.5, 2.0)),
        ("lognormal:1:0.5", LogNormal(1.0, 0.5)),
        ("lognormal:1:0.5:4", LogNormal(1.0, 0.5, 4.0)),
    ],
)
def test_duration_specs(spec: str, distribution: Any) -> None:
    config = config_from_options(task_duration=spec, latency=spec, result_latency=spec)
    assert config.tasks.duration == distribution
    assert config.latency == Latency.everywhere(distribution)


def test_latency_is_on_the_api_endpoints_only_unless_results_are_asked() -> None:
    latency = config_from_options(latency="0.1").latency
    assert latency == Latency(Fixed(0.1), Fixed(0.1), Fixed(0.1), Fixed(0.1), None)
    assert config_from_options(result_latency="2").latency == Latency(results=Fixed(2.0))


def test_knobs_land_where_they_belong() -> None:
    config = config_from_options(
        api_key="k",
        host="0.0.0.0",
        port=8080,
        seed=3,
        envelope="modern",
        rate_limit=5,
        burst=7,
        retry_after=False,
        concurrency_limit=2,
        credits=10,
        failure_share=0.25,
        result_ttl=60,
        fault_5xx=0.2,
        fault_reset=0.1,
        fault_html=0.05,
        fault_truncated=0.04,
        fault_stall=0.03,
        stall_seconds=1.5,
        fault_after_processing=0.5,
    )
    assert (config.api_key, config.host, config.port, config.seed) == ("k", "0.0.0.0", 8080, 3)
    assert (config.envelope, config.concurrency_limit, config.result_ttl) == ("modern", 2, 60)
    assert config.rate_limit == RateLimit(5, 7, retry_after=False)
    assert config.credits == Credits(10)
    assert config.tasks == TaskBehaviour(failure_share=0.25)
    faults = config.faults
    # One 5xx rate, split evenly over the four server errors.
    assert [faults.error_500, faults.error_502, faults.error_503, faults.error_504] == [
        pytest.approx(0.05)
    ] * 4
    assert (faults.connection_reset, faults.html_502, faults.truncated_json) == (0.1, 0.05, 0.04)
    assert (faults.stall, faults.stall_seconds, faults.after_processing_share) == (0.03, 1.5, 0.5)


@pytest.mark.parametrize(
    ("options", "option", "quoted"),
    [
        ({"task_duration": "9:1"}, "task_duration", "'9:1'"),
        ({"task_duration": "slow"}, "task_duration", "'slow'"),
        ({"latency": "lognormal:1"}, "latency", "'lognormal:1'"),
        ({"result_latency": "-1"}, "result_latency", ""),
        ({"credits": -1.0}, "credits", ""),
        ({"rate_limit": -5.0}, "rate_limit", ""),
        ({"failure_share": 2.0}, "failure_share", ""),
        ({"fault_reset": 1.5}, "faults", ""),
    ],
)
def test_bad_values_raise_an_error_naming_the_option(
    options: dict[str, Any], option: str, quoted: str
) -> None:
    with pytest.raises(SimulatorOptionError) as excinfo:
        config_from_options(**options)
    assert excinfo.value.option == option
    assert isinstance(excinfo.value, ValueError)
    assert quoted in str(excinfo.value)


# --------------------------------------------------------------------------- limiter zoo


def test_rate_shape_options_build_the_shape() -> None:
    config = config_from_options(
        rate_limit=40,
        rate_shape="sliding-window",
        rate_window=2,
        instant_429=True,
        retry_after=False,
    )
    assert config.rate_limit == RateLimit(
        40, shape="sliding-window", window=2.0, instant_429=True, retry_after=False
    )


def test_concurrency_shape_takes_max_in_flight_instead_of_a_rate() -> None:
    config = config_from_options(rate_shape="concurrency", max_in_flight=6)
    assert config.rate_limit == RateLimit.concurrency(6)
    assert config.concurrency_limit is None  # the server-wide limit is another option


def test_a_schedule_starting_at_zero_gives_the_rate() -> None:
    config = config_from_options(rate_schedule="0:50,10:20,20:50", rate_shape="fixed-window")
    assert config.rate_limit == RateLimit(
        50, shape="fixed-window", schedule=((0, 50), (10, 20), (20, 50))
    )
    later = config_from_options(rate_limit=30, rate_schedule="5:10").rate_limit
    assert later is not None
    assert [later.rate_at(t) for t in (0, 5)] == [30, 10]


def test_parse_rate_schedule() -> None:
    assert parse_rate_schedule("0:50") == ((0.0, 50.0),)
    assert parse_rate_schedule(" 0 : 5 ,1.5:2.5") == ((0.0, 5.0), (1.5, 2.5))


@pytest.mark.parametrize(
    "spec",
    [
        "queue:0.05/1:6",
        "drift:100/1:6/5:10",
        "drift:30s/1:6/5:10",
        "bimodal:0.2/1:2/20:30",
    ],
)
def test_task_duration_takes_every_task_spec(spec: str) -> None:
    assert config_from_options(task_duration=spec).tasks.duration == parse_task_duration(spec)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"rate_limit": 5, "rate_shape": "bucket"}, "rate_shape"),
        ({"rate_shape": "sliding-window"}, "rate_limit"),
        ({"rate_schedule": "5:10"}, "rate_limit"),
        ({"rate_limit": 5, "rate_schedule": "0-5"}, "rate_schedule"),
        ({"rate_limit": 5, "rate_schedule": "5:1,2:1"}, "rate_schedule"),
        ({"rate_limit": 5, "rate_window": 0.0}, "rate_window"),
        ({"rate_limit": 5, "rate_shape": "leaky-bucket", "burst": 3}, "burst"),
        ({"rate_limit": 5, "max_in_flight": 3}, "max_in_flight"),
        ({"rate_shape": "concurrency"}, "max_in_flight"),
        ({"rate_shape": "concurrency", "max_in_flight": 0}, "max_in_flight"),
        ({"rate_shape": "concurrency", "max_in_flight": 2, "rate_limit": 5}, "rate_shape"),
        ({"task_duration": "queue:x/1"}, "task_duration"),
        ({"latency": "queue:0.1/1"}, "latency"),
    ],
)
def test_bad_rate_options_name_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(SimulatorOptionError) as excinfo:
        config_from_options(**options)
    assert excinfo.value.option == option
