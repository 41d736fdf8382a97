"""Argument parsing: the parser that never echoes a value, value types, shared options.

What reaches the terminal is safe to show: usage errors never echo a command-line value (a
key typed in the wrong place stays off the screen and out of CI logs, see :class:`Parser`).
The value types below say what was expected, never the value itself, for the same reason.
Options shared by several subcommands (where the API is, how the key is found, the
``--simulate`` knobs) are registered here once; each subcommand's own options live with
the subcommand.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias
from urllib.parse import urlsplit

from .._config import API_KEY_ENV
from ._progress import display_text

__all__ = [
    "HIDDEN",
    "Parser",
    "Subparsers",
    "add_connection_options",
    "number",
    "positive_float",
    "positive_int",
    "share",
    "values_in",
    "within",
    "without_values",
]

#: What ``add_subparsers`` returns: each subcommand registers its parser on it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: What stands in for a command-line value in a usage error.
HIDDEN = "<hidden>"

_OPTION_NAME = re.compile(r"--[A-Za-z][\w-]*")


def values_in(argv: Sequence[str]) -> set[str]:
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


def without_values(message: str, argv: Sequence[str], vocabulary: set[str]) -> str:
    """``message`` with every command-line value in it replaced by :data:`HIDDEN`.

    argparse quotes offending values (``invalid choice: 'x'``, ``ignored explicit argument
    'x'``) or lists them (``unrecognized arguments: --x VALUE``); ``vocabulary`` (the parser's
    own option names and choices) stays. Values shorter than 4 characters are hidden only
    where quoted: such a value cannot be a key, and as bare text it would match inside
    ordinary words.

    >>> argv = ["--api-kye", "sk-123456"]
    >>> without_values("unrecognized arguments: --api-kye sk-123456", argv, set())
    'unrecognized arguments: --api-kye <hidden>'
    """
    values = sorted(values_in(argv) - vocabulary, key=len, reverse=True)
    for value in values:
        message = message.replace(repr(value), HIDDEN)
    for value in values:
        if len(value) >= 4:
            bare = re.compile(rf"(?<![\w-]){re.escape(value)}(?![\w-])")
            message = bare.sub(HIDDEN, message)
    return display_text(message)


class Parser(argparse.ArgumentParser):
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
        safe = without_values(message, self._argv, self._vocabulary())
        self.exit(2, f"{self.prog}: error: {safe}\n")

    def _vocabulary(self) -> set[str]:
        words: set[str] = set()
        for action in self._actions:
            words.update(action.option_strings)
            if action.choices is not None:
                words.update(str(choice) for choice in action.choices)
        return words


# Messages of the value types below name what was expected, never the value itself: a key
# typed in the wrong place must not be echoed (see Parser).


def number(text: str, kind: Callable[[str], Any] = float) -> Any:
    """``text`` as a ``kind`` (float or int)."""
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {noun}") from None


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    value: int = number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError("not a positive integer")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value: float = number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("not a positive number")
    return value


def within(low: float, high: float) -> Callable[[str], float]:
    """The type of a number in ``[low, high]``."""

    def parse(text: str) -> float:
        value: float = number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"not within [{low:g}, {high:g}]")
        return value

    return parse


#: A share (a probability): a number in [0, 1].
share = within(0.0, 1.0)


def _base_url(text: str) -> str:
    # Checked here rather than left to the client, whose message quotes the URL: a key
    # pasted after --base-url must not be echoed.
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError("not an http(s) URL")
    return text


class RefuseKeyOption(argparse.Action):
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


def add_connection_options(parser: argparse.ArgumentParser, *, tasks: bool) -> None:
    """Where the API is and how the key is found: shared by every command that calls it.

    ``tasks``: the command waits on smart-beauty tasks, so the simulator's task knobs
    apply to it (a command's help lists only the options that do something for it; the
    others keep the values that mean "not used").

    Parsers using it must be built with ``allow_abbrev=False``: otherwise ``--api-key SECRET``
    would be taken for ``--api-key-file SECRET``.
    """
    parser.add_argument("--api-key", nargs="?", action=RefuseKeyOption, help=argparse.SUPPRESS)
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
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long one HTTP attempt may take (default 60)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more detail: the SDK's log on stderr (-v: INFO, -vv: DEBUG); for a batch, "
        "every item with its ids and timing, the skipped files, the client's counters",
    )
    sim = parser.add_argument_group("simulator (with --simulate)")
    if tasks:
        sim.add_argument(
            "--sim-task-duration",
            default="0.5:2.0",
            metavar="DURATION",
            help="smart-beauty task time: SECONDS, MIN:MAX or lognormal:MEDIAN:SIGMA "
            "(default 0.5:2.0)",
        )
        sim.add_argument(
            "--sim-failure-share",
            type=share,
            default=0.0,
            metavar="SHARE",
            help="share of smart-beauty tasks that fail (default 0)",
        )
    else:
        parser.set_defaults(sim_task_duration=None, sim_failure_share=0.0)
    sim.add_argument(
        "--sim-latency", metavar="DURATION", help="extra latency per API call (default none)"
    )
    sim.add_argument(
        "--sim-credits", type=float, metavar="N", help="credit balance (default unlimited)"
    )
    sim.add_argument(
        "--sim-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the random choices (default 0)",
    )
