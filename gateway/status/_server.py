"""The `/metrics` HTTP server: GET /metrics answers the status page in Prometheus text.

Each scrape reads Redis, but at most once per `cache_s`: scrapes in between (or
waiting while a read runs) get the same answer, so a scrape storm cannot hammer
Redis. While Redis is down a scrape answers 503 with one line saying why, and the
server goes on. Any other path or method is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from gateway.errors import BudgetUnavailable, DependencyError, RedisUnavailable
from gateway.settings import MetricsSettings
from gateway.status._exposition import CONTENT_TYPE, render_metrics
from gateway.status._gather import StatusSources, gather

PATH: Final = "/metrics"
READ_TIMEOUT_S: Final = 5.0
"""A Redis that takes longer to answer is reported down rather than holding every scrape."""
_SHUTDOWN_S: Final = 2.0

log = logging.getLogger("stockade.metrics")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: str


def fresh(read_at: float | None, now: float, cache_s: float) -> bool:
    """Whether an answer read at `read_at` may still be served at `now`."""
    return read_at is not None and 0 <= now - read_at < cache_s


def one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


class _Cache:
    """The last answer, and one read at a time."""

    def __init__(
        self,
        read: Callable[[], Awaitable[str]],
        cache_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._read = read
        self._cache_s = cache_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._answer = Answer(503, "no figures read yet")
        self._read_at: float | None = None

    async def answer(self) -> Answer:
        async with self._lock:
            if fresh(self._read_at, self._clock(), self._cache_s):
                return self._answer
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    self._answer = Answer(200, await self._read())
            except (RedisUnavailable, BudgetUnavailable) as exc:
                self._answer = Answer(503, one_line(str(exc)))
                log.debug("metrics scrape answered 503: %s", self._answer.body)
            except TimeoutError:
                self._answer = Answer(503, f"Redis did not answer within {READ_TIMEOUT_S:.0f} s")
            self._read_at = self._clock()
            return self._answer


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    host: str
    port: int
    """The bound port (the one the OS chose when 0 was asked for)."""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"


async def _listen(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not found:
        raise OSError(errno.EADDRNOTAVAIL, f"no address for {host}")
    family, _, _, _, address = found[0]
    return socket.create_server(address, family=family)


def _handler(cache: _Cache) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "GET" or request.path != PATH:
            return web.Response(status=404, text="not found\n")
        answer = await cache.answer()
        if answer.status != 200:
            return web.Response(status=answer.status, text=answer.body + "\n")
        return web.Response(body=answer.body.encode(), headers={"Content-Type": CONTENT_TYPE})

    return handle


@contextlib.asynccontextmanager
async def serve_metrics(
    settings: MetricsSettings,
    sources: StatusSources,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[MetricsEndpoint | None]:
    """Serve /metrics for the block; None when disabled or when the port is taken.

    Every server shows the same fleet-wide figures, so one per host is enough: a
    second process on the host finds the port taken and goes on without one.
    """
    if not settings.enabled:
        yield None
        return

    async def read() -> str:
        return render_metrics(await gather(sources))

    try:
        sock = await _listen(settings.host, settings.port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise DependencyError(
                f"the metrics server cannot listen on {settings.host}:{settings.port}: "
                f"{exc.strerror or exc}"
            ) from None
        log.warning(
            "metrics port %s:%d is taken (another Stockade process on this host serves "
            "/metrics?); this process serves none",
            settings.host,
            settings.port,
        )
        yield None
        return
    endpoint = MetricsEndpoint(settings.host, sock.getsockname()[1])
    server = web.Server(_handler(_Cache(read, settings.cache_s, clock)), access_log=None)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=_SHUTDOWN_S)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        log.info("metrics at %s", endpoint.url)
        yield endpoint
    finally:
        await runner.cleanup()
        sock.close()
