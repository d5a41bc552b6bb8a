"""The supervisor: one container per user, started on demand, restarted on crash, stopped when idle.

It reconciles what should run (users with recent messages, kept in Redis) with
what does run (containers found by their labels), so a restarted gateway adopts
its running agents and removes any it no longer wants: nothing is leaked. It also
carries out operator controls (kill, reset, stop, pause, resume) from the control
stream (`_controls`), and writes each agent's status to Redis for the router to show
(`_status_writer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway._aio import raise_if_cancelling
from gateway.bus import WAKE_STREAM, Bus, Delivery, agent_stream, by_sender
from gateway.controls import PAUSED_ALL_KEY, PAUSED_KEY, Control
from gateway.envelope import Inbound
from gateway.errors import (
    DependencyError,
    DockerUnavailable,
    EnvelopeError,
    RedisUnavailable,
    StockadeError,
)
from gateway.mesh import AGENT_GROUP
from gateway.settings import SupervisorSettings
from gateway.supervisor import _control, _spec
from gateway.supervisor._controls import Controls
from gateway.supervisor._crash import CONTACT_KEY, notify_crash
from gateway.supervisor._deployment import deployment_id
from gateway.supervisor._door import MeshDoor
from gateway.supervisor._fleet import Fleet
from gateway.supervisor._runtime import AgentContainer, Runtime
from gateway.supervisor._status_writer import StatusWriter

__all__ = ["WAKE_GROUP", "MeshDoor", "Supervisor", "deployment_id"]

WAKE_GROUP: Final = "supervisor"
WANTED_KEY: Final = "stockade:supervisor:wanted"

_CRASH_BACKOFF_MAX_S: Final = 60.0

log = logging.getLogger("stockade.supervisor")


class Supervisor:
    """Runs this deployment's agents on one Docker engine, reconciled on each wake and interval."""

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
        self._fleet = Fleet()
        self._restarts: dict[str, tuple[int, float]] = {}
        self._spec_hashes: dict[str, str] = {}
        """Each user's current spec hash; settings and image are fixed for a supervisor."""
        self._start_failures: dict[str, str] = {}
        """By user: why their agent last failed to start, until it starts."""
        self._status = StatusWriter(client, runtime, settings, clock)
        self._controls = Controls(client, bus, runtime, mesh, self._fleet, self._stop)

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
        if inbound.user_id not in self._fleet.running:
            self._fleet.kick.set()

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
        workspace = await self._runtime.workspace(user_id, limits.workspace_mb)
        spec = _spec.container_spec(
            self._runtime.deployment, user_id, self._image, limits, mesh_dir, workspace
        )
        self._spec_hashes[user_id] = spec["labels"][_spec.LABEL_SPEC]
        return spec

    async def _start(self, user_id: str) -> AgentContainer:
        started = await self._runtime.start(user_id, await self._spec_of(user_id))
        self._fleet.paused_out.discard(user_id)
        log.info("started the agent of %s", user_id)
        return started

    async def _start_or_wait(self, user_id: str) -> AgentContainer | None:
        """`_start`, or None when this user's agent cannot start now (its workspace, its
        container refused): logged, and its messages wait, while the pass goes on to
        the other users. An engine or a Redis that does not answer still ends the pass."""
        try:
            started = await self._start(user_id)
        except (DockerUnavailable, RedisUnavailable):
            raise
        except DependencyError as exc:
            # Each pass tries again: the same reason is logged once, not every second.
            if self._start_failures.get(user_id) != str(exc):
                log.warning("the agent of %s cannot start; its messages wait: %s", user_id, exc)
            self._start_failures[user_id] = str(exc)
            return None
        if self._start_failures.pop(user_id, None) is not None:
            log.info("the agent of %s starts again", user_id)
        return started

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
        # `start` replaces the old container; the workspace and the door stay.
        await self._start_or_wait(user_id)

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
            self._fleet.paused_out.discard(user_id)
        self._restarts.pop(user_id, None)

    async def _paused_users(self) -> frozenset[str] | None:
        """The paused users; None while everyone is paused. The router writes these keys."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.smembers(PAUSED_KEY)
            pipe.exists(PAUSED_ALL_KEY)
            members, everyone = await pipe.execute()
        if everyone:
            return None
        return frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def reconcile(self) -> None:
        """Bring the containers in line with what is wanted; one pass."""
        async with self._fleet.lock:
            await self._reconcile()
        await self._status.write()

    async def _reconcile(self) -> None:
        now = self._clock()
        wanted = await self._wanted()
        paused = await self._paused_users()
        present = {c.user_id: c for c in await self._runtime.agents()}
        after = dict(present)  # the containers as this pass leaves them, for the status

        for user_id, container in present.items():
            if user_id not in wanted:
                log.info("removing the unwanted agent container of %s", user_id or "?")
                if user_id:
                    await self._stop(user_id, forget=False)
                after.pop(user_id, None)
                continue
            if paused is None or user_id in paused:
                log.info("stopping the paused agent of %s", user_id)
                await self._stop(user_id, forget=False)
                self._fleet.paused_out.add(user_id)
                after.pop(user_id, None)
                continue
            if container.running:
                idle = now - wanted[user_id] > self._settings.idle_stop_s
                if idle and not await self._has_work(user_id):
                    log.info("stopping the idle agent of %s", user_id)
                    await self._stop(user_id, forget=True)
                    after.pop(user_id, None)
                    wanted.pop(user_id, None)
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
                await notify_crash(self._client, self._bus, container)
                # The message it was working on goes to the new container at once (not
                # after the bus's reclaim delay); its model calls are not made again.
                await self._mesh.requeue_open(user_id)
                after[user_id] = await self._start_or_wait(user_id) or container

        up = {u for u, c in after.items() if c.running}
        running = len(up)
        waiting = sorted(
            (t, u)
            for u, t in wanted.items()
            if u not in present and (paused is not None and u not in paused)
        )
        for _, user_id in waiting:
            if running >= self._settings.max_running:
                break
            started = await self._start_or_wait(user_id)
            if started is None:
                continue
            after[user_id] = started
            up.add(user_id)
            running += 1
        self._fleet.running = frozenset(u for u in up if self._mesh.is_open(u))
        self._status.seen(list(after.values()), frozenset(wanted), paused)

    async def sample(self) -> None:
        """Measure every running container the last pass saw, then write the status."""
        await self._status.sample()

    async def apply(self, control: Control, age_s: float = 0.0) -> _control.Outcome:
        """Carry out one control on this host; what it did."""
        return await self._controls.apply(control, age_s)

    async def _reconcile_forever(self) -> None:
        while True:
            raise_if_cancelling()
            # Cleared before the pass: a wake arriving during it triggers the next one.
            self._fleet.kick.clear()
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
                    await self._fleet.kick.wait()

    async def run(self, consumer: str) -> None:
        """Supervise until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(
                self._bus.consume(
                    WAKE_STREAM, WAKE_GROUP, consumer, self.handle_wake, lane=by_sender
                )
            )
            tasks.create_task(self._reconcile_forever())
            tasks.create_task(self._controls.consume(consumer))
            tasks.create_task(self._status.sample_forever())
