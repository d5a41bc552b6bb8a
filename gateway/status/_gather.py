"""The figures of the operators' status page, read from Redis alone.

The router, `stockade status` and the metrics endpoint all read the same keys: the
roles' heartbeats, the streams' consumer groups and dead letters, the supervisors'
status hash, the paused users and the budget windows. None of them reaches Docker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gateway.bus import IN_STREAM, WAKE_STREAM, dead_letter_stream, out_stream
from gateway.errors import RedisUnavailable
from gateway.heartbeat import count_alive, read_beats
from gateway.policy import AccessStore, BudgetGate
from gateway.policy.budget import Period, Scope, WindowUse
from gateway.supervisor import STATUS_KEY, AgentStatus, parse_status


@dataclass(frozen=True, slots=True)
class StreamLag:
    stream: str
    waiting: int
    """Entries not yet finished by every group reading the stream (never read plus pending)."""
    pending: int
    """Of `waiting`, entries delivered to a consumer and not yet acknowledged."""
    dead: int
    """Entries in its dead-letter stream."""


@dataclass(frozen=True, slots=True)
class FleetStatus:
    roles_up: dict[str, int]
    roles_down: dict[str, int]
    streams: tuple[StreamLag, ...]
    agents: tuple[AgentStatus, ...]
    paused_everyone: bool
    paused: tuple[str, ...]
    today: WindowUse
    """All users' spend today, with the shared cap."""
    month: WindowUse
    """All users' spend this month, with the shared cap."""
    spent_today: tuple[tuple[str, int], ...]
    """Each agent's user and their spend today (nano-dollars), in the order of `agents`."""
    as_of: float
    """When the figures were read (epoch seconds)."""


@dataclass(frozen=True, slots=True)
class StatusSources:
    """Where the figures are read: one deployment's Redis and the stores over it."""

    client: aioredis.Redis
    access: AccessStore
    budget: BudgetGate
    channels: tuple[str, ...]
    """Enabled channels, for the lag of their reply streams."""
    clock: Callable[[], float] = time.time


def stream_names(channels: Sequence[str]) -> tuple[str, ...]:
    """The streams whose lag the status page shows: inbound, wake-ups, each channel's replies."""
    return (IN_STREAM, WAKE_STREAM, *(out_stream(c) for c in channels))


def group_lag(groups: Sequence[dict[str, object]]) -> tuple[int, int]:
    """(waiting, pending) of a stream from its XINFO GROUPS rows, summed over the groups.

    A group's lag is missing when Redis cannot tell it (entries deleted or trimmed
    mid-stream); it counts as nothing rather than as a guess.
    """
    waiting = pending = 0
    for info in groups:
        lag = _whole(info.get("lag"))
        held = _whole(info.get("pending"))
        waiting += lag + held
        pending += held
    return waiting, pending


def _whole(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, bytes | str):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


async def _lag(client: aioredis.Redis, stream: str) -> StreamLag:
    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError:
        groups = []  # no stream yet
    waiting, pending = group_lag(groups)
    dead = int(await client.xlen(dead_letter_stream(stream)))
    return StreamLag(stream, waiting, pending, dead)


async def _read(sources: StatusSources) -> FleetStatus:
    client = sources.client
    beats = await read_beats(client, sources.clock)
    now = sources.clock()
    up, down = count_alive(beats, now)
    streams = [await _lag(client, name) for name in stream_names(sources.channels)]
    agents = parse_status(await client.hgetall(STATUS_KEY))
    everyone, paused = await sources.access.paused_users()
    # Any user's report carries the totals; none of that user's figures are shown.
    usage = await sources.budget.usage("status")
    spent = []
    for agent in agents:
        own = await sources.budget.usage(agent.user_id)
        spent.append((agent.user_id, own.window(Scope.USER, Period.DAY).used_nano))
    return FleetStatus(
        roles_up=up,
        roles_down=down,
        streams=tuple(streams),
        agents=tuple(agents),
        paused_everyone=everyone,
        paused=tuple(paused),
        today=usage.window(Scope.TOTAL, Period.DAY),
        month=usage.window(Scope.TOTAL, Period.MONTH),
        spent_today=tuple(spent),
        as_of=now,
    )


async def gather(sources: StatusSources) -> FleetStatus:
    """Every figure of the status page, read now.

    Raises RedisUnavailable when Redis does not answer, BudgetUnavailable when the
    budget windows cannot be read.
    """
    try:
        return await _read(sources)
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(f"Redis did not answer: {type(exc).__name__}") from None
