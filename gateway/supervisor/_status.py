"""What the supervisors tell operators about the agents, kept in Redis for the router to read.

The router answers /agents and /status from these keys alone: it cannot reach Docker.

stockade:agents:status              hash user id -> compact JSON of an `AgentStatus`
                                    (every supervisor writes the users on its engine)
stockade:supervisor:alive:<engine>  epoch seconds of that supervisor's last pass; expires
                                    when it stops passing
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args

from gateway.supervisor._runtime import AgentContainer, ContainerUsage

STATUS_KEY: Final = "stockade:agents:status"
ALIVE_PREFIX: Final = "stockade:supervisor:alive:"

AgentState = Literal["running", "exited", "paused", "waiting"]

RawHash = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]
"""The status hash as HGETALL returns it: bytes, or text on a decode_responses client."""
_STATES: Final = frozenset(get_args(AgentState))


def alive_key(engine_id: str) -> str:
    """The key saying the supervisor of `engine_id` is passing."""
    if not engine_id:
        raise ValueError("an alive key needs an engine id")
    return f"{ALIVE_PREFIX}{engine_id}"


def alive_ttl_s(check_interval_s: float) -> int:
    """How long one pass vouches for its supervisor: a few intervals, never under 15 s,
    since a pass that starts several containers takes seconds."""
    return max(15, math.ceil(5 * check_interval_s))


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """One user's agent as its supervisor last saw it."""

    user_id: str
    state: AgentState
    """running; exited (crashed, restart pending); paused; waiting (wanted, no slot yet)."""
    container: str
    """The first 12 characters of the container id; empty without a container."""
    started_at: float | None
    memory_bytes: int | None
    memory_limit_bytes: int | None
    host: str
    """The engine id of the supervisor that wrote it."""
    updated: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "state": self.state,
                "container": self.container,
                "started_at": self.started_at,
                "memory_bytes": self.memory_bytes,
                "memory_limit_bytes": self.memory_limit_bytes,
                "host": self.host,
                "updated": self.updated,
            },
            separators=(",", ":"),
        )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _key(raw: bytes | str) -> str | None:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _status(user_id: str, raw: bytes | str) -> AgentStatus | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("state") not in _STATES:
        return None
    updated = _number(data.get("updated"))
    return AgentStatus(
        user_id=user_id,
        state=data["state"],
        container=str(data.get("container") or ""),
        started_at=_number(data.get("started_at")),
        memory_bytes=_count(data.get("memory_bytes")),
        memory_limit_bytes=_count(data.get("memory_limit_bytes")),
        host=str(data.get("host") or ""),
        updated=0.0 if updated is None else updated,
    )


def parse_status(raw: RawHash) -> list[AgentStatus]:
    """The statuses in the status hash (as HGETALL returns it), by user id; bad fields skipped."""
    found: list[AgentStatus] = []
    for key, value in raw.items():
        user_id = _key(key)
        if user_id is None:
            continue
        status = _status(user_id, value)
        if status is not None:
            found.append(status)
    return sorted(found, key=lambda s: s.user_id)


def statuses(
    containers: Iterable[AgentContainer],
    wanted: Iterable[str],
    paused: frozenset[str] | None,
    usage: Mapping[str, ContainerUsage],
    host: str,
    now: float,
) -> list[AgentStatus]:
    """The status of every agent container and every wanted user without one.

    `paused` holds the paused users, or is None while everyone is paused; `usage` is
    the last measurement by container id.
    """
    out: dict[str, AgentStatus] = {}

    def is_paused(user_id: str) -> bool:
        return paused is None or user_id in paused

    for container in containers:
        if not container.user_id:
            continue
        measured = usage.get(container.container_id) if container.running else None
        state: AgentState = "running" if container.running else "exited"
        out[container.user_id] = AgentStatus(
            user_id=container.user_id,
            state="paused" if is_paused(container.user_id) else state,
            container=container.container_id[:12],
            started_at=None if measured is None else measured.started_at,
            memory_bytes=None if measured is None else measured.memory_bytes,
            memory_limit_bytes=None if measured is None else measured.memory_limit_bytes,
            host=host,
            updated=now,
        )
    for user_id in wanted:
        if user_id not in out:
            out[user_id] = AgentStatus(
                user_id=user_id,
                state="paused" if is_paused(user_id) else "waiting",
                container="",
                started_at=None,
                memory_bytes=None,
                memory_limit_bytes=None,
                host=host,
                updated=now,
            )
    return sorted(out.values(), key=lambda s: s.user_id)


def stale_fields(raw: RawHash, host: str, current: Iterable[str]) -> list[bytes | str]:
    """Fields of the status hash written by `host` for users it no longer reports.

    Fields of other hosts are theirs to remove; fields nobody can read are removed by all.
    """
    keep = set(current)
    stale: list[bytes | str] = []
    for key, value in raw.items():
        user_id = _key(key)
        if user_id is not None and user_id in keep:
            continue
        status = None if user_id is None else _status(user_id, value)
        if status is None or status.host == host:
            stale.append(key)
    return stale
