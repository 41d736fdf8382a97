"""The ``ailab-async`` command line: one subcommand per job.

Add a subcommand by writing ``_add_<name>(subparsers)`` that registers its parser and sets
``handler`` (a ``Callable[[argparse.Namespace], int]``) with ``set_defaults``, then listing it
in :data:`_SUBCOMMANDS`.

    ailab-async simulate --port 8080 --rate-limit 10 --fault-5xx 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ailab_async.simulator import SimulatorConfig

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- simulate


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not within [0, 1]")
    return value


def _add_simulate(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="serve a local simulator of the AILabTools API",
        description=(
            "Serve a local simulator of the AILabTools API until SIGINT/SIGTERM. "
            "Durations are SECONDS, MIN:MAX (uniform) or lognormal:MEDIAN:SIGMA[:CAP]. "
            "See docs/simulator.md."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=8080, help="port to bind, 0 for any free one (default 8080)")
    add("--api-key", default="sim-key-000", help="the accepted API key (default sim-key-000)")
    add("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    add("--envelope", choices=("legacy", "modern"), default="legacy", help="response style")
    add("--latency", metavar="DURATION", help="extra latency on every API endpoint")
    add("--result-latency", metavar="DURATION", help="extra latency on result downloads")
    add("--rate-limit", type=float, metavar="RPS", help="requests per second per key")
    add("--burst", type=int, help="rate-limit bucket size (default: ceil(RPS))")
    add(
        "--retry-after",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send Retry-After with rate-limit 429s (default on)",
    )
    add("--concurrency-limit", type=int, metavar="N", help="API requests in flight at most")
    add("--credits", type=float, metavar="N", help="credit balance per key (default unlimited)")
    add("--task-duration", metavar="DURATION", default="0.5:2.0", help="smart-beauty task time")
    add("--failure-share", type=_share, default=0.0, help="share of tasks that fail")
    add("--result-ttl", type=float, default=24 * 3600.0, help="seconds result URLs live")
    add("--fault-5xx", type=_share, default=0.0, help="rate of 500/502/503/504 (split evenly)")
    add("--fault-reset", type=_share, default=0.0, help="rate of connection resets")
    add("--fault-html", type=_share, default=0.0, help="rate of HTML 502 pages")
    add("--fault-truncated", type=_share, default=0.0, help="rate of truncated JSON bodies")
    add("--fault-stall", type=_share, default=0.0, help="rate of stalled answers")
    add("--stall-seconds", type=float, default=30.0, help="how long a stall lasts")
    add(
        "--fault-after-processing",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of faults that hit after the call was processed and billed",
    )
    parser.set_defaults(handler=_run_simulate)


def _simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    from ailab_async.simulator import (  # noqa: PLC0415 - keep other subcommands light
        Credits,
        Faults,
        Latency,
        RateLimit,
        SimulatorConfig,
        TaskBehaviour,
        parse_distribution,
    )

    latency = Latency()
    if args.latency is not None:
        api = parse_distribution(args.latency)
        latency = Latency(api, api, api, api, None)
    if args.result_latency is not None:
        latency = Latency(
            latency.smart_skin,
            latency.smart_beauty,
            latency.query_task,
            latency.query_credits,
            parse_distribution(args.result_latency),
        )
    each_5xx = args.fault_5xx / 4
    return SimulatorConfig(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        seed=args.seed,
        envelope=args.envelope,
        latency=latency,
        rate_limit=(
            RateLimit(args.rate_limit, args.burst, args.retry_after)
            if args.rate_limit is not None
            else None
        ),
        concurrency_limit=args.concurrency_limit,
        credits=Credits(args.credits) if args.credits is not None else None,
        tasks=TaskBehaviour(
            duration=parse_distribution(args.task_duration), failure_share=args.failure_share
        ),
        faults=Faults(
            error_500=each_5xx,
            error_502=each_5xx,
            error_503=each_5xx,
            error_504=each_5xx,
            connection_reset=args.fault_reset,
            html_502=args.fault_html,
            truncated_json=args.fault_truncated,
            stall=args.fault_stall,
            stall_seconds=args.stall_seconds,
            after_processing_share=args.fault_after_processing,
        ),
        result_ttl=args.result_ttl,
    )


async def _serve_until_signalled(config: SimulatorConfig) -> None:
    from ailab_async.simulator import Simulator  # noqa: PLC0415

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
        config = _simulator_config(args)
    except ValueError as exc:
        print(f"ailab-async simulate: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve_until_signalled(config))
    except OSError as exc:  # e.g. the port is taken
        print(f"ailab-async simulate: error: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- skeleton

_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_simulate,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``ailab-async`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ailab-async", description="Tools of the ailab-async SDK for the AILabTools API."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_subcommand in _SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ailab-async`` with ``argv`` (default: the process arguments); returns the exit code.

    >>> main(["simulate", "--help"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
