"""What the operator's controls mean for one agent's requests: paused, and its default model.

The router writes them (`gateway.controls`); the mesh reads them on every model
call, in one round trip (`read_steering`), and decides with the pure functions
here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from gateway.controls import MODEL_KEY, PAUSED_ALL_KEY, PAUSED_KEY
from gateway.errors import RedisUnavailable
from gateway.mesh._protocol import Rejected

STOPPED_TEXT: Final = "Stopped."
"""What the user reads when their turn is stopped: the turn's one final reply."""


@dataclass(frozen=True, slots=True)
class Steering:
    """The operator's controls over one user's agent, as read for one request."""

    paused: bool
    chosen: str | None
    """The model alias the user chose with /model; None: the configured default."""


def paused() -> Rejected:
    return Rejected(403, "paused", "the operator has paused this assistant")


def stopped() -> Rejected:
    """A model call made for a turn that was stopped: the agent should take the next message."""
    return Rejected(409, "stopped", "this turn was stopped; take the next message")


def controls_unavailable() -> Rejected:
    return Rejected(
        503,
        "controls_unavailable",
        "the operator's settings cannot be read right now, so no model call is made; "
        "try again soon",
    )


def default_first(caps: Mapping[str, int], chosen: str | None) -> dict[str, int] | None:
    """`caps` (alias -> max_tokens cap) with `chosen` first, the default of a request that
    names no model; `caps` as they are without a choice; None when `chosen` is not among
    them (the choice went stale: the user may no longer use that model)."""
    if chosen is None:
        return dict(caps)
    if chosen not in caps:
        return None
    return {chosen: caps[chosen], **{a: cap for a, cap in caps.items() if a != chosen}}


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# One command rather than a pipeline of three: redis-py's pipeline costs about twice a
# single command's time in Python, and this runs before every model call.
_READ: Final = """#!lua flags=no-writes
return {redis.call('SISMEMBER', KEYS[1], ARGV[1]), redis.call('EXISTS', KEYS[2]),
        redis.call('HGET', KEYS[3], ARGV[1])}
"""
_READ_SHA: Final = hashlib.sha1(_READ.encode(), usedforsecurity=False).hexdigest()
_READ_KEYS: Final = (PAUSED_KEY, PAUSED_ALL_KEY, MODEL_KEY)


async def read_steering(client: aioredis.Redis, user_id: str) -> Steering:
    """`user_id`'s pause state and model choice, in one round trip; RedisUnavailable when
    Redis cannot tell (the caller refuses: an unknown pause state is not "running")."""
    try:
        try:
            reply = await client.evalsha(_READ_SHA, len(_READ_KEYS), *_READ_KEYS, user_id)
        except NoScriptError:  # a restarted or flushed server forgot it; EVAL caches it again
            reply = await client.eval(_READ, len(_READ_KEYS), *_READ_KEYS, user_id)
        alone, everyone, chosen = reply
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(f"controls unknown: {type(exc).__name__}") from None
    return Steering(bool(alone) or bool(everyone), _text(chosen))
