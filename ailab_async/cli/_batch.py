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
from .._endpoints import ENDPOINTS, Param, ParamKind
from .._polling import FALLBACK_INTERVAL
from ..batch import BatchItem, BatchReport, BatchSpec, Operation, run_batch
from ..batch._inputs import InputPlan, InputProblem, Refusal, plan_inputs
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
from ._connection import api_key, embedded_simulator_config, open_client
from ._output import CliError, amount, guarded, warn
from ._parser import Subparsers, add_connection_options, positive_float, positive_int, within
from ._progress import ProgressDisplay, display_text, open_progress

__all__ = ["add_batch_commands"]


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
        type=positive_int,
        default=8,
        metavar="N",
        help="HTTP requests in flight at most (default 8)",
    )
    add("--rate", type=positive_float, metavar="RPS", help="requests per second at most")
    add(
        "--poll-interval",
        type=positive_float,
        default=FALLBACK_INTERVAL,
        metavar="SECONDS",
        help="smart-beauty poll spacing until task times are learned (default 5, the "
        "provider's advice)",
    )
    add(
        "--task-timeout",
        type=positive_float,
        default=DEFAULT_TASK_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for one smart-beauty task (default {DEFAULT_TASK_TIMEOUT:g}); "
        "a task still running then is not paid for again: the next run picks it up",
    )
    add("-q", "--quiet", action="store_true", help="no progress display, only the summary")
    add_connection_options(parser)


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
    _add_batch_options(parser)
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
        raise CliError(_refusal_message(plan.problems[0]))
    _prepare_out_dir(spec.out_dir, spec.journal_file)
    for path in plan.unusable:
        warn(
            args.command,
            f"skipping {display_text(str(path))}: its name is not valid UTF-8; rename it",
        )
    try:
        report = asyncio.run(_batch(args, key, plan, spec))
    except KeyboardInterrupt:
        print(
            f"ailab-async {args.command}: interrupted; the journal "
            f"{display_text(str(spec.journal_file))} keeps the progress: run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130
    _print_summary(report, spec, unusable=len(plan.unusable))
    return 0 if report.failed == 0 and not plan.unusable else 1


def _spec(args: argparse.Namespace) -> BatchSpec:
    try:
        return batch_spec(
            args.operation,
            args.params_of(args),
            args.out,
            journal_path=args.journal,
            retry_failed=args.retry_failed,
            simulated=args.simulate,
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


def _refusal_message(problem: InputProblem) -> str:
    match problem.refusal:
        case Refusal.MISSING:
            return f"no such file or directory: {_shown_input(problem.inputs[0])}"
        case Refusal.NOT_FILE_OR_DIRECTORY:
            return f"not a file or directory: {display_text(problem.inputs[0])}"
        case Refusal.NO_IMAGES:
            return (
                "no input images found in "
                + ", ".join(display_text(raw) for raw in problem.inputs)
                + " (looked for .jpg .jpeg .png .bmp)"
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


async def _batch(
    args: argparse.Namespace, key: str | None, plan: InputPlan, spec: BatchSpec
) -> BatchReport:
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
                print(
                    f"{args.command}: {len(items)} photo(s) -> "
                    f"{display_text(str(spec.out_dir))} "
                    f"(journal: {display_text(str(spec.journal_file))})",
                    flush=True,
                )
            await _check_credits(args.command, client, found.billable)
            with open_progress(
                len(items),
                out=sys.stdout,
                err=sys.stderr,
                mode="none" if args.quiet else "auto",
                description=args.command,
            ) as progress:
                ticker = asyncio.create_task(_tick(progress))
                try:
                    return await run_batch(
                        client, items, spec, on_event=progress.on_event, journal=found.journal
                    )
                finally:
                    await cancel_and_wait(ticker)


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


async def _tick(progress: ProgressDisplay) -> None:
    while True:  # periodic summaries even while every item waits on a slow task
        await asyncio.sleep(1.0)
        progress.tick()


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
