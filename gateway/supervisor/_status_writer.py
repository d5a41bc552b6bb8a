"""Writes the supervisor's view of its agents to Redis for the router, with their memory in use.

The status is what the last reconcile pass saw, joined with the last memory figures;
each write also renews the key saying this supervisor is alive (see `_status`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

import redis.asyncio as aioredis

from gateway._aio import raise_if_cancelling
from gateway.errors import StockadeError
from gateway.settings import SupervisorSettings
from gateway.supervisor import _status
from gateway.supervisor._runtime import AgentContainer, ContainerUsage, Runtime

_SAMPLE_EVERY_S: Final = 30.0
"""Memory is measured this often at most. Read from the kernel's cgroup files a sample
is cheap; where they are out of sight, each container costs an engine stats call: tens
of ms of CPU in the engine, an answer at its next one-second collection tick, and a
parse in a thread that takes the interpreter lock from the event loop."""

log = logging.getLogger("stockade.supervisor")


class StatusWriter:
    """One supervisor's status writes: what its last pass saw, and the memory it measured."""

    def __init__(
        self,
        client: aioredis.Redis,
        runtime: Runtime,
        settings: SupervisorSettings,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._runtime = runtime
        self._settings = settings
        self._clock = clock
        self._containers: list[AgentContainer] = []
        self._wanted_users: frozenset[str] = frozenset()
        self._paused: frozenset[str] | None = frozenset()
        """What the last pass saw, for the status; None in `_paused`: everyone is paused."""
        self._usage: dict[str, ContainerUsage] = {}
        """The last measurement of each running container, by container id."""

    def seen(
        self,
        containers: list[AgentContainer],
        wanted_users: frozenset[str],
        paused: frozenset[str] | None,
    ) -> None:
        """Keep what a pass saw, for the writes after it."""
        self._containers = containers
        self._wanted_users = wanted_users
        self._paused = paused

    async def write(self) -> None:
        """Write what the last pass saw, with the last memory figures, and say we are alive."""
        host = await self._runtime.engine_id()
        now = self._clock()
        current = _status.statuses(
            self._containers, self._wanted_users, self._paused, self._usage, host, now
        )
        existing = await self._client.hgetall(_status.STATUS_KEY)
        stale = _status.stale_fields(existing, host, (s.user_id for s in current))
        async with self._client.pipeline(transaction=True) as pipe:
            if current:
                pipe.hset(_status.STATUS_KEY, mapping={s.user_id: s.to_json() for s in current})
            if stale:
                pipe.hdel(_status.STATUS_KEY, *stale)
            pipe.set(
                _status.alive_key(host),
                repr(now),
                ex=_status.alive_ttl_s(self._settings.check_interval_s),
            )
            await pipe.execute()

    async def sample(self) -> None:
        """Measure every running container the last pass saw, then write the status."""
        running = [c.container_id for c in self._containers if c.running]
        measured = await asyncio.gather(*(self._runtime.usage(c) for c in running))
        self._usage = {c: m for c, m in zip(running, measured, strict=True) if m is not None}
        await self.write()

    async def sample_forever(self) -> None:
        while True:
            raise_if_cancelling()
            started = time.monotonic()
            try:
                await self.sample()
            except StockadeError as exc:
                log.warning("measuring the agents failed: %s", exc)
            except Exception as exc:  # noqa: BLE001 - task boundary: the next round tries again
                log.warning("measuring the agents failed: %s", type(exc).__name__)
            took = time.monotonic() - started
            await asyncio.sleep(max(0.0, _SAMPLE_EVERY_S - took))
