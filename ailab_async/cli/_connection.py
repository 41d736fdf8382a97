"""The client a command talks through: the key from the environment or ``--api-key-file``,
and ``--simulate``'s in-process simulator in place of the API.

The simulator's configuration is built by the simulator package
(:func:`~ailab_async.testing.simulator._options.config_from_options`); this module only
hands it the option values and words its errors without echoing them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from .._config import API_KEY_ENV, DEFAULT_TASK_TIMEOUT
from .._polling import FALLBACK_INTERVAL, PollingConfig
from ..client import AILabClient
from ._output import CliError, warn
from ._parser import without_values
from ._progress import display_text

if TYPE_CHECKING:
    from ailab_async.testing.simulator import Simulator, SimulatorConfig

__all__ = ["api_key", "embedded_simulator_config", "open_client", "polling_config"]


def api_key(args: argparse.Namespace, command: str) -> str | None:
    """The key from ``--api-key-file``; ``None`` when the client is to read ``AILAB_API_KEY``.

    Checked here so that a missing key is a clear message before anything starts.
    """
    path: Path | None = args.api_key_file
    if path is None:
        if not os.environ.get(API_KEY_ENV, "").strip():
            raise CliError(
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
        raise CliError(f"cannot read the file given to --api-key-file: {reason}") from None
    shown = display_text(str(path))
    if os.name == "posix" and mode & 0o044:
        warn(command, f"{shown} is readable by other users; restrict it with: chmod 600 {shown}")
    key = text.strip()
    if not key:
        raise CliError(f"the API key file {shown} is empty")
    if any(character.isspace() for character in key):
        raise CliError(f"the API key file {shown} must hold the key alone, on one line")
    return key


def embedded_simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    """The configuration of ``--simulate``'s simulator from the ``--sim-*`` options."""
    if importlib.util.find_spec("PIL") is None:
        raise CliError(
            "--simulate needs Pillow; install it with: pip install 'ailab-async[simulator]'"
        )
    from ailab_async.testing.simulator._options import (  # noqa: PLC0415 - optional dependency
        SimulatorOptionError,
        config_from_options,
    )

    try:
        return config_from_options(
            seed=args.sim_seed,
            latency=args.sim_latency,
            credits=args.sim_credits,
            task_duration=args.sim_task_duration,
            failure_share=args.sim_failure_share,
        )
    except SimulatorOptionError as exc:  # a duration spec: its message quotes it, maybe a key
        durations = [d for d in (args.sim_task_duration, args.sim_latency) if d]
        raise CliError(without_values(str(exc), durations, set())) from None


def polling_config(poll_interval: float) -> PollingConfig:
    """The client's polling with ``--poll-interval`` as the longest wait between two polls
    of one task (two polls are never closer than a quarter second, or half of it)."""
    return PollingConfig(fallback_interval=poll_interval, min_interval=min(0.25, poll_interval / 2))


@contextlib.asynccontextmanager
async def open_client(
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
            polling=polling_config(poll_interval),
        )
        await stack.enter_async_context(client)
        yield client


@contextlib.asynccontextmanager
async def _start_simulator(args: argparse.Namespace) -> AsyncIterator[Simulator]:
    config = embedded_simulator_config(args)
    from ailab_async.testing.simulator import Simulator  # noqa: PLC0415

    async with Simulator(config) as simulator:
        yield simulator
