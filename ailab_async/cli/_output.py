"""What the command line prints when things go wrong, and which exit status that is.

Every command runs inside :func:`guarded`: an expected failure becomes one line on stderr
(``ailab-async COMMAND: error: ...``) and an exit status (0 success, 1 some items or the
call failed, 2 usage or configuration: nothing was sent, 130 interrupted), never a
traceback. Every line quotes server strings or file names through
:func:`~ailab_async.cli._progress.display_text`, so neither can drive the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..batch.journal import JournalAccountError, JournalBusyError
from ..errors import AILabError, AuthenticationError, ConfigurationError, PermissionDeniedError
from ._progress import display_text

__all__ = ["CliError", "amount", "exit_code_for", "fail", "guarded", "logging_to_stderr", "warn"]


class CliError(Exception):
    """An expected failure: its message is printed without a traceback; ``code`` is the exit
    status (2: usage or configuration)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def warn(command: str, message: str) -> None:
    """A warning line; the command goes on."""
    # Warnings quote server messages too; display_text leaves text escaped earlier as it is.
    print(f"ailab-async {command}: warning: {display_text(message)}", file=sys.stderr, flush=True)


def fail(command: str, message: object) -> None:
    """The one-line error of a command. ``message`` may quote the server (error codes,
    messages, request ids) or a file name: it is escaped so neither can drive the terminal."""
    print(f"ailab-async {command}: error: {display_text(str(message))}", file=sys.stderr)


def exit_code_for(error: AILabError) -> int:
    """2 when the set-up must change before a rerun (nothing was sent), else 1."""
    if isinstance(error, (ConfigurationError, JournalBusyError, JournalAccountError)):
        return 2  # nothing was sent: fix the set-up (or wait for the other run) and rerun
    # A missing or refused key is fixed by configuration, not by running again.
    if isinstance(error, AuthenticationError) and not isinstance(error, PermissionDeniedError):
        return 2
    return 1


def guarded(args: argparse.Namespace, run: Callable[[], int]) -> int:
    """Run a command; expected errors become a one-line message and an exit status."""
    command = args.command
    try:
        with logging_to_stderr(getattr(args, "verbose", 0)):
            return run()
    except CliError as exc:
        fail(command, exc)
        return exc.code
    except AILabError as exc:
        fail(command, exc)
        return exit_code_for(exc)
    except OSError as exc:  # the disk, not the API: a full disk, a file that vanished
        fail(command, exc)
        return 1
    except sqlite3.Error as exc:  # a journal that is not one, or a failing disk under it
        fail(command, f"journal: {exc}")
        return 1
    except KeyboardInterrupt:
        print(f"ailab-async {command}: interrupted", file=sys.stderr)
        return 130


def amount(value: float) -> str:
    """A credit amount as shown: whole numbers without decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


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
def logging_to_stderr(verbosity: int) -> Iterator[None]:
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
