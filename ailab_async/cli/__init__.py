"""The ``ailab-async`` command line: argument parsing and printing only.

Every decision (which inputs count, what to pay for, what to resume, where outputs go, how
a simulator is configured) is made by the batch engine (:mod:`ailab_async.batch`), the SDK
or the simulator package; this package turns options into calls and answers into lines on
the terminal, and picks the exit status.

- ``_commands``: the subcommand registry, :func:`main`, and ``credits``, ``sample-photos``;
- ``_simulate``: ``simulate`` (serving the local simulator);
- ``_batch``: ``skin`` and ``beauty`` (their parameters' ranges come from the endpoint table);
- ``_parser``: the parser that never echoes a value, value types, options shared by commands;
- ``_connection``: the API key, and the client (or ``--simulate``'s in-process simulator);
- ``_output``: error lines, warnings, exit codes, ``-v`` logging;
- ``_progress``: the progress display and :func:`~ailab_async.cli._progress.display_text`.

A new command goes in ``_commands`` (or a module of its own) and is listed in its registry.
"""

from __future__ import annotations

from ._commands import build_parser, main

__all__ = ["build_parser", "main"]
