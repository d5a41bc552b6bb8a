"""The supervisor's tests on a real engine: a stack of real pieces per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.gateway.supervisor._harness import Stack, agent_stack
from tests.services import RedisProcess


@pytest.fixture
async def stack(
    redis_server: RedisProcess, agent_image: str, docker_engine: Any
) -> AsyncIterator[Stack]:
    async with agent_stack(redis_server.url, agent_image, docker_engine) as built:
        yield built
