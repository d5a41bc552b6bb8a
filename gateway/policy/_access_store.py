"""The operators' lists in Redis: allowed, denied and paused users, pairing codes, the loop guard.

stockade:access:allowed                 set of internal user ids let in (/allow, pairing)
stockade:access:denied                  set of internal user ids kept out (/deny)
stockade:access:paused(-all)            see gateway.controls
stockade:access:paused-notice:<user>    SET NX: the user was told their agent is paused
stockade:pairing                        hash code -> JSON `Pending`
stockade:loop:<conv hash>:<minute>      INCR: messages of a conversation in one clock minute
                                        (the guard weighs the one before: a sliding minute)
stockade:loop:paused:<conv hash>        SET EX: the loop guard paused this conversation
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.controls import EVERYONE, PAUSED_ALL_KEY, PAUSED_KEY
from gateway.envelope import Inbound
from gateway.errors import RedisUnavailable
from gateway.policy.access import Standing, new_code
from gateway.policy.identity import IDENTITY_KEY, identity_field
from gateway.settings import AccessSettings

ALLOWED_KEY: Final = "stockade:access:allowed"
DENIED_KEY: Final = "stockade:access:denied"
PAIRING_KEY: Final = "stockade:pairing"
_NOTICE_PREFIX: Final = "stockade:access:paused-notice:"
_LOOP_PREFIX: Final = "stockade:loop:"
_NOTICE_TTL_S: Final = 3_600

_UNAVAILABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError)

# One round trip per message: identity, the lists, the pause flags and the loop guard.
_STANDING = """
local uid = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local allowed, denied, paused = 0, 0, 0
if uid ~= '' then
  allowed = redis.call('SISMEMBER', KEYS[2], uid)
  denied = redis.call('SISMEMBER', KEYS[3], uid)
  paused = redis.call('SISMEMBER', KEYS[4], uid)
end
paused = paused + redis.call('EXISTS', KEYS[5])
local count = redis.call('INCR', KEYS[6])
if count == 1 then redis.call('EXPIRE', KEYS[6], 120) end
-- A sliding minute: the previous minute's count, weighted by how much of it still
-- lies within the last 60 s, plus this minute's.
local before = tonumber(redis.call('GET', KEYS[8]) or '0')
count = count + math.floor(before * (1 - tonumber(ARGV[2])))
local held = redis.call('EXISTS', KEYS[7])
return {uid, allowed, denied, paused, count, held}
"""

# Pairing: prune expired codes, give a sender their pending code again, else a new one
# unless the channel already has its maximum waiting.
_REQUEST = """
local now = tonumber(ARGV[1])
local mine, waiting = nil, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local entry = cjson.decode(all[i + 1])
  if tonumber(entry.expires) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif entry.channel == ARGV[2] then
    if entry.sender_id == ARGV[3] then mine = all[i] end
    waiting = waiting + 1
  end
end
if mine then return {'again', mine} end
if waiting >= tonumber(ARGV[4]) then return {'full', ''} end
if redis.call('HSETNX', KEYS[1], ARGV[5], ARGV[6]) == 0 then return {'clash', ''} end
return {'new', ARGV[5]}
"""

# Approval or refusal takes a code exactly once, even with two admins at once.
_TAKE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
return raw
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """A pairing request waiting for an admin."""

    code: str
    channel: str
    sender_id: str
    sender_name: str
    conversation_id: str
    thread_id: str
    expires: float


@dataclass(frozen=True, slots=True)
class Offer:
    """The answer to a pairing request: a code (new or again), or none when the channel is full."""

    code: str
    new: bool


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def conversation_key(channel: str, conversation_id: str) -> str:
    """A short fixed-size key part for a conversation; ids can be long and hold anything."""
    digest = hashlib.sha256(f"{channel}\0{conversation_id}".encode()).hexdigest()[:24]
    return digest


class AccessStore:
    """Reads and changes the operators' lists; every call is one or two Redis round trips."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: AccessSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._settings = settings
        self._clock = clock
        self._standing = client.register_script(_STANDING)
        self._request = client.register_script(_REQUEST)
        self._take = client.register_script(_TAKE)

    async def standing(self, inbound: Inbound) -> Standing:
        conv = conversation_key(inbound.channel, inbound.conversation_id)
        now = self._clock()
        minute = int(now // 60)
        keys = [
            IDENTITY_KEY,
            ALLOWED_KEY,
            DENIED_KEY,
            PAUSED_KEY,
            PAUSED_ALL_KEY,
            f"{_LOOP_PREFIX}{conv}:{minute}",
            f"{_LOOP_PREFIX}paused:{conv}",
            f"{_LOOP_PREFIX}{conv}:{minute - 1}",
        ]
        elapsed = repr((now % 60) / 60)
        try:
            reply = await self._standing(
                keys=keys, args=[identity_field(inbound.channel, inbound.sender_id), elapsed]
            )
        except _UNAVAILABLE as exc:
            raise RedisUnavailable(f"access lookup failed: {type(exc).__name__}") from None
        uid, allowed, denied, paused, count, held = reply
        return Standing(
            user_id=_text(uid),
            allowed=bool(allowed),
            denied=bool(denied),
            paused=bool(paused),
            conversation_count=int(count),
            conversation_paused=bool(held),
        )

    @staticmethod
    async def _call(what: str, pending: Awaitable[Any]) -> Any:
        try:
            return await pending
        except _UNAVAILABLE as exc:
            raise RedisUnavailable(f"{what} failed: {type(exc).__name__}") from None

    async def allow(self, user_id: str) -> bool:
        """Let `user_id` in (and off the denied list); False when they already were."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.srem(DENIED_KEY, user_id)
            pipe.sadd(ALLOWED_KEY, user_id)
            _, added = await self._call("allow", pipe.execute())
        return bool(added)

    async def deny(self, user_id: str) -> bool:
        """Keep `user_id` out (and off the allowed list); False when they already were."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.srem(ALLOWED_KEY, user_id)
            pipe.sadd(DENIED_KEY, user_id)
            _, added = await self._call("deny", pipe.execute())
        return bool(added)

    async def pause(self, user: str) -> bool:
        """Pause one user's agent, or everyone's; False when it already was."""
        if user == EVERYONE:
            return bool(await self._call("pause", self._client.set(PAUSED_ALL_KEY, "1", nx=True)))
        return bool(await self._call("pause", self._client.sadd(PAUSED_KEY, user)))

    async def resume(self, user: str) -> bool:
        """Undo `pause`; resuming everyone also clears each user's own pause."""
        async with self._client.pipeline(transaction=True) as pipe:
            if user == EVERYONE:
                pipe.delete(PAUSED_ALL_KEY, PAUSED_KEY)
            else:
                pipe.srem(PAUSED_KEY, user)
                pipe.delete(_NOTICE_PREFIX + user)
            removed = await self._call("resume", pipe.execute())
        return bool(removed[0])

    async def paused_users(self) -> tuple[bool, list[str]]:
        """Whether everyone is paused, and who is paused alone."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.exists(PAUSED_ALL_KEY)
            pipe.smembers(PAUSED_KEY)
            everyone, alone = await self._call("pause listing", pipe.execute())
        return bool(everyone), sorted(_text(u) for u in alone)

    async def first_paused_notice(self, user_id: str) -> bool:
        """True once per pause (and hour): the user hears their agent is paused only once."""
        return bool(
            await self._call(
                "pause notice",
                self._client.set(_NOTICE_PREFIX + user_id, "1", ex=_NOTICE_TTL_S, nx=True),
            )
        )

    async def hold_conversation(self, channel: str, conversation_id: str) -> bool:
        """Pause a conversation for the loop guard's time; True when newly paused."""
        key = f"{_LOOP_PREFIX}paused:{conversation_key(channel, conversation_id)}"
        return bool(
            await self._call(
                "loop guard",
                self._client.set(key, "1", ex=self._settings.loop_guard.pause_s, nx=True),
            )
        )

    # -- pairing ---------------------------------------------------------------------------

    async def request_pairing(self, inbound: Inbound) -> Offer | None:
        """A code for an unknown sender: theirs again if pending, a new one if there is
        room on the channel, else None."""
        now = self._clock()
        for _ in range(3):
            code = new_code()
            pending = Pending(
                code=code,
                channel=inbound.channel,
                sender_id=inbound.sender_id,
                sender_name=inbound.sender_name,
                conversation_id=inbound.conversation_id,
                thread_id=inbound.thread_id,
                expires=now + self._settings.pairing_ttl_s,
            )
            args: list[str | int] = [
                repr(now),
                inbound.channel,
                inbound.sender_id,
                self._settings.max_pending_pairings,
                code,
                json.dumps(asdict(pending), ensure_ascii=False),
            ]
            try:
                status, found = await self._request(keys=[PAIRING_KEY], args=args)
            except _UNAVAILABLE as exc:
                raise RedisUnavailable(f"pairing failed: {type(exc).__name__}") from None
            except ResponseError as exc:
                # A corrupt entry (not JSON) would block every pairing: say so loudly.
                raise RedisUnavailable(f"pairing state is unreadable: {exc}") from None
            status = _text(status)
            if status == "full":
                return None
            if status != "clash":
                return Offer(code=_text(found), new=status == "new")
        return None

    async def take_pairing(self, code: str) -> Pending | None:
        """Remove and return the pending request under `code`, if it exists and is current."""
        raw = await self._call("pairing", self._take(keys=[PAIRING_KEY], args=[code]))
        if raw is None:
            return None
        pending = _pending(raw)
        if pending is None or pending.expires <= self._clock():
            return None
        return pending

    async def pairings(self) -> list[Pending]:
        """Every current pairing request, oldest first."""
        raw = await self._call("pairing listing", self._client.hvals(PAIRING_KEY))
        now = self._clock()
        found = [p for p in map(_pending, raw) if p is not None and p.expires > now]
        return sorted(found, key=lambda p: p.expires)


def _pending(raw: bytes | str) -> Pending | None:
    try:
        data = json.loads(raw)
        return Pending(**{**data, "expires": float(data["expires"])})
    except (TypeError, ValueError, KeyError):
        return None
