"""The ``ailab-async`` command: the subcommand registry, ``main``, and the small commands.

Add a subcommand by writing ``add_<name>(subparsers)`` that registers its parser and sets
``handler`` (a ``Callable[[argparse.Namespace], int]``) with ``set_defaults``, then listing it
in :data:`_SUBCOMMANDS`. The batch commands live in :mod:`~ailab_async.cli._batch` (a new
batch operation is one entry in its table); the parser that never echoes a value, and the
options shared by subcommands, in :mod:`~ailab_async.cli._parser`.

    ailab-async skin photos/ --out retouched/ --retouch 0.8
    ailab-async beauty photos/ --out beautified/ --simulate
    ailab-async sample-photos demo-photos -n 24
    ailab-async credits
    ailab-async simulate --port 8080 --rate-limit 10 --fault-5xx 0.05

Exit status: 0 success, 1 some items (or the call) failed or are not finished, 2 usage or
configuration error (a journal in use by another run included: nothing was sent), 130
interrupted. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._batch import add_batch_commands
from ._connection import api_key, embedded_simulator_config, open_client
from ._output import CliError, amount, fail, guarded
from ._parser import (
    Parser,
    RefuseKeyOption,
    Subparsers,
    add_connection_options,
    positive_int,
    share,
    without_values,
)
from ._progress import display_text

if TYPE_CHECKING:
    from ailab_async.testing.simulator import SimulatorConfig

__all__ = ["build_parser", "main", "simulator_config"]

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- simulate


def _add_simulate(subparsers: Subparsers) -> None:
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
    add("--failure-share", type=share, default=0.0, help="share of tasks that fail")
    add("--result-ttl", type=float, default=24 * 3600.0, help="seconds result URLs live")
    add("--fault-5xx", type=share, default=0.0, help="rate of 500/502/503/504 (split evenly)")
    add("--fault-reset", type=share, default=0.0, help="rate of connection resets")
    add("--fault-html", type=share, default=0.0, help="rate of HTML 502 pages")
    add("--fault-truncated", type=share, default=0.0, help="rate of truncated JSON bodies")
    add("--fault-stall", type=share, default=0.0, help="rate of stalled answers")
    add("--stall-seconds", type=float, default=30.0, help="how long a stall lasts")
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
        burst=args.burst,
        retry_after=args.retry_after,
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


# --------------------------------------------------------------------------- credits


def _add_credits(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "credits",
        allow_abbrev=False,
        help="show the account's credit balance",
        description="Show each credit bucket of the account and the total (a free call).",
    )
    add_connection_options(parser)
    parser.set_defaults(handler=lambda args: guarded(args, lambda: _credits_command(args)))


def _credits_command(args: argparse.Namespace) -> int:
    key = None if args.simulate else api_key(args, args.command)
    if args.simulate:
        embedded_simulator_config(args)
    return asyncio.run(_show_credits(args, key))


async def _show_credits(args: argparse.Namespace, key: str | None) -> int:
    async with open_client(args, key) as client:
        credits = await client.credits()
    width = max([len(display_text(b.name)) for b in credits] + [5])
    for bucket in credits:
        print(
            f"{display_text(bucket.name):<{width}}  {amount(bucket.balance)} of "
            f"{amount(bucket.total)}  ({display_text(bucket.unique_sign)})"
        )
    print(f"{'total':<{width}}  {amount(credits.balance)}", flush=True)
    return 0


# --------------------------------------------------------------------------- sample-photos


def _add_sample_photos(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "sample-photos",
        help="write synthetic portraits to try the tool on",
        description="Write N deterministic synthetic portraits (JPEG) into DIR, for demos "
        "with --simulate. Needs Pillow (pip install 'ailab-async[simulator]').",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="where to write them")
    parser.add_argument(
        "-n", type=positive_int, default=12, metavar="N", help="how many (default 12)"
    )
    parser.add_argument(
        "--size", type=positive_int, default=512, metavar="PX", help="side in pixels (512)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first (default 0)")
    parser.set_defaults(handler=lambda args: guarded(args, lambda: _sample_photos(args)))


def _sample_photos(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("PIL") is None:
        raise CliError(
            "sample-photos needs Pillow; install it with: pip install 'ailab-async[simulator]'"
        )
    from ailab_async.testing.simulator import sample_image  # noqa: PLC0415 - optional dependency

    folder: Path = args.dir
    if folder.exists() and not folder.is_dir():
        raise CliError(f"{display_text(str(folder))} is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(args.n - 1)))
    for number in range(args.n):
        data = sample_image(args.size, args.size, seed=args.seed + number)
        (folder / f"portrait-{number:0{digits}d}.jpg").write_bytes(data)
    print(
        f"wrote {args.n} sample portrait(s), {args.size}x{args.size} JPEG, to "
        f"{display_text(str(folder))}"
    )
    return 0


# --------------------------------------------------------------------------- skeleton

_SUBCOMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    add_batch_commands,
    _add_credits,
    _add_sample_photos,
    _add_simulate,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``ailab-async`` argument parser with every subcommand registered."""
    parser: argparse.ArgumentParser = Parser(
        prog="ailab-async", description="Tools of the ailab-async SDK for the AILabTools API."
    )
    # Not an option either: here only to refuse a key given before the subcommand.
    parser.add_argument("--api-key", nargs="?", action=RefuseKeyOption, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_subcommand in _SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ailab-async`` with ``argv`` (default: the process arguments); returns the exit code.

    Usage errors exit through ``SystemExit(2)`` (argparse).

    >>> main(["credits", "--simulate"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
