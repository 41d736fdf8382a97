"""The aiohttp session's lifecycle: created lazily and owned, or injected and borrowed.

Only :mod:`._transport` sends requests over the session; this module decides when it is
made (first use, inside the running loop), how its connection pool is sized, and that an
injected session is never closed by us.
"""

from __future__ import annotations

import asyncio

import aiohttp

from .errors import ClientClosedError

# aiohttp's own request method: it times every request by the timeout it is given. A
# session whose method is another (a subclass's, a test double's) may not.
_AIOHTTP_REQUEST = aiohttp.ClientSession.__dict__["_request"]


class SessionManager:
    """Hands out the one ``aiohttp.ClientSession`` a client uses.

    An owned session is created on first use (inside the running loop) with a connector
    sized to the client's concurrency, and closed by :meth:`aclose`. An injected session is
    used as is and never closed by us: its owner decides its lifetime.
    """

    def __init__(
        self, session: aiohttp.ClientSession | None, *, pool_size: int, trust_env: bool = False
    ) -> None:
        self._session = session
        self._trust_env = trust_env
        self._owned = session is None
        self._pool_size = pool_size
        self._closed = False
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def current(self) -> aiohttp.ClientSession | None:
        """The session, when it exists and is open (else :meth:`get` says why, or makes it)."""
        session = self._session
        if session is None or session.closed or self._closed:
            return None
        return session

    @property
    def times_requests(self) -> bool:
        """Whether the session in use times each request itself (aiohttp's own request
        method): then an attempt given a timeout ends within it, and a call needs no
        scope of its own around it. ``False`` before the session exists."""
        session = self._session
        return session is not None and getattr(type(session), "_request", None) is _AIOHTTP_REQUEST

    async def get(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError("this AILabClient is closed; create a new one")
        if self._session is not None:
            if self._session.closed:
                raise ClientClosedError("the aiohttp session given to AILabClient is closed")
            return self._session
        async with self._lock:
            if self._closed:
                raise ClientClosedError("this AILabClient is closed; create a new one")
            if self._session is None:
                connector = aiohttp.TCPConnector(
                    limit=self._pool_size,
                    limit_per_host=self._pool_size,
                    ttl_dns_cache=300,
                    keepalive_timeout=30,
                )
                # No default headers: the key is added per request to the API host only, so
                # it can never leak to the hosts result images are downloaded from.
                # trust_env costs two thread-pool round trips per request (netrc and
                # proxy look-ups): opt-in only, for deployments behind a proxy.
                self._session = aiohttp.ClientSession(
                    connector=connector, raise_for_status=False, trust_env=self._trust_env
                )
            return self._session

    async def aclose(self) -> None:
        """Close the owned session (idempotent); leave an injected one alone."""
        self._closed = True
        session, self._session = self._session, None
        if self._owned and session is not None and not session.closed:
            await session.close()
