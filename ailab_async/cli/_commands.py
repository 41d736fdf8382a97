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
configuration error (a journal in use by another run included: nothing was sent; no command
at all is one too: the help goes to stderr), 130 interrupted. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ._batch import add_batch_commands
from ._connection import api_key, embedded_simulator_config, open_client
from ._output import CliError, amount, guarded
from ._parser import (
    Parser,
    RefuseKeyOption,
    Subparsers,
    add_connection_options,
    positive_int,
)
from ._progress import display_text
from ._report import add_report
from ._simulate import add_simulate

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- credits


def _add_credits(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "credits",
        allow_abbrev=False,
        help="show the account's credit balance",
        description="Show each credit bucket of the account and the total (a free call).",
    )
    add_connection_options(parser, tasks=False)
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
    add_report,
    add_simulate,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``ailab-async`` argument parser with every subcommand registered."""
    parser: argparse.ArgumentParser = Parser(
        prog="ailab-async", description="Tools of the ailab-async SDK for the AILabTools API."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Not an option either: here only to refuse a key given before the subcommand.
    parser.add_argument("--api-key", nargs="?", action=RefuseKeyOption, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for add_subcommand in _SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ailab-async`` with ``argv`` (default: the process arguments); returns the exit code.

    Usage errors exit through ``SystemExit(2)`` (argparse); so does no command at all, after
    the help on stderr (``--help`` prints it on stdout and exits 0).

    >>> main(["credits", "--simulate"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(2)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
