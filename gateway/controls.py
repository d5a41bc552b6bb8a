"""Operator controls shared by the roles: the Redis keys they read and the control stream.

The router writes them when an admin runs a command; the mesh, the budget gate
and the supervisor read them, so a decision takes effect on every host.

stockade:access:paused           set of internal user ids whose agents are paused
stockade:access:paused-all       "1" while every agent is paused
stockade:model                   hash user id -> model alias chosen by /model
stockade:budget:caps             hash user id -> JSON {"daily_usd": x|null, "monthly_usd": y|null}
stockade:control                 stream of `Control` requests for the supervisors
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Final, Literal, cast, get_args

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from gateway.errors import EnvelopeError, RedisUnavailable

PAUSED_KEY: Final = "stockade:access:paused"
PAUSED_ALL_KEY: Final = "stockade:access:paused-all"
MODEL_KEY: Final = "stockade:model"
CAPS_KEY: Final = "stockade:budget:caps"
CONTROL_STREAM: Final = "stockade:control"
CONTROL_MAXLEN: Final = 10_000

EVERYONE: Final = "*"
"""The `user` of a control that concerns every agent (/pause all, /resume all)."""

Action = Literal["kill", "reset", "stop", "pause", "resume"]
ACTIONS: Final = frozenset(get_args(Action))


@dataclass(frozen=True, slots=True)
class Control:
    """One operator request for the supervisors, with where to report its outcome.

    kill    stop the user's container now (it starts again on the next message)
    reset   stop it and delete the user's workspace (memory and files)
    stop    end the user's current turn; the container keeps running
    pause   stop the container and start none for that user (or everyone) until resumed
    resume  let paused agents run again; their waiting messages are answered
    """

    action: Action
    user: str
    """An internal user id, or EVERYONE for pause and resume."""
    by: str
    """The internal user id of whoever asked (an admin, or the user for /stop and /reset)."""
    request_id: str
    notify_channel: str = ""
    notify_conversation: str = ""
    notify_thread: str = ""
    """Where the outcome is reported; empty channel: nowhere."""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise EnvelopeError(f"unknown control action {self.action!r}")
        if not self.user or (self.user == EVERYONE and self.action not in ("pause", "resume")):
            raise EnvelopeError(f"control {self.action} needs one user")

    def fields(self) -> dict[FieldT, EncodableT]:
        return {"control": json.dumps(asdict(self), separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> Control:
        try:
            data = json.loads(fields[b"control"])
            if not isinstance(data, dict):
                raise TypeError("not an object")
            action = str(data.pop("action"))
            if action not in ACTIONS:
                raise ValueError("unknown action")
            return cls(action=cast(Action, action), **{str(k): str(v) for k, v in data.items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise EnvelopeError(f"malformed control entry: {type(exc).__name__}") from None


def new_request_id() -> str:
    return "c" + secrets.token_hex(8)


async def send_control(client: aioredis.Redis, control: Control) -> str:
    """Append `control` to the control stream; its stream id."""
    try:
        entry = await client.xadd(
            CONTROL_STREAM, control.fields(), maxlen=CONTROL_MAXLEN, approximate=True
        )
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise RedisUnavailable(f"control not sent: {type(exc).__name__}") from None
    return entry.decode() if isinstance(entry, bytes) else str(entry)


async def is_paused(client: aioredis.Redis, user_id: str) -> bool:
    """Whether `user_id`'s agent is paused, alone or with everyone."""
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.sismember(PAUSED_KEY, user_id)
            pipe.exists(PAUSED_ALL_KEY)
            alone, everyone = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(f"pause state unknown: {type(exc).__name__}") from None
    return bool(alone) or bool(everyone)
