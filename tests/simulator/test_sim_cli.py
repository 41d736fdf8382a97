"""``ailab-async simulate``: argument parsing, and a real process serving requests."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import urllib.request

import pytest

from ailab_async.cli import build_parser, main
from ailab_async.cli._simulate import simulator_config
from ailab_async.testing.simulator import (
    RATE_SHAPES,
    Bimodal,
    Credits,
    Drift,
    Fixed,
    QueueGrowth,
    RateLimit,
    SimulatorConfig,
    Uniform,
)


def parse(*argv: str) -> SimulatorConfig:
    return simulator_config(build_parser().parse_args(["simulate", *argv]))


def test_defaults_are_a_healthy_api_on_loopback() -> None:
    config = parse()
    assert config.host == "127.0.0.1"
    assert config.port == 8080
    assert config.rate_limit is None
    assert config.credits is None
    assert config.faults.pick(0.0) is None


def test_knobs_map_onto_the_config() -> None:
    c = parse(
        "--port",
        "0",
        "--api-key",
        "k",
        "--seed",
        "4",
        "--latency",
        "0.1",
        "--rate-limit",
        "5",
        "--burst",
        "7",
        "--no-retry-after",
        "--concurrency-limit",
        "3",
        "--credits",
        "100",
        "--task-duration",
        "1:2",
        "--failure-share",
        "0.1",
        "--fault-5xx",
        "0.2",
        "--fault-reset",
        "0.05",
        "--fault-stall",
        "0.01",
        "--stall-seconds",
        "3",
        "--fault-after-processing",
        "0.5",
        "--envelope",
        "modern",
    )
    assert (c.api_key, c.seed, c.port, c.envelope) == ("k", 4, 0, "modern")
    assert c.latency.smart_skin == Fixed(0.1)
    assert c.latency.results is None
    assert c.rate_limit == RateLimit(5.0, 7, retry_after=False)
    assert c.concurrency_limit == 3
    assert c.credits == Credits(100.0)
    assert c.tasks.duration == Uniform(1.0, 2.0)
    assert c.tasks.failure_share == 0.1
    assert c.faults.error_503 == pytest.approx(0.05)
    assert c.faults.connection_reset == 0.05
    assert c.faults.stall_seconds == 3.0
    assert c.faults.after_processing_share == 0.5


def test_limiter_zoo_flags_map_onto_the_rate_limit() -> None:
    c = parse(
        "--rate-shape",
        "sliding-window",
        "--rate-schedule",
        "0:50,10:20,20:50",
        "--rate-window",
        "2",
        "--instant-429",
        "--no-retry-after",
    )
    assert c.rate_limit == RateLimit(
        50,
        shape="sliding-window",
        schedule=((0, 50), (10, 20), (20, 50)),
        window=2.0,
        instant_429=True,
        retry_after=False,
    )
    assert parse("--rate-limit", "5", "--rate-shape", "leaky-bucket").rate_limit == RateLimit(
        5, shape="leaky-bucket"
    )
    concurrency = parse("--rate-shape", "concurrency", "--max-in-flight", "4")
    assert concurrency.rate_limit == RateLimit.concurrency(4)


def test_every_rate_shape_is_accepted_and_named_in_the_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for shape in RATE_SHAPES:
        extra = ["--max-in-flight", "3"] if shape == "concurrency" else ["--rate-limit", "3"]
        limit = parse("--rate-shape", shape, *extra).rate_limit
        assert limit is not None
        assert limit.shape == shape
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(shape in help_text for shape in RATE_SHAPES)


def test_task_duration_flag_takes_the_task_specs() -> None:
    assert parse("--task-duration", "bimodal:0.2/1:2/20").tasks.duration == Bimodal(
        Uniform(1, 2), Fixed(20), 0.2
    )
    assert parse("--task-duration", "queue:0.1/1:6").tasks.duration == QueueGrowth(
        Uniform(1, 6), 0.1
    )
    assert parse("--task-duration", "drift:50/1:6/4:8").tasks.duration == Drift(
        Uniform(1, 6), Uniform(4, 8), after_tasks=50
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate-shape", "funnel", "--rate-limit", "5"],
        ["--rate-shape", "concurrency"],
        ["--rate-limit", "5", "--rate-schedule", "nonsense"],
        ["--task-duration", "drift:x/1/2"],
    ],
)
def test_bad_zoo_values_exit_with_an_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *argv]) == 2
    assert "error" in capsys.readouterr().err


def test_bad_knob_values_exit_with_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--task-duration", "9:1"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--failure-share", "2"])


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--port", "70000"], "not a port number"),
        (["--port", "-1"], "not a port number"),
        (["--rate-limit", "0"], "not a positive number"),
        (["--burst", "0"], "not a positive integer"),
        (["--concurrency-limit", "0"], "not a positive integer"),
        (["--result-ttl", "-5"], "not a positive number"),
        (["--stall-seconds", "0"], "not a positive number"),
        (["--rate-lim", "5"], "unrecognized arguments"),  # no abbreviations
    ],
)
def test_out_of_range_values_are_usage_errors_before_binding(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", *argv])
    assert info.value.code == 2
    assert says in capsys.readouterr().err


def test_simulate_help_names_units_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for internal in ("FAILURE_SHARE", "RESULT_TTL", "FAULT_5XX", "STALL_SECONDS", "API_KEY"):
        assert internal not in text
    assert "rate of" not in text  # fault knobs take shares
    for default in ("(default 0.5:2.0)", "(default 86400)", "(default 30)", "(default legacy)"):
        assert default in text


def test_a_subcommand_is_required() -> None:
    with pytest.raises(SystemExit):
        main([])


def _read_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError("the simulator printed nothing")
    return proc.stdout.readline()


def test_simulate_serves_until_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "ailab_async.cli",
        "simulate",
        "--port",
        "0",
        "--api-key",
        "cli-key",
        "--credits",
        "7",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            first = _read_line(proc)
            url = first.strip().rsplit(" ", 1)[-1]
            assert url.startswith("http://127.0.0.1:")
            assert proc.stdout is not None
            assert "cli-key" in proc.stdout.readline()  # printed right after the URL
            request = urllib.request.Request(
                url + "/api/common/query-credits", headers={"ailabapi-api-key": "cli-key"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.load(response)
            assert body["data"][0]["balance"] == 7
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "stopped" in out
