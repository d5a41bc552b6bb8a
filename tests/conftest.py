"""Shared fixtures: a real redis-server for the session, a clean database per test, a real
Docker engine and the agent image built once per session.

With CI=true a missing service (Redis, the Docker engine, or debootstrap when the base
image must be built) fails the run; elsewhere the tests that need it skip, naming how
to get it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import redis.asyncio as aioredis

from gateway.errors import DockerUnavailable
from gateway.settings import DockerSettings
from gateway.supervisor import base_tag, docker_client, ensure_image
from tests.services import TEST_IMAGE, RedisProcess, missing, require


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


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A docker SDK client for the engine DOCKER_HOST (or the default socket) names."""
    try:
        client = docker_client(DockerSettings())
    except DockerUnavailable as exc:
        missing(f"{exc} (scripts/check starts one)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def agent_image(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tag of the agent image built from this checkout's agents/, once per session.

    The offline base is left on the engine, so only the first session on a machine
    pays for debootstrap (about a minute).
    """
    try:
        docker_engine.images.get(base_tag(TEST_IMAGE))
    except docker.errors.ImageNotFound:
        require("debootstrap", "debootstrap")
        if os.geteuid() != 0:
            missing("building the offline base image needs root (debootstrap chroots)")
    data_dir = tmp_path_factory.mktemp("agent-image")
    return asyncio.run(ensure_image(TEST_IMAGE, DockerSettings(), data_dir))
