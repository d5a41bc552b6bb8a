"""The real agent runtime in a subprocess, against the real mesh, Redis, LiteLLM, a fake model."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.bus import Bus, agent_stream, out_stream
from gateway.envelope import Inbound, Outbound, decode_outbound
from gateway.mesh import AGENT_GROUP, SOCKET_NAME, Mesh
from gateway.settings import BusSettings, MeshSettings
from tests.calls import model_calls, priced_model
from tests.fakes.model_server import FakeModelServer, running_model_server

REPO = Path(__file__).resolve().parents[2]
USER = "u0000000000a9e47"
CHANNEL = "console"
KEY = "sk-runtime-test-key"
REPLY_TIMEOUT_S = 20.0


@dataclass
class Stack:
    """One user's side of Stockade: the mesh door, the bus, the fake model and a workspace."""

    redis: aioredis.Redis
    bus: Bus
    mesh: Mesh
    model: FakeModelServer
    root: Path
    socket_dir: Path
    workspace: Path
    runtimes: list[asyncio.subprocess.Process] = field(default_factory=list)
    _sent: int = 0
    _seen: str = "0-0"

    @property
    def socket(self) -> Path:
        return self.socket_dir / USER / SOCKET_NAME

    @property
    def log(self) -> Path:
        return self.root / "runtime.log"

    async def start_runtime(self) -> asyncio.subprocess.Process:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AGENT_MESH_SOCKET": str(self.socket),
            "AGENT_WORKSPACE": str(self.workspace),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        with self.log.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agents",
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.runtimes.append(process)
        return process

    async def stop_runtime(self, process: asyncio.subprocess.Process) -> int:
        self.runtimes.remove(process)
        process.terminate()
        try:
            return await asyncio.wait_for(process.wait(), timeout=10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    async def send(self, text: str) -> Inbound:
        self._sent += 1
        message = Inbound(
            channel=CHANNEL,
            event_id=f"ev{self._sent}",
            sender_id="alice",
            conversation_id="conv-1",
            text=text,
            received_at=time.time(),
            sender_name="Alice",
            thread_id="t1",
            user_id=USER,
        )
        await self.bus.publish(agent_stream(USER), message)
        return message

    async def reply(self, within_s: float = REPLY_TIMEOUT_S) -> Outbound:
        """The next reply on the out stream; fails with the runtime's log after `within_s`."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            entries = await self.redis.xrange(out_stream(CHANNEL), min=f"({self._seen}", count=1)
            if entries:
                entry_id, fields = entries[0]
                self._seen = entry_id.decode()
                return decode_outbound(fields)
            for process in self.runtimes:
                if process.returncode is not None:
                    pytest.fail(f"the runtime exited with {process.returncode}:\n{self.log_text()}")
            await asyncio.sleep(0.05)
        pytest.fail(f"no reply within {within_s} s; runtime log:\n{self.log_text()}")

    async def pending(self) -> int:
        return int((await self.redis.xpending(agent_stream(USER), AGENT_GROUP))["pending"])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log)"

    def last_request(self) -> dict[str, Any]:
        assert self.model.requests, "the fake model received no request"
        return self.model.requests[-1].body


@pytest.fixture
async def stack(redis: aioredis.Redis) -> AsyncIterator[Stack]:
    # A short root: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="stk-a-", dir="/tmp") as tmp:
        root = Path(tmp)
        workspace = root / "workspace"
        workspace.mkdir()
        async with running_model_server() as model, contextlib.AsyncExitStack() as stack_calls:
            bus = Bus(redis, BusSettings())
            entry = priced_model(model.url, max_tokens=512, timeout_s=10.0)
            calls = await stack_calls.enter_async_context(
                model_calls(redis, root / "calls", {"default": entry}, key=KEY)
            )
            mesh = Mesh(bus, calls.calls, MeshSettings(next_wait_s=2.0), root / "sockets")
            await mesh.warm()
            await mesh.open(USER)
            stack = Stack(redis, bus, mesh, model, root, root / "sockets", workspace)
            try:
                yield stack
            finally:
                for process in stack.runtimes:
                    if process.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
                        await process.wait()
                await mesh.aclose()
