"""The supervisor: one container per user, started on demand, restarted on crash, stopped when idle.

It reconciles what should run (users with recent messages, kept in Redis) with
what does run (containers found by their labels), so a restarted gateway adopts
its running agents and removes any it no longer wants: nothing is leaked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway._aio import raise_if_cancelling
from gateway.bus import WAKE_STREAM, Bus, Delivery, agent_stream, out_stream
from gateway.envelope import Inbound, Outbound
from gateway.errors import EnvelopeError, StockadeError
from gateway.mesh import AGENT_GROUP
from gateway.settings import SupervisorSettings
from gateway.supervisor import _spec
from gateway.supervisor._runtime import AgentContainer, Runtime

WAKE_GROUP: Final = "supervisor"
WANTED_KEY: Final = "stockade:supervisor:wanted"
CONTACT_KEY: Final = "stockade:supervisor:contact"
DEPLOYMENT_KEY: Final = "stockade:deployment"


async def deployment_id(client: aioredis.Redis) -> str:
    """This deployment's id: made once, kept in its Redis, shared by all its supervisors."""
    await client.set(DEPLOYMENT_KEY, secrets.token_hex(8), nx=True)
    value = await client.get(DEPLOYMENT_KEY)
    if value is None:
        raise StockadeError("the deployment id vanished from Redis right after it was set")
    return value.decode() if isinstance(value, bytes) else str(value)


_CRASH_BACKOFF_MAX_S: Final = 60.0

log = logging.getLogger("stockade.supervisor")


class MeshDoor(Protocol):
    """The part of the mesh the supervisor needs: a socket directory per agent."""

    async def open(self, user_id: str) -> Path: ...

    async def close(self, user_id: str) -> None: ...

    def is_open(self, user_id: str) -> bool: ...


def crash_notice(container: AgentContainer) -> str:
    reason = "it ran out of memory" if container.oom_killed else f"exit {container.exit_code}"
    return f"Your agent stopped unexpectedly ({reason}) and has been restarted."


class Supervisor:
    def __init__(
        self,
        client: aioredis.Redis,
        bus: Bus,
        runtime: Runtime,
        mesh: MeshDoor,
        image: str,
        settings: SupervisorSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._bus = bus
        self._runtime = runtime
        self._mesh = mesh
        self._image = image
        self._settings = settings
        self._clock = clock
        self._kick = asyncio.Event()
        self._restarts: dict[str, tuple[int, float]] = {}
        self._running: frozenset[str] = frozenset()
        """Users whose container the last pass found running."""
        self._spec_hashes: dict[str, str] = {}
        """Each user's current spec hash; settings and image are fixed for a supervisor."""

    async def handle_wake(self, delivery: Delivery) -> None:
        inbound = delivery.envelope
        if not isinstance(inbound, Inbound) or not inbound.user_id:
            raise EnvelopeError("a wake entry must be a routed inbound envelope")
        _spec.check_user_id(inbound.user_id)
        contact = {
            "channel": inbound.channel,
            "conversation_id": inbound.conversation_id,
            "thread_id": inbound.thread_id,
        }
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(WANTED_KEY, inbound.user_id, repr(self._clock()))
            pipe.hset(CONTACT_KEY, inbound.user_id, json.dumps(contact))
            await pipe.execute()
        # A pass lists every container (tens of ms of engine work): not for each message
        # to an agent already running. A crash since is found by the next timed pass.
        if inbound.user_id not in self._running:
            self._kick.set()

    async def _wanted(self) -> dict[str, float]:
        raw = await self._client.hgetall(WANTED_KEY)
        wanted: dict[str, float] = {}
        for key, value in raw.items():
            user = key.decode() if isinstance(key, bytes) else str(key)
            try:
                wanted[user] = float(value)
            except ValueError:
                wanted[user] = 0.0
        return wanted

    async def _has_work(self, user_id: str) -> bool:
        return await self._bus.lag(agent_stream(user_id), AGENT_GROUP) > 0

    async def _open_door(self, user_id: str) -> Path:
        mesh_dir = await self._mesh.open(user_id)
        # Root's, and mounted read-only: the agent ("nobody") may enter it and connect to
        # its socket, never write there. The directory above stays closed to others.
        mesh_dir.chmod(0o755)
        return mesh_dir

    async def _spec_of(self, user_id: str) -> dict[str, Any]:
        mesh_dir = await self._open_door(user_id)
        limits = self._settings.overrides.get(user_id, self._settings.limits)
        spec = _spec.container_spec(
            self._runtime.deployment, user_id, self._image, limits, mesh_dir
        )
        self._spec_hashes[user_id] = spec["labels"][_spec.LABEL_SPEC]
        return spec

    async def _start(self, user_id: str) -> None:
        await self._runtime.start(user_id, await self._spec_of(user_id))
        log.info("started the agent of %s", user_id)

    async def _between_turns(self, user_id: str) -> bool:
        """No message waiting and none handed out unanswered: a replacement loses nothing."""
        stream = agent_stream(user_id)
        if await self._bus.lag(stream, AGENT_GROUP) > 0:
            return False
        try:
            pending = await self._client.xpending(stream, AGENT_GROUP)
        except ResponseError:
            return True  # no stream or group yet: nothing was ever handed out
        return int(pending["pending"]) == 0

    async def _renew_if_outdated(self, container: AgentContainer) -> None:
        """Replace a running container made from an older image, profile or limits."""
        user_id = container.user_id
        wanted = self._spec_hashes.get(user_id)
        if wanted is None:
            wanted = _spec.spec_hash(await self._spec_of(user_id))
        if container.spec == wanted or not await self._between_turns(user_id):
            return
        log.info(
            "replacing the agent of %s: its container predates the current image or settings",
            user_id,
        )
        # `start` replaces the old container; the workspace volume and the door stay.
        await self._start(user_id)

    async def _notify_crash(self, container: AgentContainer) -> None:
        raw = await self._client.hget(CONTACT_KEY, container.user_id)
        if raw is None:
            return
        contact = json.loads(raw)
        crash_id = f"crash:{container.container_id[:12]}:{container.finished_at}"
        notice = Outbound(
            channel=contact["channel"],
            conversation_id=contact["conversation_id"],
            thread_id=contact.get("thread_id", ""),
            text=crash_notice(container),
            outbound_id=crash_id,
            user_id=container.user_id,
        )
        # Deduplicated by the crash's identity: one crash, one notice, even across restarts.
        await self._bus.publish(out_stream(notice.channel), notice, dedupe=crash_id)

    def _may_restart(self, user_id: str, now: float) -> bool:
        count, not_before = self._restarts.get(user_id, (0, 0.0))
        if now < not_before:
            return False
        delay = min(_CRASH_BACKOFF_MAX_S, 2.0**count) if count else 0.0
        self._restarts[user_id] = (count + 1, now + delay)
        return True

    async def _stop(self, user_id: str, *, forget: bool) -> None:
        await self._runtime.remove(user_id)
        await self._mesh.close(user_id)
        if forget:
            await self._client.hdel(WANTED_KEY, user_id)
        self._restarts.pop(user_id, None)

    async def reconcile(self) -> None:
        """Bring the containers in line with what is wanted; one pass."""
        now = self._clock()
        wanted = await self._wanted()
        present = {c.user_id: c for c in await self._runtime.agents()}

        for user_id, container in present.items():
            if user_id not in wanted:
                log.info("removing the unwanted agent container of %s", user_id or "?")
                if user_id:
                    await self._stop(user_id, forget=False)
                continue
            if container.running:
                idle = now - wanted[user_id] > self._settings.idle_stop_s
                if idle and not await self._has_work(user_id):
                    log.info("stopping the idle agent of %s", user_id)
                    await self._stop(user_id, forget=True)
                    continue
                if not self._mesh.is_open(user_id):
                    # Adopted after a restart: the container waits for its socket to return.
                    await self._open_door(user_id)
                    log.info("adopted the running agent of %s", user_id)
                await self._renew_if_outdated(container)
                continue
            if self._may_restart(user_id, now):
                log.warning(
                    "the agent of %s exited (code %d, oom %s); restarting",
                    user_id,
                    container.exit_code,
                    container.oom_killed,
                )
                await self._notify_crash(container)
                await self._start(user_id)

        up = {u for u, c in present.items() if c.running and u in wanted}
        self._running = frozenset(u for u in up if self._mesh.is_open(u))
        running = len(up)
        waiting = sorted((t, u) for u, t in wanted.items() if u not in present)
        for _, user_id in waiting:
            if running >= self._settings.max_running:
                break
            await self._start(user_id)
            running += 1

    async def _reconcile_forever(self) -> None:
        while True:
            raise_if_cancelling()
            # Cleared before the pass: a wake arriving during it triggers the next one.
            self._kick.clear()
            try:
                await self.reconcile()
            except StockadeError as exc:
                log.error("supervisor pass failed: %s", exc)
            except Exception:
                # A task boundary: a failed pass is logged and the next one tries again.
                log.exception("supervisor pass failed")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the timeout fires, and shutdown then hangs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.check_interval_s):
                    await self._kick.wait()

    async def run(self, consumer: str) -> None:
        """Supervise until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(
                self._bus.consume(WAKE_STREAM, WAKE_GROUP, consumer, self.handle_wake)
            )
            tasks.create_task(self._reconcile_forever())
