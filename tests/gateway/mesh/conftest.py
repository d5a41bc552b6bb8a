"""Fixtures the mesh's tests share: a short socket directory, the fake provider, the bus
and a mesh on them (each module brings its own `calls`: the models it offers)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.bus import Bus
from gateway.mesh import Mesh
from gateway.settings import BusSettings
from tests.calls import Calls
from tests.fakes.model_server import FakeModelServer, running_model_server
from tests.gateway.mesh.test_mesh import SETTINGS


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # pytest's tmp_path can be too long for a unix socket path (107 bytes).
    with tempfile.TemporaryDirectory(prefix="stk-m-", dir="/tmp") as tmp:
        yield Path(tmp) / "sockets"


@pytest.fixture
async def fake_model() -> AsyncIterator[FakeModelServer]:
    async with running_model_server() as server:
        yield server


@pytest.fixture
async def bus(redis: aioredis.Redis) -> Bus:
    return Bus(redis, BusSettings())


@pytest.fixture
async def mesh(bus: Bus, calls: Calls, socket_dir: Path) -> AsyncIterator[Mesh]:
    mesh = Mesh(bus, calls.calls, SETTINGS, socket_dir)
    yield mesh
    await mesh.aclose()
