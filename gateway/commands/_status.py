"""/status and /agents: the operators' view of the fleet, read from Redis alone.

`gateway.status.gather` collects the figures (roles up, bus lag, dead letters, agents,
spend); `render_status` and `render_agents` are pure.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.commands._fleet import Fleet
from gateway.commands._registry import Command, CommandContext
from gateway.errors import CommandError
from gateway.policy.budget import Period, Scope, format_usd
from gateway.roles import ROLES
from gateway.status import FleetStatus, StatusSources, gather
from gateway.supervisor import STATUS_KEY, AgentStatus, parse_status


def sources(fleet: Fleet) -> StatusSources:
    return StatusSources(fleet.client, fleet.access, fleet.budget, fleet.channels, fleet.clock)


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
        return render_status(await gather(sources(fleet)))

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
