"""The bus's Lua scripts, each one atomic step on the Redis server, and its raw command call.

Every script starts with the `#!lua` shebang (Redis 7), so Redis refuses a writing
script up front when it is out of memory instead of failing it half-way; with the
WRONGTYPE checks the scripts make before their first write, a script either runs
to its end or changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError

# At most this many original fields are copied into a dead letter: envelopes have
# about fifteen, and Lua's unpack() fails beyond a few thousand values.
DEAD_LETTER_MAX_FIELDS: Final = 256


async def command(client: aioredis.Redis, *args: str | int | bytes, raw: bool = False) -> Any:
    """Send one command; `raw` keeps the reply in bytes whatever the client decodes."""
    options: dict[str, Any] = {NEVER_DECODE: True} if raw else {}
    return await client.execute_command(*args, **options)  # type: ignore[no-untyped-call]


class Script:
    """A Lua script run by EVALSHA, loaded again when the server has forgotten it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self,
        client: aioredis.Redis,
        keys: Sequence[str],
        args: Sequence[str | int | bytes],
        *,
        raw: bool = False,
    ) -> Any:
        """Run the script; `raw` returns bytes whatever the client's decode setting."""
        try:
            return await command(client, "EVALSHA", self.sha, len(keys), *keys, *args, raw=raw)
        except NoScriptError:
            # A restarted or flushed server has an empty script cache.
            await command(client, "SCRIPT", "LOAD", self.source)
            return await command(client, "EVALSHA", self.sha, len(keys), *keys, *args, raw=raw)


# Stream fields travel as one JSON array argument (decoded by the server's cjson):
# redis-py packs each command argument in Python, and an envelope has about thirty.

# Any number of publishes at once, each on its own: a duplicate or a wrong-type key
# affects only its own publish.
# KEYS: for each publish its stream, then its dedupe marker if it has one.
# ARGV: maxlen, dedupe ttl seconds, then for each publish: 1 if it has a marker
# (else 0), and its fields as JSON.
# Returns for each publish its new entry id, 0 for a duplicate, or -1 when its
# stream key holds another type (nothing is written for it).
PUBLISH: Final = Script("""#!lua
local results = {}
local k = 1
for a = 3, #ARGV, 2 do
  local stream = KEYS[k]
  local marker = false
  if ARGV[a] == '1' then
    marker = KEYS[k + 1]
    k = k + 2
  else
    k = k + 1
  end
  local kind = redis.call('TYPE', stream)['ok']
  if kind ~= 'stream' and kind ~= 'none' then
    results[#results + 1] = -1
  elseif marker and not redis.call('SET', marker, '1', 'NX', 'EX', ARGV[2]) then
    results[#results + 1] = 0
  else
    results[#results + 1] = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*',
                                       unpack(cjson.decode(ARGV[a + 1])))
  end
end
return results
""")

# KEYS: source stream, failure key, target stream, ...
# ARGV: group, entry id, maxlen, then each target's fields as JSON.
# Writes nothing and returns false when the entry is no longer pending in the group;
# otherwise adds one entry to each target, acks the source entry and returns the new ids.
FORWARD: Final = Script("""#!lua
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then
  return false
end
for t = 3, #KEYS do
  local kind = redis.call('TYPE', KEYS[t])['ok']
  if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[t] .. ' is not a stream')
  end
end
local ids = {}
for t = 3, #KEYS do
  ids[#ids + 1] = redis.call('XADD', KEYS[t], 'MAXLEN', '~', ARGV[3], '*',
                             unpack(cjson.decode(ARGV[t + 1])))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[2])
return ids
""")

# KEYS: source stream, dead-letter stream, failure key.
# ARGV: group, entry id, maxlen, reason ('' = the recorded failure reason).
# Copies the entry (byte for byte, original field names prefixed "f:") with the
# reason to the dead-letter stream and acks it. Writes nothing and returns false
# when the entry is no longer pending, so an entry is dead-lettered at most once.
DEAD_LETTER: Final = Script(f"""#!lua
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  return false
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' is not a stream')
end
local deliveries = pending[1][4]
local reason = ARGV[4]
if reason == '' then
  reason = redis.call('GET', KEYS[3]) or
    ('delivered ' .. deliveries .. ' times without an ack')
end
local fields = {{'stream', KEYS[1], 'group', ARGV[1], 'entry_id', ARGV[2],
                'reason', reason, 'deliveries', deliveries}}
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #entry == 1 then
  local original = entry[1][2]
  local n = math.min(#original, {2 * DEAD_LETTER_MAX_FIELDS})
  for i = 1, n - 1, 2 do
    fields[#fields + 1] = 'f:' .. original[i]
    fields[#fields + 1] = original[i + 1]
  end
else
  fields[#fields + 1] = 'missing'
  fields[#fields + 1] = '1'
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[3])
return id
""")

# KEYS: stream. ARGV: group, consumer, min idle ms, start id, count.
# XAUTOCLAIM plus each claimed entry's delivery count, in one round trip:
# {next start id, {{id, {field, value, ...}}, ...}, {count, ...}, {deleted id, ...}}
CLAIM: Final = Script("""#!lua
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                           'COUNT', ARGV[5])
local counts = {}
for i, entry in ipairs(claimed[2]) do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1, ARGV[2])
  counts[i] = pending[1] and pending[1][4] or 1
end
return {claimed[1], claimed[2], counts, claimed[3] or {}}
""")

# KEYS: stream. ARGV: exclusive start id, cap.
# How many entries follow a group's last delivered id, counted up to the cap;
# used only when XINFO GROUPS cannot compute the lag itself.
COUNT_AFTER: Final = Script("""#!lua flags=no-writes
return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
""")
