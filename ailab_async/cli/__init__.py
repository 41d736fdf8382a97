"""The ``ailab-async`` command line: argument parsing and printing only.

Every decision (what to pay for, what to resume, where outputs go) is made by the batch
engine (:mod:`ailab_async.batch`) or the SDK; this package turns options into calls and
results into lines on the terminal.
"""

from __future__ import annotations

from ._commands import build_parser, main

__all__ = ["build_parser", "main"]
