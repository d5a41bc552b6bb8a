"""/status and /agents: the operators' view of the fleet, read from Redis alone.

`gather` collects the figures (roles up, bus lag, dead letters, agents, spend today);
`render_status` and `render_agents` are pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import ResponseError

from gateway.bus import IN_STREAM, WAKE_STREAM, dead_letter_stream, out_stream
from gateway.commands._fleet import Fleet
from gateway.commands._registry import Command, CommandContext
from gateway.errors import CommandError
from gateway.heartbeat import count_alive, read_beats
from gateway.policy.budget import Period, Scope, WindowUse, format_usd
from gateway.roles import ROLES
from gateway.supervisor import STATUS_KEY, AgentStatus, parse_status


@dataclass(frozen=True, slots=True)
class StreamLag:
    stream: str
    waiting: int
    """Entries not yet finished by every group reading the stream (never read plus pending)."""
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


async def _waiting(fleet: Fleet, stream: str) -> int:
    try:
        groups = await fleet.client.xinfo_groups(stream)
    except ResponseError:
        return 0  # no stream yet
    total = 0
    for info in groups:
        lag = info.get("lag")
        total += (int(lag) if lag is not None else 0) + int(info.get("pending") or 0)
    return total


async def gather(fleet: Fleet) -> FleetStatus:
    beats = await read_beats(fleet.client, fleet.clock)
    up, down = count_alive(beats, fleet.clock())
    names = (IN_STREAM, WAKE_STREAM, *(out_stream(c) for c in fleet.channels))
    streams = []
    for name in names:
        dead = await fleet.client.xlen(dead_letter_stream(name))
        streams.append(StreamLag(name, await _waiting(fleet, name), int(dead)))
    agents = parse_status(await fleet.client.hgetall(STATUS_KEY))
    everyone, paused = await fleet.access.paused_users()
    # Any user's report carries the totals; none of that user's figures are shown.
    usage = await fleet.budget.usage("status")
    return FleetStatus(
        roles_up=up,
        roles_down=down,
        streams=tuple(streams),
        agents=tuple(agents),
        paused_everyone=everyone,
        paused=tuple(paused),
        today=usage.window(Scope.TOTAL, Period.DAY),
    )


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / 1_048_576:.0f} MiB"


def render_status(status: FleetStatus) -> str:
    roles = []
    for role in ROLES:
        count = status.roles_up.get(role, 0)
        quiet = status.roles_down.get(role, 0)
        roles.append(f"{role} {count} up" + (f", {quiet} silent" if quiet else ""))
    lines = ["Roles: " + "; ".join(roles) + "."]
    lines.append("Queues (waiting / dead letters):")
    for lag in status.streams:
        lines.append(f"  {lag.stream}: {lag.waiting} / {lag.dead}")
    running = sum(1 for a in status.agents if a.state == "running")
    lines.append(f"Agents: {running} running of {len(status.agents)} known.")
    if status.paused_everyone:
        lines.append("Every agent is paused.")
    elif status.paused:
        lines.append(f"Paused: {', '.join(status.paused)}.")
    today = status.today
    cap = f" of {format_usd(today.cap_nano)}" if today.cap_nano is not None else ""
    lines.append(f"Spend today: {format_usd(today.used_nano)}{cap}.")
    return "\n".join(lines)


def render_agents(agents: Sequence[tuple[AgentStatus, int]], now: float) -> str:
    """One line per agent: id, state, memory, age, spend today (nano-dollars)."""
    if not agents:
        return "No agent has a container."
    lines = []
    for agent, spent in agents:
        age = ""
        if agent.started_at is not None:
            minutes = max(0, int(now - agent.started_at) // 60)
            age = f", up {minutes // 60} h {minutes % 60} min"
        memory = _mib(agent.memory_bytes)
        if agent.memory_limit_bytes:
            memory += f" of {_mib(agent.memory_limit_bytes)}"
        lines.append(f"{agent.user_id}: {agent.state}, {memory}{age}, today {format_usd(spent)}")
    return "\n".join(lines)


def status_command(fleet: Fleet) -> Command:
    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        if args:
            raise CommandError("/status takes no arguments.", "status")
        return render_status(await gather(fleet))

    return Command(
        "status", "gateway health, queues, agents, spend", "status", run, admin_only=True
    )


def agents_command(fleet: Fleet) -> Command:
    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        if args:
            raise CommandError("/agents takes no arguments.", "agents")
        agents = parse_status(await fleet.client.hgetall(STATUS_KEY))
        rows = []
        for agent in agents:
            usage = await fleet.budget.usage(agent.user_id)
            rows.append((agent, usage.window(Scope.USER, Period.DAY).used_nano))
        return render_agents(rows, fleet.clock())

    return Command(
        "agents", "who has a container: state, memory, spend", "agents", run, admin_only=True
    )
