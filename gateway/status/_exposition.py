"""`/metrics`: the status page's figures in the Prometheus text format, version 0.0.4. Pure.

Every family is a gauge: each figure is read afresh from Redis, none only grows.
Labels carry role, stream and state names and internal user ids (u0123…), never a
platform id, a name, a secret or message content.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.policy.budget import NANO_PER_USD, WindowUse
from gateway.roles import ROLES
from gateway.status._gather import FleetStatus

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_STATES: Final = ("running", "exited", "paused", "waiting")


@dataclass(frozen=True, slots=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    help: str
    samples: tuple[Sample, ...]


def escape_label(value: str) -> str:
    """A label value as the format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text: backslash and newline escaped (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    """A sample value: integers without a point, NaN and infinities as the format spells them."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render_families(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} gauge")
        for sample in family.samples:
            labels = ",".join(f'{k}="{escape_label(v)}"' for k, v in sample.labels)
            name = f"{family.name}{{{labels}}}" if labels else family.name
            lines.append(f"{name} {number(sample.value)}")
    return "\n".join(lines) + "\n"


def _by(label: str, pairs: Iterable[tuple[str, float]]) -> tuple[Sample, ...]:
    return tuple(Sample(((label, key),), value) for key, value in pairs)


def _usd(nano: int) -> float:
    return nano / NANO_PER_USD


def _windows(windows: Sequence[tuple[str, WindowUse]]) -> tuple[Family, Family]:
    spend = _by("window", ((name, _usd(w.used_nano)) for name, w in windows))
    caps = _by(
        "window", ((name, _usd(w.cap_nano)) for name, w in windows if w.cap_nano is not None)
    )
    return (
        Family(
            "stockade_spend_usd",
            "Spent and reserved by all users in the window, in US dollars.",
            spend,
        ),
        Family("stockade_cap_usd", "The shared cap of the window, in US dollars.", caps),
    )


def families(status: FleetStatus) -> list[Family]:
    """Every family of the status page, in a fixed order."""
    roles = list(dict.fromkeys([*ROLES, *sorted(status.roles_up), *sorted(status.roles_down)]))
    states = {state: 0 for state in _STATES}
    for agent in status.agents:
        states[agent.state] = states.get(agent.state, 0) + 1
    memory = [(a.user_id, a.memory_bytes) for a in status.agents if a.memory_bytes is not None]
    limits = [
        (a.user_id, a.memory_limit_bytes) for a in status.agents if a.memory_limit_bytes is not None
    ]
    started = [
        (a.user_id, max(0.0, status.as_of - a.started_at))
        for a in status.agents
        if a.started_at is not None
    ]
    spend = _windows((("day", status.today), ("month", status.month)))
    return [
        Family(
            "stockade_role_up",
            "Processes of the role that beat recently.",
            _by("role", ((r, status.roles_up.get(r, 0)) for r in roles)),
        ),
        Family(
            "stockade_role_silent",
            "Processes of the role that stopped beating within the last hour.",
            _by("role", ((r, status.roles_down.get(r, 0)) for r in roles)),
        ),
        Family(
            "stockade_stream_waiting",
            "Entries of the stream not yet finished by its consumer groups (pending included).",
            _by("stream", ((s.stream, s.waiting) for s in status.streams)),
        ),
        Family(
            "stockade_stream_pending",
            "Entries of the stream delivered to a consumer and not yet acknowledged.",
            _by("stream", ((s.stream, s.pending) for s in status.streams)),
        ),
        Family(
            "stockade_stream_dead_letters",
            "Entries in the dead-letter stream of the stream.",
            _by("stream", ((s.stream, s.dead) for s in status.streams)),
        ),
        Family(
            "stockade_agents",
            "Agents by state, as the supervisors last reported them.",
            _by("state", states.items()),
        ),
        Family(
            "stockade_paused_agents",
            "Users whose agents are paused one by one (see stockade_paused_all).",
            (Sample((), len(status.paused)),),
        ),
        Family(
            "stockade_paused_all",
            "1 while every agent is paused.",
            (Sample((), 1 if status.paused_everyone else 0),),
        ),
        Family(
            "stockade_agent_memory_bytes",
            "Memory the agent's container uses.",
            _by("user", memory),
        ),
        Family(
            "stockade_agent_memory_limit_bytes",
            "Memory limit of the agent's container.",
            _by("user", limits),
        ),
        Family(
            "stockade_agent_uptime_seconds",
            "Seconds since the agent's container started.",
            _by("user", started),
        ),
        Family(
            "stockade_agent_spend_today_usd",
            "Spent and reserved by the agent's user today, in US dollars.",
            _by("user", ((user, _usd(nano)) for user, nano in status.spent_today)),
        ),
        *spend,
    ]


def render_metrics(status: FleetStatus) -> str:
    """The exposition text of `status`, ending with a newline."""
    return render_families(families(status))
