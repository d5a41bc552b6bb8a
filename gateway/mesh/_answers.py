"""The model answers of each agent's current turn, kept in Redis until its next turn.

A turn handed out again after its container and the mesh both restarted (a redelivery
from the bus) repeats its model calls; the ones already answered are answered from
here, so nothing runs or is paid for twice. One hash per user holds one turn's answers.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import RedisUnavailable

ANSWERS_PREFIX: Final = "stockade:answers:"
TTL_S: Final = 3_600
"""A turn unanswered for an hour is not replayed from here any more."""
_TURN_FIELD: Final = "\0turn"
"""The entry id of the turn the hash holds; no call key starts with a NUL."""

_RECORD: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

log = logging.getLogger("stockade.mesh")


class TurnAnswers:
    """One user's recorded answers. A lost Redis loses only the record: calls go on."""

    def __init__(self, redis: aioredis.Redis, user_id: str) -> None:
        self._redis = redis
        self._key = ANSWERS_PREFIX + user_id
        self._record = redis.register_script(_RECORD)

    async def recall(self, turn: str, call_key: str) -> dict[str, Any] | None:
        """The answer recorded for `call_key` in `turn`, if that turn is the one held."""
        try:
            held, raw = await self._redis.hmget(self._key, [_TURN_FIELD, call_key])
        except (RedisUnavailable, RedisError, OSError) as exc:
            log.warning("recorded answers unavailable: %s", type(exc).__name__)
            return None
        if raw is None or _text(held) != turn:
            return None
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            log.warning("a recorded answer of %s did not decode; calling again", self._key)
            return None
        return answer if isinstance(answer, dict) else None

    async def record(self, turn: str, call_key: str, answer: dict[str, Any]) -> None:
        """Keep `answer`; the first record of a new turn drops the last turn's."""
        try:
            await self._record(
                keys=[self._key],
                args=[_TURN_FIELD, turn, call_key, json.dumps(answer), TTL_S],
            )
        except (RedisUnavailable, RedisError, OSError) as exc:
            log.warning("an answer was not recorded: %s", type(exc).__name__)


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else value if isinstance(value, str) else None
