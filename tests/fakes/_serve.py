"""Serving a fake's aiohttp app on an OS-chosen port of 127.0.0.1, for the length of a block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serving(app: web.Application, shutdown_timeout: float = 1.0) -> AsyncIterator[str]:
    """Yields "http://127.0.0.1:PORT". A short shutdown: a test may leave a long poll or a
    slow reply in flight on purpose."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
