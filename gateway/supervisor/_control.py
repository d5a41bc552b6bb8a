"""Operator controls on the supervisor's side: reading the control stream, and what to report.

Every supervisor must see every control (a deployment may run one per Docker host),
so each engine reads the stream in a consumer group of its own, `control:<engine id>`.
The stream carries `gateway.controls.Control` entries, not envelopes, so the bus's
envelope decoding does not apply: `ControlFeed` reads it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.controls import CONTROL_STREAM, EVERYONE, Control

LOOKBACK_S: Final = 600
"""How far back a new consumer group starts. A group lives in Redis, so a supervisor
that restarts goes on after the last control it read and misses nothing. The first
supervisor of an engine must not replay the stream's whole history (a reset weeks
old would delete a workspace in use again), yet should act on controls sent while it
was being set up: it starts this far back, not at "$" and not at "0"."""

STOP_STALE_S: Final = 60.0
"""A stop this old is not executed: the turn it meant to end is long over, and ending
the user's current turn instead would be wrong. Kill, reset and pause stay due."""

CLAIM_IDLE_MS: Final = 30_000
"""A control pending this long in another consumer of the group (a supervisor of this
engine that died mid-way) is taken over."""


def control_group(engine_id: str) -> str:
    """The consumer group of the supervisors of one Docker engine."""
    if not engine_id:
        raise ValueError("a control group needs an engine id")
    return f"control:{engine_id}"


def group_start(now_ms: int) -> str:
    """The stream id a new control group starts after (see LOOKBACK_S)."""
    return f"{max(0, now_ms - LOOKBACK_S * 1000)}-0"


def entry_age_s(entry_id: str, now_ms: int) -> float:
    """Seconds since a stream entry was added, from the time in its id (0 if unreadable)."""
    try:
        added_ms = int(entry_id.split("-", 1)[0])
    except ValueError:
        return 0.0
    return max(0.0, (now_ms - added_ms) / 1000)


def still_due(control: Control, age_s: float) -> bool:
    """Whether a control this old is still carried out."""
    return control.action != "stop" or age_s <= STOP_STALE_S


@dataclass(frozen=True, slots=True)
class Outcome:
    """What carrying out a control did on this host."""

    removed: int = 0
    """Agent containers removed (kill, reset, pause)."""
    turn_ended: bool = False
    """A turn was in flight and was ended (kill, reset, stop)."""
    too_late: bool = False
    """The control was too old to carry out (see `still_due`)."""


def _agents(count: int) -> str:
    return "1 agent" if count == 1 else f"{count} agents"


def notice(control: Control, outcome: Outcome) -> str:
    """The sentence reporting a control's outcome to whoever asked for it; empty when the
    outcome speaks for itself (the stopped turn itself answered "Stopped.")."""
    user = control.user
    own = control.by == user
    if outcome.too_late:
        return "The request to stop came too late; nothing was stopped."
    if control.action == "kill":
        if not outcome.removed:
            return f"{user} has no agent running."
        return f"Stopped the agent of {user}; it starts again on their next message."
    if control.action == "reset":
        if own:
            return "Your assistant's memory and files are deleted."
        return (
            f"Deleted the memory and files of {user}'s agent; "
            "it starts afresh on their next message."
        )
    if control.action == "stop":
        if own:
            return "" if outcome.turn_ended else "Nothing is running to stop."
        if outcome.turn_ended:
            return f"Stopped the current turn of {user}; their agent keeps running."
        return f"{user} has no turn in progress."
    if control.action == "pause":
        if user == EVERYONE:
            if not outcome.removed:
                return "Paused all agents; none was running."
            return f"Paused {_agents(outcome.removed)}."
        return f"Paused the agent of {user}; it starts again when resumed."
    if user == EVERYONE:
        return "Resumed all agents; their waiting messages are answered now."
    return f"Resumed the agent of {user}; their waiting messages are answered now."


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


Entry = tuple[str, dict[bytes, bytes] | None]
"""A control stream entry: its id and fields (None when trimmed before it was read)."""


def _entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply for one stream (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    out: list[Entry] = []
    for entries in streams:
        for entry_id, fields in entries:
            out.append((_text(entry_id), fields or None))
    return out


class ControlFeed:
    """The control stream as one supervisor's consumer reads it: pending first, then new.

    Entries stay pending until `ack`; after `retry` the consumer's own pending ones
    are read again, and entries left by a dead consumer of the group are taken over.
    """

    def __init__(self, client: aioredis.Redis, group: str, consumer: str) -> None:
        self._client = client
        self._group = group
        self._consumer = consumer
        self._own_done = False
        self._claim_cursor = "0-0"

    @property
    def group(self) -> str:
        return self._group

    async def now_ms(self) -> int:
        """Redis's clock, the one stream ids are made from."""
        seconds, micros = await self._client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def ensure_group(self) -> None:
        start = group_start(await self.now_ms())
        try:
            await self._client.xgroup_create(CONTROL_STREAM, self._group, start, mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    def retry(self) -> None:
        """Read this consumer's pending entries again on the next `read`."""
        self._own_done = False

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        if not self._own_done:
            own = _entries(
                await self._client.xreadgroup(
                    self._group, self._consumer, {CONTROL_STREAM: "0"}, count=count
                )
            )
            if own:
                return own
            self._own_done = True
        claimed = await self._client.xautoclaim(
            CONTROL_STREAM,
            self._group,
            self._consumer,
            CLAIM_IDLE_MS,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = _text(claimed[0])
        taken = [(_text(i), fields or None) for i, fields in claimed[1] if i is not None]
        if taken:
            return taken
        return _entries(
            await self._client.xreadgroup(
                self._group, self._consumer, {CONTROL_STREAM: ">"}, count=count, block=block_ms
            )
        )

    async def ack(self, entry_id: str) -> None:
        await self._client.xack(CONTROL_STREAM, self._group, entry_id)
