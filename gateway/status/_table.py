"""`stockade status`: the status page as fixed-width tables for a terminal. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from gateway.policy.budget import WindowUse, format_usd
from gateway.roles import ROLES
from gateway.status._gather import FleetStatus
from gateway.supervisor import AgentStatus

_STATES: Final = ("running", "exited", "paused", "waiting")
_GAP: Final = "  "
_NONE: Final = "-"


def columns(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: int = 0) -> list[str]:
    """Lines of a table whose columns are as wide as their widest cell.

    The first column is left-aligned; the last `numeric` columns are right-aligned.
    Trailing spaces are cut.
    """
    width = [len(cell) for cell in header]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells, the header {len(header)}")
        width = [max(w, len(cell)) for w, cell in zip(width, row, strict=True)]
    first_right = len(header) - numeric
    lines = []
    for row in (header, *rows):
        cells = [
            cell.rjust(w) if i >= first_right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, width, strict=True))
        ]
        lines.append(_GAP.join(cells).rstrip())
    return lines


def mib(value: int | None) -> str:
    return _NONE if value is None else f"{value / 1_048_576:.0f} MiB"


def uptime(started_at: float | None, now: float) -> str:
    """ "3 d 04 h", "1 h 02 min", "5 min", or "-" when the start is unknown."""
    if started_at is None:
        return _NONE
    minutes = max(0, int(now - started_at)) // 60
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours:02d} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min"


def _memory(agent: AgentStatus) -> str:
    memory = mib(agent.memory_bytes)
    if agent.memory_limit_bytes:
        memory += f" / {mib(agent.memory_limit_bytes)}"
    return memory


def _roles(status: FleetStatus) -> list[str]:
    known = [*ROLES, *sorted(set(status.roles_up) | set(status.roles_down) - set(ROLES))]
    rows = []
    for role in dict.fromkeys(known):
        up = status.roles_up.get(role, 0)
        silent = status.roles_down.get(role, 0)
        rows.append((role, "up" if up else "DOWN", str(up), str(silent)))
    return columns(("ROLE", "STATE", "UP", "SILENT"), rows, numeric=2)


def _streams(status: FleetStatus) -> list[str]:
    rows = [
        (lag.stream, str(lag.waiting), str(lag.pending), str(lag.dead)) for lag in status.streams
    ]
    return columns(("STREAM", "WAITING", "PENDING", "DEAD LETTERS"), rows, numeric=3)


def _agents(status: FleetStatus) -> list[str]:
    counts = {state: 0 for state in _STATES}
    for agent in status.agents:
        counts[agent.state] = counts.get(agent.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    lines = [f"Agents: {summary}."]
    if status.paused_everyone:
        lines.append("Every agent is paused.")
    elif status.paused:
        lines.append(f"Paused users: {', '.join(status.paused)}.")
    if not status.agents:
        return lines
    spent = dict(status.spent_today)
    rows = [
        (
            agent.user_id,
            agent.state,
            _memory(agent),
            uptime(agent.started_at, status.as_of),
            format_usd(spent.get(agent.user_id, 0)),
        )
        for agent in status.agents
    ]
    lines += columns(("USER", "STATE", "MEMORY", "UPTIME", "TODAY"), rows, numeric=2)
    return lines


def _spend_row(label: str, window: WindowUse) -> tuple[str, str, str, str]:
    cap = window.cap_nano
    left = window.remaining_nano
    return (
        label,
        format_usd(window.used_nano),
        _NONE if cap is None else format_usd(cap),
        _NONE if left is None else format_usd(left),
    )


def _spend(status: FleetStatus) -> list[str]:
    rows = [_spend_row("today", status.today), _spend_row("this month", status.month)]
    return columns(("SPEND (ALL USERS)", "USED", "CAP", "LEFT"), rows, numeric=3)


def render_table(status: FleetStatus) -> str:
    """The whole status page: roles, streams, agents, spend; blank lines between."""
    sections = (_roles(status), _streams(status), _agents(status), _spend(status))
    return "\n\n".join("\n".join(lines) for lines in sections)
