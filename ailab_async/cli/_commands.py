"""The ``ailab-async`` command line: one subcommand per job.

Add a subcommand by writing ``_add_<name>(subparsers)`` that registers its parser and sets
``handler`` (a ``Callable[[argparse.Namespace], int]``) with ``set_defaults``, then listing it
in :data:`_SUBCOMMANDS`.

    ailab-async skin photos/ --out retouched/ --retouch 0.8
    ailab-async beauty photos/ --out beautified/ --simulate
    ailab-async sample-photos demo-photos -n 24
    ailab-async credits
    ailab-async simulate --port 8080 --rate-limit 10 --fault-5xx 0.05

Exit status: 0 success, 1 some items (or the call) failed or are not finished, 2 usage or
configuration error (a journal in use by another run included: nothing was sent), 130
interrupted. See docs/cli.md.

What reaches the terminal is safe to show: usage errors never echo a command-line value (a
key typed in the wrong place stays off the screen and out of CI logs, see :class:`_Parser`),
and server strings and file names are printed through
:func:`~ailab_async.cli._progress.display_text`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import attrs

from .._polling import FALLBACK_INTERVAL, PollingConfig
from ..batch import (
    BatchItem,
    BatchReport,
    BatchSpec,
    Operation,
    discover_inputs,
    normalized_params,
    run_batch,
    safe_output_path,
)
from ..batch.journal import (
    ItemIdentity,
    ItemState,
    Journal,
    JournalAccount,
    JournalAccountError,
    JournalBusyError,
    JournalEntry,
    ResumeAction,
    canonical_params,
)
from ..client import API_KEY_ENV, DEFAULT_TASK_TIMEOUT, AILabClient
from ..errors import (
    AILabError,
    AuthenticationError,
    ConfigurationError,
    PermissionDeniedError,
    ValidationError,
)
from ._progress import ProgressDisplay, display_text, open_progress

if TYPE_CHECKING:
    from ailab_async.testing.simulator import Simulator, SimulatorConfig

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- simulate


def _share(text: str) -> float:
    value: float = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("not within [0, 1]")
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
    from ailab_async.testing.simulator import (  # noqa: PLC0415 - keep other subcommands light
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
        config = _simulator_config(args)
    except ValueError as exc:  # a duration spec: its message quotes it, maybe a pasted key
        durations = [args.latency, args.result_latency, args.task_duration]
        _fail("simulate", _without_values(str(exc), [d for d in durations if d], set()))
        return 2
    try:
        asyncio.run(_serve_until_signalled(config))
    except OSError as exc:  # e.g. the port is taken
        _fail("simulate", exc)
        return 1
    return 0


# --------------------------------------------------------------------------- shared plumbing


class _CliError(Exception):
    """An expected failure: its message is printed without a traceback; ``code`` is the exit
    status (2: usage or configuration)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _warn(command: str, message: str) -> None:
    # Warnings quote server messages too; display_text leaves text escaped earlier as it is.
    print(f"ailab-async {command}: warning: {display_text(message)}", file=sys.stderr, flush=True)


def _fail(command: str, message: object) -> None:
    """The one-line error of a command. ``message`` may quote the server (error codes,
    messages, request ids) or a file name: it is escaped so neither can drive the terminal."""
    print(f"ailab-async {command}: error: {display_text(str(message))}", file=sys.stderr)


def _exit_code_for(error: AILabError) -> int:
    # A missing or refused key is fixed by configuration, not by running again.
    if isinstance(error, (ConfigurationError, JournalBusyError, JournalAccountError)):
        return 2  # nothing was sent: fix the set-up (or wait for the other run) and rerun
    if isinstance(error, AuthenticationError) and not isinstance(error, PermissionDeniedError):
        return 2
    return 1


def _guarded(args: argparse.Namespace, run: Callable[[], int]) -> int:
    """Run a command; expected errors become a one-line message and an exit status."""
    command = args.command
    try:
        with _logging_to_stderr(getattr(args, "verbose", 0)):
            return run()
    except _CliError as exc:
        _fail(command, exc)
        return exc.code
    except AILabError as exc:
        _fail(command, exc)
        return _exit_code_for(exc)
    except OSError as exc:  # the disk, not the API: a full disk, a file that vanished
        _fail(command, exc)
        return 1
    except sqlite3.Error as exc:  # a journal that is not one, or a failing disk under it
        _fail(command, f"journal: {exc}")
        return 1
    except KeyboardInterrupt:
        print(f"ailab-async {command}: interrupted", file=sys.stderr)
        return 130


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is *now*: rich's live display swaps it, and log
    lines must go through it rather than tear the progress bar."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _TerminalSafeFormatter(logging.Formatter):
    """Log lines with control characters escaped: they quote server messages and file names."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return display_text(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return "\n".join(display_text(line) for line in super().formatException(ei).splitlines())


@contextlib.contextmanager
def _logging_to_stderr(verbosity: int) -> Iterator[None]:
    """``-v``: the SDK's INFO log (retries, slow-downs) on stderr; ``-vv``: DEBUG too.

    The SDK never logs the key, image bytes or result URLs.
    """
    if verbosity <= 0:
        yield
        return
    logger = logging.getLogger("ailab_async")
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(_TerminalSafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# Messages of the value parsers below name what was expected, never the value itself: a key
# typed in the wrong place must not be echoed (see _Parser).


def _number(text: str, kind: Callable[[str], Any] = float) -> Any:
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {noun}") from None


def _positive_int(text: str) -> int:
    value: int = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError("not a positive integer")
    return value


def _positive_float(text: str) -> float:
    value: float = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("not a positive number")
    return value


def _within(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value: float = _number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"not within [{low:g}, {high:g}]")
        return value

    return parse


def _base_url(text: str) -> str:
    # Checked here rather than left to the client, whose message quotes the URL: a key
    # pasted after --base-url must not be echoed.
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError("not an http(s) URL")
    return text


class _RefuseKeyOption(argparse.Action):
    """``--api-key`` exists only to say no, without echoing the value it swallowed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not accepted: a key on the command line lands in shell "
            f"history and process lists; set {API_KEY_ENV} or pass --api-key-file PATH"
        )


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Where the API is and how the key is found: shared by every command that calls it.

    Parsers using it must be built with ``allow_abbrev=False``: otherwise ``--api-key SECRET``
    would be taken for ``--api-key-file SECRET``.
    """
    parser.add_argument("--api-key", nargs="?", action=_RefuseKeyOption, help=argparse.SUPPRESS)
    group = parser.add_argument_group("connection")
    target = group.add_mutually_exclusive_group()
    target.add_argument(
        "--base-url",
        type=_base_url,
        metavar="URL",
        help="the API's base URL (default: $AILAB_BASE_URL, then https://www.ailabapi.com)",
    )
    target.add_argument(
        "--simulate",
        action="store_true",
        help="run against an in-process simulator: no key, no network (needs Pillow)",
    )
    group.add_argument(
        "--api-key-file",
        type=Path,
        metavar="PATH",
        help=f"read the API key from this file (default: ${API_KEY_ENV}); there is "
        "deliberately no option taking the key itself, which would land in shell history",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long one HTTP attempt may take (default 60)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log the SDK's activity to stderr (-v: INFO, -vv: DEBUG)",
    )
    sim = parser.add_argument_group("simulator (with --simulate)")
    sim.add_argument(
        "--sim-task-duration",
        default="0.5:2.0",
        metavar="DURATION",
        help="smart-beauty task time: SECONDS, MIN:MAX or lognormal:MEDIAN:SIGMA (0.5:2.0)",
    )
    sim.add_argument("--sim-latency", metavar="DURATION", help="extra latency per API call")
    sim.add_argument(
        "--sim-failure-share", type=_share, default=0.0, metavar="SHARE", help="failing tasks"
    )
    sim.add_argument(
        "--sim-credits", type=float, metavar="N", help="credit balance (default unlimited)"
    )
    sim.add_argument("--sim-seed", type=int, default=0, metavar="N", help="seed (default 0)")


def _api_key(args: argparse.Namespace, command: str) -> str | None:
    """The key from ``--api-key-file``; ``None`` when the client is to read ``AILAB_API_KEY``.

    Checked here so that a missing key is a clear message before anything starts.
    """
    path: Path | None = args.api_key_file
    if path is None:
        if not os.environ.get(API_KEY_ENV, "").strip():
            raise _CliError(
                f"no API key: set {API_KEY_ENV} or pass --api-key-file PATH "
                "(or try --simulate, which needs neither)"
            )
        return None
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        # The path is not shown: it may be the key itself, given where a path belongs.
        raise _CliError(f"cannot read the file given to --api-key-file: {reason}") from None
    shown = display_text(str(path))
    if os.name == "posix" and mode & 0o044:
        _warn(command, f"{shown} is readable by other users; restrict it with: chmod 600 {shown}")
    key = text.strip()
    if not key:
        raise _CliError(f"the API key file {shown} is empty")
    if any(character.isspace() for character in key):
        raise _CliError(f"the API key file {shown} must hold the key alone, on one line")
    return key


def _embedded_simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    if importlib.util.find_spec("PIL") is None:
        raise _CliError(
            "--simulate needs Pillow; install it with: pip install 'ailab-async[simulator]'"
        )
    from ailab_async.testing.simulator import (  # noqa: PLC0415 - optional dependency
        Credits,
        Latency,
        SimulatorConfig,
        TaskBehaviour,
        parse_distribution,
    )

    try:
        duration = parse_distribution(args.sim_task_duration)
        latency = Latency()
        if args.sim_latency is not None:
            api = parse_distribution(args.sim_latency)
            latency = Latency(api, api, api, api, None)
        credits = Credits(args.sim_credits) if args.sim_credits is not None else None
    except ValueError as exc:  # a duration spec: its message quotes it, maybe a pasted key
        durations = [d for d in (args.sim_task_duration, args.sim_latency) if d]
        raise _CliError(_without_values(str(exc), durations, set())) from None
    return SimulatorConfig(
        seed=args.sim_seed,
        latency=latency,
        credits=credits,
        tasks=TaskBehaviour(duration=duration, failure_share=args.sim_failure_share),
    )


@contextlib.asynccontextmanager
async def _open_client(
    args: argparse.Namespace,
    api_key: str | None,
    *,
    max_concurrency: int = 8,
    rate_limit: float | None = None,
    poll_interval: float = FALLBACK_INTERVAL,
    task_timeout: float = DEFAULT_TASK_TIMEOUT,
) -> AsyncIterator[AILabClient]:
    """A client for the real API, or for an in-process simulator with ``--simulate``."""
    async with contextlib.AsyncExitStack() as stack:
        base_url: str | None = args.base_url
        if args.simulate:
            simulator = await stack.enter_async_context(_start_simulator(args))
            api_key, base_url = simulator.api_key, simulator.url
            print(
                f"ailab-async {args.command}: using an in-process simulator at {base_url} "
                "(no key, no network)",
                file=sys.stderr,
            )
        client = AILabClient(
            api_key=api_key,
            base_url=base_url,
            max_concurrency=max_concurrency,
            rate_limit=rate_limit,
            timeout=args.timeout,
            task_timeout=task_timeout,
            polling=PollingConfig(
                fallback_interval=poll_interval, min_interval=min(0.25, poll_interval)
            ),
        )
        await stack.enter_async_context(client)
        yield client


@contextlib.asynccontextmanager
async def _start_simulator(args: argparse.Namespace) -> AsyncIterator[Simulator]:
    config = _embedded_simulator_config(args)
    from ailab_async.testing.simulator import Simulator  # noqa: PLC0415

    async with Simulator(config) as simulator:
        yield simulator


# --------------------------------------------------------------------------- skin / beauty


def _add_batch_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, and directories searched recursively for .jpg .jpeg .png .bmp",
    )
    add("--out", required=True, type=Path, metavar="DIR", help="where results go")
    add(
        "--journal",
        type=Path,
        metavar="PATH",
        help="the resume journal (default: DIR/.ailab-journal.sqlite3; with --simulate, "
        f"always DIR/{SIMULATED_JOURNAL})",
    )
    add(
        "--retry-failed",
        action="store_true",
        help="also retry items that failed for good in an earlier run (retryable ones always are)",
    )
    add(
        "--reassign-account",
        action="store_true",
        help="the journal was written with another API key of the same account (a rotated "
        "key): record the new one instead of refusing",
    )
    add(
        "--concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="HTTP requests in flight at most (default 8)",
    )
    add("--rate", type=_positive_float, metavar="RPS", help="requests per second at most")
    add(
        "--poll-interval",
        type=_positive_float,
        default=FALLBACK_INTERVAL,
        metavar="SECONDS",
        help="smart-beauty poll spacing until task times are learned (default 5, the "
        "provider's advice)",
    )
    add(
        "--task-timeout",
        type=_positive_float,
        default=DEFAULT_TASK_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for one smart-beauty task (default {DEFAULT_TASK_TIMEOUT:g}); "
        "a task still running then is not paid for again: the next run picks it up",
    )
    add("-q", "--quiet", action="store_true", help="no progress display, only the summary")
    _add_connection_options(parser)


def _add_skin(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "skin",
        allow_abbrev=False,
        help="AI Skin Beauty (smart-skin) on a batch of photos",
        description="Smooth and whiten the skin in every photo; results go to --out, with "
        "manifest.jsonl. Interrupted? Run the same command again: it resumes.",
    )
    parser.add_argument(
        "--retouch",
        type=_within(0.0, 1.5),
        default=1.0,
        metavar="X",
        help="smoothing, 0 to 1.5 (default 1)",
    )
    parser.add_argument(
        "--whitening",
        type=_within(0.0, 1.5),
        default=1.0,
        metavar="Y",
        help="whitening, 0 to 1.5 (default 1)",
    )
    _add_batch_options(parser)
    parser.set_defaults(
        handler=_run_batch_command,
        operation=Operation.SKIN,
        params_of=lambda a: {"retouch_degree": a.retouch, "whitening_degree": a.whitening},
    )


def _add_beauty(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "beauty",
        allow_abbrev=False,
        help="Smart Beauty (smart-beauty, asynchronous tasks) on a batch of photos",
        description="Beautify every photo; results go to --out, with manifest.jsonl. "
        "Interrupted? Run the same command again: submitted tasks are picked up, not paid "
        "for twice.",
    )
    parser.add_argument(
        "--level",
        type=_within(0.0, 1.0),
        default=1.0,
        metavar="X",
        help="strength, 0 to 1 (default 1)",
    )
    parser.add_argument(
        "--multi-face", action="store_true", help="beautify every face, not only the largest"
    )
    _add_batch_options(parser)
    parser.set_defaults(
        handler=_run_batch_command,
        operation=Operation.BEAUTY,
        params_of=lambda a: {"beauty_level": a.level, "multi_face": a.multi_face},
    )


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_KEY_LIKE = re.compile(r"[A-Za-z0-9_-]{16,}")


def _shown_input(raw: str) -> str:
    """A missing input as the error shows it: not at all when it looks like a key (a long
    word with no dot or slash), which is what lands there when a key is pasted by mistake."""
    if _KEY_LIKE.fullmatch(raw):
        return "(an argument that looks like a key: not shown)"
    return display_text(raw)


def _collect_items(inputs: Sequence[str], out_dir: Path) -> tuple[list[BatchItem], list[str]]:
    """The photos to process, and the names that cannot be (not valid UTF-8).

    Results already in ``out_dir`` are never inputs (``--out`` may lie inside an input
    folder), each file counts once, and two inputs that would write the same output refuse
    the batch rather than overwrite each other.
    """
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise _CliError(f"no such file or directory: {_shown_input(raw)}")
        if not (path.is_dir() or path.is_file()):
            raise _CliError(f"not a file or directory: {display_text(raw)}")
    out_root = out_dir.resolve()
    seen: set[Path] = set()
    items: list[BatchItem] = []
    unusable: list[str] = []
    for item in discover_inputs(inputs):
        resolved = item.path.resolve()
        if resolved == out_root or out_root in resolved.parents or resolved in seen:
            continue
        seen.add(resolved)
        if not (_utf8(str(resolved)) and _utf8(item.relative)):
            unusable.append(display_text(str(item.path)))
            continue
        items.append(item)
    if not items and not unusable:
        raise _CliError(
            "no input images found in "
            + ", ".join(display_text(raw) for raw in inputs)
            + " (looked for .jpg .jpeg .png .bmp)"
        )
    claimed: dict[Path, str] = {}
    for item in items:
        try:
            target = safe_output_path(out_dir, item.relative, ".png")
        except ValidationError as exc:
            raise _CliError(str(exc)) from None
        other = claimed.setdefault(target, str(item.path))
        if other != str(item.path):
            raise _CliError(
                f"{display_text(other)} and {display_text(str(item.path))} would write the "
                "same output; pass their folders instead, or rename one"
            )
    return items, unusable


def _prepare_out_dir(out_dir: Path, journal_file: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise _CliError(f"--out {display_text(str(out_dir))} is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _CliError(
            f"cannot create --out {display_text(str(out_dir))}: {exc.strerror}"
        ) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise _CliError(f"--out {display_text(str(out_dir))} is not writable")
    if journal_file.is_dir():
        raise _CliError(f"--journal {display_text(str(journal_file))} is a directory")


#: The journal of ``--simulate`` runs, apart from real ones: a real run must never count a
#: simulated result as done, nor a simulated run reset a real (paid) task.
SIMULATED_JOURNAL = ".ailab-journal-simulated.sqlite3"


def _batch_spec(args: argparse.Namespace) -> BatchSpec:
    journal: Path | None = args.journal
    if args.simulate:
        if journal is not None:
            raise _CliError(
                f"--journal cannot be combined with --simulate: simulated runs keep their own "
                f"journal, DIR/{SIMULATED_JOURNAL}"
            )
        journal = args.out / SIMULATED_JOURNAL
    return BatchSpec(
        operation=args.operation,
        params=args.params_of(args),
        out_dir=args.out,
        journal_path=journal,
        retry_failed=args.retry_failed,
        # A simulator's URL changes every run and forgets its tasks: no account to check.
        check_account=not args.simulate,
    )


async def _forget_dead_simulator_work(command: str, journal: Journal) -> None:
    """An in-process simulator forgets its tasks and result URLs when it stops. Items of an
    earlier simulated run that wait on them go back to pending (it costs nothing)."""
    stale = await journal.entries(states={ItemState.SUBMITTED, ItemState.SUCCEEDED})
    for entry in stale:
        await journal.reset(entry.item_id)
    if stale:
        print(
            f"ailab-async {command}: {len(stale)} item(s) of an earlier simulated run waited "
            "on its simulator, which is gone: running them again",
            file=sys.stderr,
        )


async def _preflight(args: argparse.Namespace, items: list[BatchItem], spec: BatchSpec) -> int:
    """Look at the journal before anything is sent; how many items will send a billed request.

    Opening it takes its lock: when another run works on the same journal this raises
    :class:`~ailab_async.batch.journal.JournalBusyError` here, before anything is paid for (and
    before a simulated run resets what the other run waits on). It also records, or checks,
    whose journal it is (``spec.account``): another account's task ids are not ours to track.
    """
    try:
        opened = await Journal.open(
            spec.journal_file, account=spec.account, reassign_account=args.reassign_account
        )
    except JournalAccountError as exc:
        raise _CliError(
            f"{exc}; if it is the same account under a new key, rerun with --reassign-account"
        ) from None
    async with opened as journal:
        if args.simulate:
            await _forget_dead_simulator_work(args.command, journal)
        return await _billable_items(journal, items, spec)


def _run_batch_command(args: argparse.Namespace) -> int:
    return _guarded(args, lambda: _batch_command(args))


def _batch_command(args: argparse.Namespace) -> int:
    spec = _batch_spec(args)
    api_key = None if args.simulate else _api_key(args, args.command)
    if args.simulate:
        _embedded_simulator_config(args)  # report a missing Pillow or bad knob before work
    items, unusable = _collect_items(args.inputs, spec.out_dir)
    _prepare_out_dir(spec.out_dir, spec.journal_file)
    for name in unusable:
        _warn(args.command, f"skipping {name}: its name is not valid UTF-8; rename it")
    try:
        report = asyncio.run(_batch(args, api_key, items, spec))
    except KeyboardInterrupt:
        print(
            f"ailab-async {args.command}: interrupted; the journal "
            f"{display_text(str(spec.journal_file))} keeps the progress: run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130
    _print_summary(report, spec, unusable=len(unusable))
    return 0 if report.failed == 0 and not unusable else 1


async def _batch(
    args: argparse.Namespace, api_key: str | None, items: list[BatchItem], spec: BatchSpec
) -> BatchReport:
    async with _open_client(
        args,
        api_key,
        max_concurrency=args.concurrency,
        rate_limit=args.rate,
        poll_interval=args.poll_interval,
        task_timeout=args.task_timeout,
    ) as client:
        if spec.check_account:  # simulated journals belong to no account
            spec = attrs.evolve(spec, account=JournalAccount.for_client(client))
        needed = await _preflight(args, items, spec)  # another run on the journal: stop here
        if not args.quiet:
            print(
                f"{args.command}: {len(items)} photo(s) -> {display_text(str(spec.out_dir))}"
                f" (journal: {display_text(str(spec.journal_file))})",
                flush=True,
            )
        await _check_credits(args.command, client, needed)
        with open_progress(
            len(items),
            out=sys.stdout,
            err=sys.stderr,
            mode="none" if args.quiet else "auto",
            description=args.command,
        ) as progress:
            ticker = asyncio.create_task(_tick(progress))
            try:
                return await run_batch(client, items, spec, on_event=progress.on_event)
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker


async def _tick(progress: ProgressDisplay) -> None:
    while True:  # periodic summaries even while every item waits on a slow task
        await asyncio.sleep(1.0)
        progress.tick()


async def _billable_items(journal: Journal, items: list[BatchItem], spec: BatchSpec) -> int:
    """How many items will send a billed request: not done, not tracked, not kept failed."""
    known: dict[tuple[str, str, str], JournalEntry] = {
        (entry.identity, entry.operation, entry.params): entry
        async for entry in journal.iter_entries()
    }
    params = canonical_params(normalized_params(spec))

    def identities() -> list[str | None]:
        keys: list[str | None] = []
        for item in items:
            try:
                keys.append(ItemIdentity.for_path(item.path).key)
            except OSError:
                keys.append(None)
        return keys

    billable = 0
    for key in await asyncio.to_thread(identities):
        entry = known.get((key, spec.operation.value, params)) if key else None
        if entry is None or entry.resume_action(retry_failed=spec.retry_failed) is (
            ResumeAction.RUN
        ):
            billable += 1
    return billable


async def _check_credits(command: str, client: AILabClient, needed: int) -> None:
    """Warn when the balance cannot pay for the ``needed`` billed calls. Querying credits is
    free."""
    if needed == 0:
        return
    try:
        credits = await client.credits(deadline=30.0)
    except AuthenticationError:
        raise  # every item would fail, and be journaled as failed for good: stop now
    except AILabError as exc:
        _warn(command, f"could not check the credit balance ({exc}); going on")
        return
    if credits.balance < needed:
        _warn(
            command,
            f"the credit balance ({_amount(credits.balance)}) cannot cover the {needed} billed "
            f"call(s) this batch needs; items beyond it will fail with ERROR_NOT_ENOUGH_CREDITS",
        )


def _amount(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _print_summary(report: BatchReport, spec: BatchSpec, *, unusable: int = 0) -> None:
    # ``report.failed`` counts every item not done; the resumable ones among them are paid
    # for and still alive (a task still running, a download that failed): the next run
    # finishes them without paying, so they are told apart from the failures.
    failed = report.failed - report.resumable
    lines = [
        f"summary: {report.total + unusable} item(s)",
        f"  downloaded      {report.downloaded}",
        f"  already done    {report.skipped}",
        f"  resumed         {report.resumed} (picked up from an earlier run)",
        f"  failed          {failed}",
    ]
    if report.resumable:
        lines.append(
            f"  not finished    {report.resumable} (paid for; the next run finishes them "
            "without paying again)"
        )
    for code, count in sorted(report.errors_by_code.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"    {display_text(code):<34} {count}")  # codes come from the server
    if unusable:
        lines.append(f"  not processed   {unusable} (file name not valid UTF-8)")
    if report.ambiguous_resends:
        lines.append(
            f"  sent again      {report.ambiguous_resends} (in flight when an earlier run "
            "died: may have been billed twice)"
        )
    lines.append(f"manifest: {display_text(str(report.manifest_path))}")
    lines.append(f"journal:  {display_text(str(spec.journal_file))}")
    if report.resumable:
        lines.append("run the same command again to finish the items not finished")
    if failed:
        lines.append(
            "a rerun retries the retryable failures; add --retry-failed to retry the others"
        )
    print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------- credits


def _add_credits(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "credits",
        allow_abbrev=False,
        help="show the account's credit balance",
        description="Show each credit bucket of the account and the total (a free call).",
    )
    _add_connection_options(parser)
    parser.set_defaults(handler=lambda args: _guarded(args, lambda: _credits_command(args)))


def _credits_command(args: argparse.Namespace) -> int:
    api_key = None if args.simulate else _api_key(args, args.command)
    if args.simulate:
        _embedded_simulator_config(args)
    return asyncio.run(_show_credits(args, api_key))


async def _show_credits(args: argparse.Namespace, api_key: str | None) -> int:
    async with _open_client(args, api_key) as client:
        credits = await client.credits()
    width = max([len(display_text(b.name)) for b in credits] + [5])
    for bucket in credits:
        print(
            f"{display_text(bucket.name):<{width}}  {_amount(bucket.balance)} of "
            f"{_amount(bucket.total)}  ({display_text(bucket.unique_sign)})"
        )
    print(f"{'total':<{width}}  {_amount(credits.balance)}", flush=True)
    return 0


# --------------------------------------------------------------------------- sample-photos


def _add_sample_photos(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sample-photos",
        help="write synthetic portraits to try the tool on",
        description="Write N deterministic synthetic portraits (JPEG) into DIR, for demos "
        "with --simulate. Needs Pillow (pip install 'ailab-async[simulator]').",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="where to write them")
    parser.add_argument(
        "-n", type=_positive_int, default=12, metavar="N", help="how many (default 12)"
    )
    parser.add_argument(
        "--size", type=_positive_int, default=512, metavar="PX", help="side in pixels (512)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first (default 0)")
    parser.set_defaults(handler=lambda args: _guarded(args, lambda: _sample_photos(args)))


def _sample_photos(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("PIL") is None:
        raise _CliError(
            "sample-photos needs Pillow; install it with: pip install 'ailab-async[simulator]'"
        )
    from ailab_async.testing.simulator import sample_image  # noqa: PLC0415 - optional dependency

    folder: Path = args.dir
    if folder.exists() and not folder.is_dir():
        raise _CliError(f"{display_text(str(folder))} is not a directory")
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

_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_skin,
    _add_beauty,
    _add_credits,
    _add_sample_photos,
    _add_simulate,
)


#: What stands in for a command-line value in a usage error.
HIDDEN = "<hidden>"

_OPTION_NAME = re.compile(r"--[A-Za-z][\w-]*")


def _values_in(argv: Sequence[str]) -> set[str]:
    """The strings of ``argv`` that may be values: whole tokens, the part after ``=`` of
    ``--name=value``, and the tails of short-option clusters (``-vVALUE``). Option names
    (``--api-kye``) are not values: a misspelt one is worth showing."""
    values: set[str] = set()
    for token in argv:
        name, equals, value = token.partition("=")
        if token.startswith("--") and _OPTION_NAME.fullmatch(name):
            if equals:
                values.add(value)
        elif not (token.startswith("-") and len(token) == 2):  # -v alone is a name
            values.add(token)
            if token.startswith("-"):
                values.update(token[cut:] for cut in range(2, len(token)))
    return {value for value in values if value.strip()}


def _without_values(message: str, argv: Sequence[str], vocabulary: set[str]) -> str:
    """``message`` with every command-line value in it replaced by :data:`HIDDEN`.

    argparse quotes offending values (``invalid choice: 'x'``, ``ignored explicit argument
    'x'``) or lists them (``unrecognized arguments: --x VALUE``); ``vocabulary`` (the parser's
    own option names and choices) stays. Values shorter than 4 characters are hidden only
    where quoted: such a value cannot be a key, and as bare text it would match inside
    ordinary words.

    >>> argv = ["--api-kye", "sk-123456"]
    >>> _without_values("unrecognized arguments: --api-kye sk-123456", argv, set())
    'unrecognized arguments: --api-kye <hidden>'
    """
    values = sorted(_values_in(argv) - vocabulary, key=len, reverse=True)
    for value in values:
        message = message.replace(repr(value), HIDDEN)
    for value in values:
        if len(value) >= 4:
            bare = re.compile(rf"(?<![\w-]){re.escape(value)}(?![\w-])")
            message = bare.sub(HIDDEN, message)
    return display_text(message)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors never echo a value from the command line.

    argparse quotes the offending value in its messages; an API key typed in the wrong place
    (``ailab-async --api-key KEY credits``, ``--api-kye KEY``) would land on the screen and in
    CI logs. Subcommand parsers are of this class too (``add_subparsers`` uses the parent's).
    """

    _argv: Sequence[str] = ()

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        argv = args[0] if args else kwargs.get("args")
        self._argv = list(sys.argv[1:] if argv is None else argv)
        return super().parse_known_args(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        safe = _without_values(message, self._argv, self._vocabulary())
        self.exit(2, f"{self.prog}: error: {safe}\n")

    def _vocabulary(self) -> set[str]:
        words: set[str] = set()
        for action in self._actions:
            words.update(action.option_strings)
            if action.choices is not None:
                words.update(str(choice) for choice in action.choices)
        return words


def build_parser() -> argparse.ArgumentParser:
    """The ``ailab-async`` argument parser with every subcommand registered."""
    parser: argparse.ArgumentParser = _Parser(
        prog="ailab-async", description="Tools of the ailab-async SDK for the AILabTools API."
    )
    # Not an option either: here only to refuse a key given before the subcommand.
    parser.add_argument("--api-key", nargs="?", action=_RefuseKeyOption, help=argparse.SUPPRESS)
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
