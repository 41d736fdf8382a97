"""``ailab-async simulate``: serve the local simulator of the API until SIGINT/SIGTERM.

Its options map one to one onto :func:`~ailab_async.testing.simulator._options.config_from_options`
(which owns the rules); this module only parses and serves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING

from ._output import fail
from ._parser import Subparsers, number, positive_float, positive_int, share, without_values

if TYPE_CHECKING:
    from ailab_async.testing.simulator import SimulatorConfig

__all__ = ["add_simulate", "simulator_config"]


def port_number(text: str) -> int:
    """A TCP port to bind: 0 (any free one) to 65535."""
    value: int = number(text, int)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("not a port number (0 to 65535)")
    return value


def add_simulate(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        allow_abbrev=False,
        help="serve a local simulator of the AILabTools API",
        description=(
            "Serve a local simulator of the AILabTools API until SIGINT/SIGTERM. "
            "Durations are SECONDS, MIN:MAX (uniform), lognormal:MEDIAN:SIGMA[:CAP] or "
            "bimodal:LONG_SHARE/SHORT/LONG; task durations may also be "
            "queue:PER_PENDING/BASE or drift:N/BEFORE/AFTER (after N tasks; Ns: seconds). "
            "Every knob is documented in the simulator guide of the documentation."
        ),
    )
    add = parser.add_argument
    add(
        "--host", metavar="ADDRESS", default="127.0.0.1", help="address to bind (default 127.0.0.1)"
    )
    add(
        "--port",
        type=port_number,
        metavar="N",
        default=8080,
        help="port to bind, 0 for any free one (default 8080)",
    )
    add(
        "--api-key",
        metavar="KEY",
        default="sim-key-000",
        help="the accepted API key (default sim-key-000)",
    )
    add("--seed", type=int, metavar="N", default=0, help="seed of every random choice (default 0)")
    add(
        "--envelope",
        choices=("legacy", "modern"),
        default="legacy",
        help="response style (default legacy)",
    )
    add("--latency", metavar="DURATION", help="extra latency on every API endpoint (default none)")
    add("--result-latency", metavar="DURATION", help="extra latency on result downloads")
    add(
        "--rate-limit",
        type=positive_float,
        metavar="RPS",
        help="requests per second per key (default unlimited)",
    )
    add(
        "--rate-shape",
        metavar="SHAPE",
        # Checked by config_from_options, so the parser need not import the simulator.
        help="how the per-key limit counts: token-bucket (default), sliding-window, "
        "fixed-window, leaky-bucket, or concurrency (with --max-in-flight, no rate)",
    )
    add(
        "--rate-schedule",
        metavar="T:RPS,...",
        help="a rate that changes: RPS from T seconds after a key's first request, "
        "e.g. 0:50,10:20,20:50",
    )
    add("--burst", type=positive_int, metavar="N", help="token-bucket size (default: ceil(RPS))")
    add(
        "--rate-window",
        type=positive_float,
        metavar="SECONDS",
        help="window of the sliding-window and fixed-window shapes (default 1)",
    )
    add(
        "--max-in-flight",
        type=positive_int,
        metavar="N",
        help="limit of the concurrency shape, per key",
    )
    add(
        "--instant-429",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="answer rate-limit 429s at once instead of after --latency (default off)",
    )
    add(
        "--retry-after",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send Retry-After with rate-limit 429s (default on)",
    )
    add(
        "--concurrency-limit",
        type=positive_int,
        metavar="N",
        help="API requests in flight at most, all keys together",
    )
    add("--credits", type=float, metavar="N", help="credit balance per key (default unlimited)")
    add(
        "--task-duration",
        metavar="DURATION",
        default="0.5:2.0",
        help="smart-beauty task time (default 0.5:2.0)",
    )
    add(
        "--failure-share",
        type=share,
        metavar="SHARE",
        default=0.0,
        help="share of tasks that fail (default 0)",
    )
    add(
        "--result-ttl",
        type=positive_float,
        metavar="SECONDS",
        default=24 * 3600.0,
        help="how long result URLs live (default 86400)",
    )
    add(
        "--fault-5xx",
        type=share,
        metavar="SHARE",
        default=0.0,
        help="share of requests answered 500/502/503/504, split evenly (default 0)",
    )
    add(
        "--fault-reset",
        type=share,
        metavar="SHARE",
        default=0.0,
        help="share of requests whose connection is reset (default 0)",
    )
    add(
        "--fault-html",
        type=share,
        metavar="SHARE",
        default=0.0,
        help="share of requests answered with an HTML 502 page (default 0)",
    )
    add(
        "--fault-truncated",
        type=share,
        metavar="SHARE",
        default=0.0,
        help="share of requests answered with truncated JSON (default 0)",
    )
    add(
        "--fault-stall",
        type=share,
        metavar="SHARE",
        default=0.0,
        help="share of requests whose answer stalls (default 0)",
    )
    add(
        "--stall-seconds",
        type=positive_float,
        metavar="SECONDS",
        default=30.0,
        help="how long a stall lasts (default 30)",
    )
    add(
        "--fault-after-processing",
        type=share,
        default=0.0,
        metavar="SHARE",
        help="share of faults that hit after the call was processed and billed",
    )
    parser.set_defaults(handler=_run_simulate)


def simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    """The configuration ``ailab-async simulate`` serves, from its options."""
    from ailab_async.testing.simulator._options import (  # noqa: PLC0415 - keep others light
        config_from_options,
    )

    return config_from_options(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        seed=args.seed,
        envelope=args.envelope,
        latency=args.latency,
        result_latency=args.result_latency,
        rate_limit=args.rate_limit,
        rate_shape=args.rate_shape,
        rate_schedule=args.rate_schedule,
        burst=args.burst,
        rate_window=args.rate_window,
        max_in_flight=args.max_in_flight,
        retry_after=args.retry_after,
        instant_429=args.instant_429,
        concurrency_limit=args.concurrency_limit,
        credits=args.credits,
        task_duration=args.task_duration,
        failure_share=args.failure_share,
        result_ttl=args.result_ttl,
        fault_5xx=args.fault_5xx,
        fault_reset=args.fault_reset,
        fault_html=args.fault_html,
        fault_truncated=args.fault_truncated,
        fault_stall=args.fault_stall,
        stall_seconds=args.stall_seconds,
        fault_after_processing=args.fault_after_processing,
    )


async def _serve_until_signalled(config: SimulatorConfig) -> None:
    from ailab_async.testing.simulator import Simulator  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Simulator(config) as sim:
            print(f"AILabTools simulator listening on {sim.url}", flush=True)
            print(f"API key: {sim.api_key}", flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("simulator stopped", flush=True)


def _run_simulate(args: argparse.Namespace) -> int:
    try:
        config = simulator_config(args)
    except ValueError as exc:  # SimulatorOptionError: it may quote a value, maybe a pasted key
        durations = [args.latency, args.result_latency, args.task_duration]
        fail("simulate", without_values(str(exc), [d for d in durations if d], set()))
        return 2
    try:
        asyncio.run(_serve_until_signalled(config))
    except OSError as exc:  # e.g. the port is taken
        fail("simulate", exc)
        return 1
    return 0
