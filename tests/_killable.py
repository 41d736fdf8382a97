"""Kill a batch mid-run: a child process runs a batch script and is SIGKILLed once it has
settled some items, as an OOM killer or a power cut would stop it (no cleanup runs)."""

from __future__ import annotations

import asyncio
import signal
import sys


async def run_until_killed(script: str, *args: str, finished: int = 5) -> None:
    """Run ``python -c script *args``; SIGKILL it after it printed ``finished`` lines of
    ``finished`` (one per settled item)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    try:
        for _ in range(finished):
            assert await asyncio.wait_for(child.stdout.readline(), 60) == b"finished\n"
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
