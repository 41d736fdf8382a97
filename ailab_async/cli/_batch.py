"""``skin`` and ``beauty``: a batch of photos through one operation, with a progress display
and a summary.

The batch engine decides everything (:mod:`ailab_async.batch`): which inputs count and which
refuse the batch (``_inputs``), the journal rules and what will be paid for (``_plan``), how
each item is settled (``run_batch``). This module turns options into those calls and their
answers into lines on the terminal, and picks the exit status: 0 every item done, 1 some are
not, 2 nothing was sent (usage, configuration, a journal in use by another run), 130
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs

from .._aio import cancel_and_wait
from .._config import DEFAULT_TASK_TIMEOUT
from .._endpoints import ENDPOINTS, CallKind, Param, ParamKind
from .._polling import FALLBACK_INTERVAL, PollPlanner
from ..batch import IMAGE_EXTENSIONS, BatchItem, BatchReport, BatchSpec, Operation, run_batch
from ..batch._inputs import InputPlan, InputProblem, Refusal, plan_inputs
from ..batch._model import BEAUTY_ITEMS_PER_SLOT
from ..batch._plan import (
    SIMULATED_JOURNAL,
    Preflight,
    SimulatedJournalError,
    batch_spec,
    check_credits,
    preflight,
)
from ..batch.journal import JournalAccount, JournalAccountError
from ..client import AILabClient
from ..models import ClientStats, TrackerStats
from ._connection import api_key, embedded_simulator_config, open_client, polling_config
from ._output import CliError, amount, guarded, warn
from ._parser import Subparsers, add_connection_options, positive_float, positive_int, within
from ._progress import (
    ClientActivity,
    ProgressDisplay,
    ProgressState,
    display_text,
    format_duration,
    open_progress,
    plural,
)

__all__ = ["add_batch_commands"]

#: The extensions of the files taken from input folders, as the help and messages say them.
_EXTENSIONS = " ".join(sorted(IMAGE_EXTENSIONS))

#: Seconds between readings of the client's activity for the progress display.
_TICK_SECONDS = 0.5


def _add_batch_options(parser: argparse.ArgumentParser, *, tasks: bool) -> None:
    """The options every batch command has; ``tasks``: the operation's results come from
    asynchronous tasks, so the polling options apply."""
    add = parser.add_argument
    add(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=f"image files, and directories searched recursively for {_EXTENSIONS} "
        "(other files in them are counted and skipped; -v names them)",
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
        "--no-report",
        dest="report",
        action="store_false",
        help="do not write report.html (the before/after page) beside the manifest",
    )
    add(
        "--reassign-account",
        action="store_true",
        help="the journal was written with another API key of the same account (a rotated "
        "key): record the new one instead of refusing",
    )
    concurrency_help = "HTTP requests in flight at most (default 8)"
    if tasks:  # the batch engine's choice (BatchSpec.item_concurrency), told
        concurrency_help += (
            f"; up to {BEAUTY_ITEMS_PER_SLOT} times as many photos are in progress, most of "
            "them waiting on their tasks"
        )
    add(
        "--concurrency",
        type=positive_int,
        default=8,
        metavar="N",
        help=concurrency_help,
    )
    add("--rate", type=positive_float, metavar="RPS", help="requests per second at most")
    if tasks:
        add(
            "--poll-interval",
            type=positive_float,
            default=FALLBACK_INTERVAL,
            metavar="SECONDS",
            help="the longest wait between two polls of one task (default 5, the provider's "
            "advice): no task is found done later than this after it finished",
        )
        add(
            "--task-timeout",
            type=positive_float,
            default=DEFAULT_TASK_TIMEOUT,
            metavar="SECONDS",
            help=f"how long to wait for one task (default {DEFAULT_TASK_TIMEOUT:g}); a task "
            "still running then is not paid for again: the next run picks it up",
        )
    else:  # no tasks to poll: the client's defaults, never used
        parser.set_defaults(poll_interval=FALLBACK_INTERVAL, task_timeout=DEFAULT_TASK_TIMEOUT)
    add("-q", "--quiet", action="store_true", help="no progress display, only the summary")
    add_connection_options(parser, tasks=tasks)


@attrs.frozen
class _ParamOption:
    """A command-line option for one parameter of the operation's endpoint; its range and
    default come from the endpoint table (:mod:`ailab_async._endpoints`)."""

    flag: str
    param: str
    #: For a number: what it is (the help adds the range and default); for a flag: all of it.
    help: str
    metavar: str = "X"


@attrs.frozen
class _BatchCommand:
    """One batch subcommand: a name, the operation it runs, and its parameters' options."""

    name: str
    operation: Operation
    help: str
    description: str
    options: tuple[_ParamOption, ...]


_BATCH_COMMANDS = (
    _BatchCommand(
        "skin",
        Operation.SKIN,
        help="AI Skin Beauty (smart-skin) on a batch of photos",
        description="Smooth and whiten the skin in every photo; results go to --out, with "
        "manifest.jsonl. Interrupted? Run the same command again: it resumes.",
        options=(
            _ParamOption("--retouch", "retouch_degree", "smoothing"),
            _ParamOption("--whitening", "whitening_degree", "whitening", metavar="Y"),
        ),
    ),
    _BatchCommand(
        "beauty",
        Operation.BEAUTY,
        help="Smart Beauty (smart-beauty, asynchronous tasks) on a batch of photos",
        description="Beautify every photo; results go to --out, with manifest.jsonl. "
        "Interrupted? Run the same command again: submitted tasks are picked up, not paid "
        "for twice.",
        options=(
            _ParamOption("--level", "beauty_level", "strength"),
            _ParamOption("--multi-face", "multi_face", "beautify every face, not only the largest"),
        ),
    ),
)


def _add_param_option(parser: argparse.ArgumentParser, option: _ParamOption, param: Param) -> str:
    """Register ``option``; the attribute of the parsed namespace that holds its value."""
    if param.kind is ParamKind.FLAG:
        action = parser.add_argument(option.flag, action="store_true", help=option.help)
        return action.dest
    # Every settable parameter of a batch endpoint is a flag or a bounded number.
    assert param.kind is ParamKind.NUMBER, param
    assert param.low is not None
    assert param.high is not None
    assert isinstance(param.default, float)
    action = parser.add_argument(
        option.flag,
        type=within(param.low, param.high),
        default=param.default,
        metavar=option.metavar,
        help=f"{option.help}, {param.low:g} to {param.high:g} (default {param.default:g})",
    )
    return action.dest


def _add_batch_command(subparsers: Subparsers, command: _BatchCommand) -> None:
    parser = subparsers.add_parser(
        command.name, allow_abbrev=False, help=command.help, description=command.description
    )
    endpoint = ENDPOINTS[command.operation.value]
    dests = {
        option.param: _add_param_option(parser, option, endpoint.param(option.param))
        for option in command.options
    }
    _add_batch_options(parser, tasks=endpoint.kind is CallKind.TASK_SUBMIT)
    parser.set_defaults(
        handler=_run_batch_command,
        operation=command.operation,
        params_of=lambda args: {param: getattr(args, dest) for param, dest in dests.items()},
    )


def add_batch_commands(subparsers: Subparsers) -> None:
    """Register ``skin`` and ``beauty``."""
    for command in _BATCH_COMMANDS:
        _add_batch_command(subparsers, command)


def _run_batch_command(args: argparse.Namespace) -> int:
    return guarded(args, lambda: _batch_command(args))


def _batch_command(args: argparse.Namespace) -> int:
    spec = _spec(args)
    key = None if args.simulate else api_key(args, args.command)
    if args.simulate:
        embedded_simulator_config(args)  # report a missing Pillow or bad knob before work
    plan = plan_inputs(args.inputs, spec.out_dir)
    if plan.refused:
        raise CliError(_refusal_message(plan.problems[0], plan))
    _prepare_out_dir(spec.out_dir, spec.journal_file)
    for path in plan.unusable:
        warn(
            args.command,
            f"skipping {display_text(str(path))}: its name is not valid UTF-8; rename it",
        )
    try:
        run = asyncio.run(_batch(args, key, plan, spec))
    except KeyboardInterrupt:
        print(
            f"ailab-async {args.command}: interrupted; the journal "
            f"{display_text(str(spec.journal_file))} keeps the progress: run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130
    _print_summary(run, spec, plan, verbose=args.verbose > 0)
    return 0 if run.report.failed == 0 and not plan.unusable else 1


def _spec(args: argparse.Namespace) -> BatchSpec:
    try:
        return batch_spec(
            args.operation,
            args.params_of(args),
            args.out,
            journal_path=args.journal,
            retry_failed=args.retry_failed,
            simulated=args.simulate,
            report=args.report,
        )
    except SimulatedJournalError:
        raise CliError(
            f"--journal cannot be combined with --simulate: simulated runs keep their own "
            f"journal, DIR/{SIMULATED_JOURNAL}"
        ) from None


_KEY_LIKE = re.compile(r"[A-Za-z0-9_-]{16,}")


def _shown_input(raw: str) -> str:
    """A missing input as the error shows it: not at all when it looks like a key (a long
    word with no dot or slash), which is what lands there when a key is pasted by mistake."""
    if _KEY_LIKE.fullmatch(raw):
        return "(an argument that looks like a key: not shown)"
    return display_text(raw)


def _refusal_message(problem: InputProblem, plan: InputPlan) -> str:
    match problem.refusal:
        case Refusal.MISSING:
            return f"no such file or directory: {_shown_input(problem.inputs[0])}"
        case Refusal.NOT_FILE_OR_DIRECTORY:
            return f"not a file or directory: {display_text(problem.inputs[0])}"
        case Refusal.NO_IMAGES:
            others = f"; {_other_files(plan)} there" if plan.not_photos else ""
            return (
                "no input images found in "
                + ", ".join(display_text(raw) for raw in problem.inputs)
                + f" (looked for {_EXTENSIONS}{others})"
            )
        case Refusal.OUTPUT_ESCAPES:
            return problem.detail
        case Refusal.SAME_OUTPUT:
            first, other = problem.inputs
            return (
                f"{display_text(first)} and {display_text(other)} would write the "
                "same output; pass their folders instead, or rename one"
            )


def _prepare_out_dir(out_dir: Path, journal_file: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {display_text(str(out_dir))} is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(
            f"cannot create --out {display_text(str(out_dir))}: {exc.strerror}"
        ) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise CliError(f"--out {display_text(str(out_dir))} is not writable")
    if journal_file.is_dir():
        raise CliError(f"--journal {display_text(str(journal_file))} is a directory")


def _other_files(plan: InputPlan) -> str:
    """``3 other files``: the files in input folders that are not photos."""
    return plural(len(plan.not_photos), "other file")


def _header(command: str, plan: InputPlan, spec: BatchSpec, *, verbose: bool) -> str:
    """What the batch is about to do: ``skin: 48 photos, 3 other files skipped -> out
    (journal: ...)``; with ``verbose``, the skipped files' names follow."""
    skipped = f", {_other_files(plan)} skipped (not {_EXTENSIONS})" if plan.not_photos else ""
    lines = [
        f"{command}: {plural(len(plan.items), 'photo')}{skipped} -> "
        f"{display_text(str(spec.out_dir))} (journal: {display_text(str(spec.journal_file))})"
    ]
    if verbose:
        lines += [f"  skipped, not a photo: {display_text(str(p))}" for p in plan.not_photos]
    return "\n".join(lines)


@attrs.frozen
class _BatchRun:
    """What a batch run answers: the engine's report, the display's counts, and the
    client's counters at the end (for ``-v``)."""

    report: BatchReport
    progress: ProgressState
    requests: ClientStats
    tasks: TrackerStats


async def _batch(
    args: argparse.Namespace, key: str | None, plan: InputPlan, spec: BatchSpec
) -> _BatchRun:
    items = list(plan.items)
    async with open_client(
        args,
        key,
        max_concurrency=args.concurrency,
        rate_limit=args.rate,
        poll_interval=args.poll_interval,
        task_timeout=args.task_timeout,
    ) as client:
        if spec.check_account:  # simulated journals belong to no account
            spec = attrs.evolve(spec, account=JournalAccount.for_client(client))
        # The journal stays open (and locked) from the pre-flight to the end of the batch.
        async with _preflight(args, items, spec) as found:
            if not args.quiet:
                print(_header(args.command, plan, spec, verbose=args.verbose > 0), flush=True)
            await _check_credits(args.command, client, found.billable)
            with open_progress(
                len(items),
                out=sys.stdout,
                err=sys.stderr,
                mode="none" if args.quiet else "auto",
                concurrency=args.concurrency,
                verbose=args.verbose > 0,
            ) as progress:
                ticker = asyncio.create_task(_tick(progress, client, args.poll_interval))
                try:
                    report = await run_batch(
                        client, items, spec, on_event=progress.on_event, journal=found.journal
                    )
                finally:
                    await cancel_and_wait(ticker)
            return _BatchRun(report, progress.state, client.stats, client.tracker)


@contextlib.asynccontextmanager
async def _preflight(
    args: argparse.Namespace, items: list[BatchItem], spec: BatchSpec
) -> AsyncIterator[Preflight]:
    """The engine's pre-flight (the journal's lock and account, a simulated run's reset),
    its findings told; another run on the journal stops the batch here, before paying."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            found = await stack.enter_async_context(
                preflight(
                    items, spec, simulated=args.simulate, reassign_account=args.reassign_account
                )
            )
        except JournalAccountError as exc:
            raise CliError(
                f"{exc}; if it is the same account under a new key, rerun with --reassign-account"
            ) from None
        if found.reset:
            print(
                f"ailab-async {args.command}: {found.reset} item(s) of an earlier simulated "
                "run waited on its simulator, which is gone: running them again",
                file=sys.stderr,
            )
        yield found


def _activity(client: AILabClient, warm_up_first_poll: float) -> ClientActivity:
    """What ``client`` is doing now, for the display."""
    tracker = client.tracker
    # A new task's first poll: the learned schedule's first point, else the warm-up's.
    first_poll = tracker.plan[0] if tracker.plan else warm_up_first_poll
    return ClientActivity(
        requests_in_flight=client.stats.in_flight,
        tasks_pending=tracker.pending,
        polls_sent=tracker.polls_sent,
        first_poll_after=first_poll if tracker.pending else None,
    )


async def _tick(progress: ProgressDisplay, client: AILabClient, poll_interval: float) -> None:
    # Where a planner that has learned nothing puts a new task's first poll: the client's
    # own planner decides, this only asks the same question of a fresh one.
    warm_up_first_poll = PollPlanner(polling_config(poll_interval)).next_poll(0.0, None)
    while True:  # periodic summaries even while every item waits on a slow task
        await asyncio.sleep(_TICK_SECONDS)
        progress.observe(_activity(client, warm_up_first_poll))


async def _check_credits(command: str, client: AILabClient, needed: int) -> None:
    """Warn when the balance cannot pay for the ``needed`` billed calls."""
    verdict = await check_credits(client, needed)
    if verdict.error is not None:
        warn(command, f"could not check the credit balance ({verdict.error}); going on")
    elif verdict.short:
        assert verdict.balance is not None
        warn(
            command,
            f"the credit balance ({amount(verdict.balance)}) cannot cover the {needed} billed "
            f"call(s) this batch needs; items beyond it will fail with ERROR_NOT_ENOUGH_CREDITS",
        )


def _print_summary(run: _BatchRun, spec: BatchSpec, plan: InputPlan, *, verbose: bool) -> None:
    """The end of a run on stdout. The item lines (downloaded, already done, failed, not
    finished, not processed) split the total: every item is in exactly one of them."""
    report, unusable = run.report, len(plan.unusable)
    # ``report.failed`` counts every item not done; the resumable ones among them are paid
    # for and still alive (a task still running, a download that failed): the next run
    # finishes them without paying, so they are told apart from the failures.
    failed = report.failed - report.resumable
    others = f" ({_other_files(plan)} in the input folders skipped)" if plan.not_photos else ""
    resumed = run.progress.resumed
    lines = [
        f"summary: {plural(report.total + unusable, 'item')}{others}",
        f"  downloaded      {report.downloaded}"
        + (f" ({resumed} of them resumed: paid for by an earlier run)" if resumed else ""),
        f"  already done    {report.skipped}",
        f"  failed          {failed}",
    ]
    if report.resumable:
        lines.append(
            f"  not finished    {report.resumable} (paid for; the next run finishes them "
            "without paying again)"
        )
    if unusable:
        lines.append(f"  not processed   {unusable} (file name not valid UTF-8)")
    if report.errors_by_code:
        lines.append("errors by code:")
    for code, count in sorted(report.errors_by_code.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {display_text(code):<36} {count}")  # codes come from the server
    if report.ambiguous_resends:
        lines.append(
            f"sent again: {plural(report.ambiguous_resends, 'request')} in flight when an "
            "earlier run died (each may have been billed twice)"
        )
    if verbose:
        lines.append(_client_line(run))
    lines.append(f"manifest: {display_text(str(report.manifest_path))}")
    if report.report_path is not None:
        lines.append(f"report:   {display_text(str(report.report_path))}")
    lines.append(f"journal:  {display_text(str(spec.journal_file))}")
    if report.resumable:
        lines.append("run the same command again to finish the items not finished")
    if failed:
        lines.append(
            "a rerun retries the retryable failures; add --retry-failed to retry the others"
        )
    print("\n".join(lines), flush=True)


def _client_line(run: _BatchRun) -> str:
    """``-v``: what the client did: ``requests: 30 sent, 2 retried (1 rate-limited), rate
    limit 12.0/s at the end; 18 task polls; elapsed 9s``."""
    stats = run.requests
    rate = (
        "no rate limit in force"
        if stats.current_rate is None
        else f"rate limit {stats.current_rate:.1f}/s at the end"
    )
    return (
        f"requests: {stats.requests} sent, {stats.retries} retried "
        f"({stats.rate_limited} rate-limited), {rate}; "
        f"{plural(run.tasks.polls_sent, 'task poll')}; "
        f"elapsed {format_duration(run.progress.elapsed())}"
    )
