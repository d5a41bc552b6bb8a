"""Shared fixtures: a real redis-server for the session, a clean database per test."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.services import RedisProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    # A short base path: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="stk-r-", dir="/tmp") as tmp:
        server = RedisProcess(Path(tmp))
        server.start()
        yield server
        server.stop()


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()
