"""A real agent stack for tests: Redis, bus, mesh, fake model, Docker engine and supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from gateway.bus import WAKE_STREAM, Bus, agent_stream, out_stream
from gateway.envelope import Inbound, Outbound, decode_outbound
from gateway.mesh import Mesh
from gateway.policy import Identities
from gateway.settings import (
    AgentLimits,
    BusSettings,
    MeshSettings,
    SupervisorSettings,
)
from gateway.supervisor import DockerRuntime, Supervisor, Workspaces, deployment_id
from tests.calls import model_calls, priced_model
from tests.fakes.model_server import FakeModelServer, running_model_server

BUS = BusSettings(claim_idle_ms=500, block_ms=50, max_deliveries=3)
SMALL = AgentLimits(memory_mb=96, cpus=0.5, pids=64, tmpfs_mb=8, workspace_mb=16)


@dataclass
class Clock:
    """Time the test moves by hand, so idleness needs no sleeping."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Stack:
    client: aioredis.Redis
    bus: Bus
    mesh: Mesh
    runtime: DockerRuntime
    supervisor: Supervisor
    model: FakeModelServer
    clock: Clock
    socket_dir: Path
    users: list[str] = field(default_factory=list)

    async def new_user(self, channel: str = "telegram") -> str:
        sender = secrets.token_hex(4)
        user = await Identities(self.client).resolve(channel, sender)
        self.users.append(user)
        return user

    async def say(self, user: str, text: str, channel: str = "telegram") -> Inbound:
        """A routed message for `user`, as the router hands it on: agent stream plus wake."""
        inbound = Inbound(
            channel=channel,
            event_id=secrets.token_hex(6),
            sender_id=user,
            conversation_id=f"chat-{user}",
            text=text,
            received_at=self.clock(),
            user_id=user,
        )
        await self.bus.publish(agent_stream(user), inbound)
        await self.bus.publish(WAKE_STREAM, inbound)
        return inbound

    async def replies(self, channel: str = "telegram") -> list[Outbound]:
        return [decode_outbound(f) for _, f in await self.client.xrange(out_stream(channel))]

    async def wait_for_replies(self, count: int, timeout_s: float = 60) -> list[Outbound]:
        async with asyncio.timeout(timeout_s):
            while len(found := await self.replies()) < count:
                await asyncio.sleep(0.05)
        return found


@contextlib.asynccontextmanager
async def agent_stack(
    redis_url: str,
    image: str,
    docker: Any,
    *,
    api_key: str = "sk-canary-test",
    run_loop: bool = False,
    **supervisor: Any,
) -> AsyncIterator[Stack]:
    """The stack; with `run_loop` the supervisor runs its own loop (wake consumer and
    reconcile passes), else tests drive `reconcile` by hand. Containers and volumes of
    the users it made are removed afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()
    bus = Bus(client, BUS)
    settings = SupervisorSettings(limits=SMALL, check_interval_s=0.2, **supervisor)
    clock = Clock()
    # Short: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="stk-m-", dir="/tmp") as sockets:
        async with (
            running_model_server() as model,
            model_calls(
                client,
                Path(sockets) / "calls",
                {"default": priced_model(model.url, "openai/fake", timeout_s=60.0)},
                key=api_key,
            ) as calls,
        ):
            mesh = Mesh(bus, calls.calls, MeshSettings(next_wait_s=1.0), Path(sockets))
            await mesh.warm()
            workspaces = Workspaces(Path(sockets) / "workspaces")
            runtime = DockerRuntime(docker, await deployment_id(client), workspaces=workspaces)
            sup = Supervisor(client, bus, runtime, mesh, image, settings, clock=clock)
            stack = Stack(client, bus, mesh, runtime, sup, model, clock, Path(sockets))
            loop = asyncio.create_task(sup.run("test")) if run_loop else None
            try:
                yield stack
            finally:
                if loop is not None:
                    loop.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await loop
                for user in stack.users:
                    await runtime.remove(user)
                    await runtime.remove_workspace(user)
                # Unmounted before the directory goes: its removal would empty them.
                for user in workspaces.users():
                    await runtime.remove(user)
                    await workspaces.remove(user)
                await mesh.aclose()
                await client.aclose()


async def wake_all(stack: Stack) -> None:
    """Process every pending wake entry, then reconcile once."""
    await stack.bus.ensure_group(WAKE_STREAM, "supervisor")
    for delivery in await stack.bus.read(WAKE_STREAM, "supervisor", "s1", count=100, block_ms=10):
        await stack.supervisor.handle_wake(delivery)
        await stack.bus.ack(delivery)
    await stack.supervisor.reconcile()
