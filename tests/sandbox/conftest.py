"""Fixtures of the escape-and-abuse suite: a real stack of its own for a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.sandbox._stack import Sandbox, sandbox_stack
from tests.services import RedisProcess


@pytest.fixture
async def sandbox(
    redis_server: RedisProcess, agent_image: str, docker_engine: Any
) -> AsyncIterator[Sandbox]:
    """A stack of its own for one test."""
    async with sandbox_stack(redis_server.url, agent_image, docker_engine) as built:
        yield built
