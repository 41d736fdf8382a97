"""Running the simulator: :class:`Simulator` binds the app to a local port."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from ._app import STOPPING_KEY, make_app
from ._config import SimulatorConfig
from ._state import Clock, SimulatorState, SimulatorStats

__all__ = ["Simulator"]

# Stalled answers are released on stop, so handlers finish quickly; this only bounds
# anything unexpected.
_SHUTDOWN_TIMEOUT = 5.0


class Simulator:
    """The AILabTools API on a local port, for tests, demos and benchmarks.

    Binds ``config.host`` (default 127.0.0.1) on ``config.port`` (default 0: a free port).

    >>> async def demo() -> None:
    ...     async with Simulator(SimulatorConfig(seed=1)) as sim:
    ...         print(sim.url, sim.api_key)
    """

    def __init__(self, config: SimulatorConfig | None = None, *, clock: Clock | None = None):
        self.config = config if config is not None else SimulatorConfig()
        self.state = SimulatorState(self.config, clock)
        self.app = make_app(state=self.state)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The base URL, like ``http://127.0.0.1:54321`` (only while started)."""
        if self._url is None:
            raise RuntimeError("the simulator is not started")
        return self._url

    @property
    def api_key(self) -> str:
        """The key the simulator accepts (``config.api_key``)."""
        return self.config.api_key

    @property
    def stats(self) -> SimulatorStats:
        """What the simulator has seen so far."""
        return self.state.stats

    @property
    def clock(self) -> Clock:
        """The clock in use (a :class:`ManualClock` if one was given)."""
        return self.state.clock

    def balance(self, api_key: str | None = None) -> float:
        """Credits left for ``api_key`` (default: :attr:`api_key`)."""
        return self.state.balance(api_key if api_key is not None else self.api_key)

    async def start(self) -> None:
        """Bind and serve; afterwards :attr:`url` is set."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already started")
        self.app[STOPPING_KEY].clear()
        runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        self._url = f"http://{shown}:{port}"

    async def stop(self) -> None:
        """Release stalled answers, close every connection and free the port."""
        runner, self._runner = self._runner, None
        self._url = None
        if runner is None:
            return
        self.app[STOPPING_KEY].set()
        await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
