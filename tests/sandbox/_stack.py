"""A whole real Stockade stack for the escape-and-abuse suite, and helpers to drive and watch it.

Redis, the bus, the mesh, a fake model, the Docker engine and the supervisor running its
own loop (the wake consumer and the reconcile pass), with the model key set to a fresh
canary each time, so a leak found belongs to this stack alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.envelope import Outbound
from gateway.supervisor import container_name
from tests.gateway.supervisor._harness import Stack, agent_stack

START_TIMEOUT_S = 60.0
"""Bounds starting a container; the engine is shared and the machine small."""
REPLY_TIMEOUT_S = 60.0

T = TypeVar("T")


def new_canary() -> str:
    """A model key no one else uses. The "/", "+" and "=" make its URL-encoded form differ."""
    return f"sk-canary-{secrets.token_hex(12)}/{secrets.token_hex(6)}+x="


@dataclass
class Sandbox:
    """A running stack and what the tests need beside it."""

    stack: Stack
    docker: Any
    canary: str
    socket_dir: Path

    async def start_agent(self, user: str, text: str = "hello") -> Any:
        """Send `user` a message, let the supervisor's loop start the agent, wait for its reply.

        Returns the docker SDK container of the agent, running and answering.
        """
        await self.ask(user, text)
        return await self.container(user)

    async def container(self, user: str, *, timeout_s: float = START_TIMEOUT_S) -> Any:
        """The user's agent container once it runs (as the supervisor started it)."""

        async def running() -> Any:
            found = await self.stack.runtime.get(user)
            if found is None or not found.running:
                return None
            return await asyncio.to_thread(self.docker.containers.get, container_name(user))

        return await eventually(running, timeout_s, f"the agent of {user} to run")

    async def ask(self, user: str, text: str, *, timeout_s: float = REPLY_TIMEOUT_S) -> Outbound:
        """Send `user`'s agent a message and return its final reply to that message."""
        inbound = await self.stack.say(user, text)

        async def answered() -> Outbound | None:
            for reply in await self.stack.replies():
                if reply.reply_to == inbound.event_id:
                    return reply
            return None

        return await eventually(answered, timeout_s, f"the agent of {user} to answer {text!r}")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout_s: float, what: str, *, every_s: float = 0.1
) -> T:
    """The first non-None value of `probe`, polled until `timeout_s` is up."""
    try:
        async with asyncio.timeout(timeout_s):
            while (value := await probe()) is None:
                await asyncio.sleep(every_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}") from None
    return value


@contextlib.asynccontextmanager
async def sandbox_stack(
    redis_url: str, image: str, docker: Any, **supervisor: Any
) -> AsyncIterator[Sandbox]:
    """A real stack whose supervisor runs its own loop; containers and volumes removed after."""
    canary = new_canary()
    async with agent_stack(
        redis_url, image, docker, api_key=canary, run_loop=True, **supervisor
    ) as stack:
        yield Sandbox(stack, docker, canary, stack.socket_dir)


def cgroup_file(container: Any, controller: str, name: str) -> Path:
    """A file of the container's cgroup on this host, cgroup v1 or v2 (the host's view)."""
    container.reload()
    pid = container.attrs["State"]["Pid"]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup", controller, path.lstrip("/"), name)
        if controllers == "" and path != "/":
            return Path("/sys/fs/cgroup", path.lstrip("/"), name)
    raise AssertionError(f"no {controller} cgroup found for container {container.name}")


def pids_current(container: Any) -> int:
    return int(cgroup_file(container, "pids", "pids.current").read_text())


def oom_kills(container: Any) -> int:
    """How many processes the OOM killer took in the container's memory cgroup."""
    v1 = cgroup_file(container, "memory", "memory.oom_control")
    source = v1 if v1.exists() else cgroup_file(container, "memory", "memory.events")
    for line in source.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    raise AssertionError(f"{source} counts no oom_kill")
