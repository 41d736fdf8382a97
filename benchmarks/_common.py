"""What benchmarks share: the report of where they ran, and the simulator in a child process."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


def package_version(name: str) -> str:
    """The installed version of ``name``, or ``"not installed"``."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Python, platform, CPUs and the versions of the packages the benchmarks compare."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "aiohttp": package_version("aiohttp"),
        "ailab-async": package_version("ailab-async"),
        "ailabtools-sdk": package_version("ailabtools-sdk"),
        "httpx": package_version("httpx"),
    }


class SimulatorProcess:
    """``ailab-async simulate --port 0 ARGS`` in a child interpreter, at :attr:`url` in the block.

    Stopped with SIGTERM on exit; :attr:`cpu_seconds` is the CPU it used (read from
    ``/proc`` just before stopping it; ``None`` where there is no ``/proc``).
    """

    def __init__(self, *args: str) -> None:
        self.args = args
        self.url = ""
        self.api_key = ""
        self.cpu_seconds: float | None = None
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SimulatorProcess:
        command = [sys.executable, "-m", "ailab_async.cli", "simulate", "--host", "127.0.0.1"]
        process = subprocess.Popen(
            [*command, "--port", "0", *self.args],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO_ROOT,
        )
        self._process = process
        assert process.stdout is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while not (self.url and self.api_key) and time.monotonic() < deadline:
            line = process.stdout.readline()  # "" at EOF: the child died
            if not line:
                break
            if "listening on " in line:
                self.url = line.rsplit("listening on ", 1)[1].strip()
            elif line.startswith("API key: "):
                self.api_key = line.removeprefix("API key: ").strip()
        if not (self.url.startswith("http://127.0.0.1:") and self.api_key):
            self._stop()
            raise RuntimeError(f"the simulator did not start (args {self.args})")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self.cpu_seconds = _process_cpu_seconds(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
