"""The budget gate: reserve before a model call, settle after it, in Redis, with a ledger.

Keys (all under stockade:budget:; amounts are nano-dollars):

    w:user:<day|month>:<key>:<user>   hash {used, held}: one user's window
    w:total:<day|month>:<key>         hash {used, held}: every user's window together
    r:<reservation id>                hash: one outstanding reservation
    expiry                            sorted set: reservation id → expires_at
    done:<reservation id>             "settled" or "expired": makes finishing idempotent
    models:<month>:<user>             hash: model → billed this month
    warned:<scope>:<period>:<key>:<user>  SET NX flag: the user was warned for that window
    applied:<month>                   how many ledger records of the month Redis holds
    rebuild                           lock held while the counters are rebuilt from the ledger

A user's caps come from the settings unless the operator set others at runtime
(`gateway.controls.CAPS_KEY`, written by `set_caps`). The gate remembers the override
it last saw for each user and the reserve script checks that memory against the hash
in the same atomic step: a changed override sends the script's reply back with the
new value, and the call is checked again under it. So a reserve costs one round trip
while the override stays as it is, and is never checked against caps that are gone.

`used` is spent + outstanding, the one number a reservation is checked against;
`held` is the outstanding part alone. A reservation adds its amount to both in all
four windows; finishing it moves `used` by (billed - reserved) and takes the
reservation out of `held`. Window hashes expire two days after their window.

A reservation id is "<day>:<random>:<user id>": settling needs only the id to find
the windows the call was counted in (those of the day it was reserved).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import redis.asyncio as aioredis
from redis.client import NEVER_DECODE
from redis.exceptions import (
    MaxConnectionsError,
    NoScriptError,
    RedisError,
    ResponseError,
    WatchError,
)

from gateway._aio import raise_if_cancelling
from gateway.controls import CAPS_KEY
from gateway.errors import BudgetExceeded, BudgetUnavailable, ConfigError
from gateway.policy._ledger import Entry, Ledger, Replay, applied_count, replay
from gateway.policy.budget import (
    MAX_PROMPT_TOKENS,
    WINDOW_ORDER,
    Period,
    Scope,
    TokenPrice,
    Usage,
    Windows,
    WindowUse,
    bounded_max_tokens,
    caps_from_json,
    caps_to_json,
    exceeded_sentence,
    input_cost_nano,
    output_cost_nano,
    usd_to_nano,
    warn_threshold,
    window_caps,
    windows_at,
    windows_of_day,
)
from gateway.settings import BudgetSettings, Caps, Price

log = logging.getLogger("stockade.budget")

PREFIX: Final = "stockade:budget:"
EXPIRY_KEY: Final = PREFIX + "expiry"
REBUILD_KEY: Final = PREFIX + "rebuild"

WINDOW_MARGIN_S: Final = 2 * 86_400
"""Window counters outlive their window by this much, so that a reservation still
running at midnight (at most `reservation_ttl_s`, at most a day) settles into a live
counter."""
REAP_BATCH: Final = 100
REBUILD_LOCK_MS: Final = 60_000
REBUILD_GRACE_S: Final = 0.2
"""After taking the rebuild lock: a reserve script refused by the lock writes its
denial to the ledger just after; waiting lets the rebuild read it."""
RECOVER_RECHECK_S: Final = 1.0
"""A reserve record is appended just before its script runs: a marker behind the
ledger is checked again after this long before it counts as lost state."""
SETTLE_RETRIES: Final = 30
SETTLE_RETRY_S: Final = 0.1
STALE_RETRIES: Final = 3
"""Reserve attempts when the caps override changes under the script each time."""
MAX_REMEMBERED_OVERRIDES: Final = 10_000
"""Users whose last-seen caps override the gate keeps; past this it starts afresh."""

_ID: Final = re.compile(r"(\d{4}-\d{2}-\d{2}):([0-9a-f]{16}):(.+)", re.DOTALL)


# -- keys ----------------------------------------------------------------------------------


def window_key(scope: Scope, period: Period, key: str, user_id: str) -> str:
    if scope is Scope.TOTAL:
        return f"{PREFIX}w:total:{period}:{key}"
    return f"{PREFIX}w:user:{period}:{key}:{user_id}"


def reservation_key(reservation_id: str) -> str:
    return f"{PREFIX}r:{reservation_id}"


def done_key(reservation_id: str) -> str:
    return f"{PREFIX}done:{reservation_id}"


def models_key(user_id: str, month: str) -> str:
    return f"{PREFIX}models:{month}:{user_id}"


def warned_key(scope: Scope, period: Period, key: str, user_id: str) -> str:
    return f"{PREFIX}warned:{scope}:{period}:{key}:{user_id}"


def applied_key(month: str) -> str:
    return f"{PREFIX}applied:{month}"


def _window_keys(windows: Windows, user_id: str) -> list[str]:
    return [window_key(s, p, windows.key(p), user_id) for s, p in WINDOW_ORDER]


def new_reservation_id(day: str, user_id: str) -> str:
    return f"{day}:{secrets.token_hex(8)}:{user_id}"


def parse_reservation_id(reservation_id: str) -> tuple[str, str]:
    """(day, user id) of a reservation id; ValueError when it is not one."""
    match = _ID.fullmatch(reservation_id)
    if match is None:
        raise ValueError(f"not a reservation id: {reservation_id!r}")
    return match[1], match[3]


# -- scripts -------------------------------------------------------------------------------


class _Script:
    """A Lua script run by EVALSHA (loaded again when the server forgot it); replies in bytes."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self, client: aioredis.Redis, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Any:
        options = {NEVER_DECODE: True}
        call = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await client.execute_command(*call, **options)  # type: ignore[no-untyped-call]
        except NoScriptError:
            # A restarted or flushed server has an empty script cache.
            await client.execute_command("SCRIPT", "LOAD", self.source)  # type: ignore[no-untyped-call]
            return await client.execute_command(*call, **options)  # type: ignore[no-untyped-call]


# Both scripts start with the `#!lua` shebang, so a server out of memory refuses them
# up front; they read (or check the type of) every key they write before their first
# write, so each either runs to its end or changes nothing. Counters get their TTL when
# they are created, not on every call.

# The check-and-reserve step, for one call, in all four windows at once.
# KEYS: 4 windows (WINDOW_ORDER), reservation, expiry set, applied marker, rebuild lock,
#       the caps overrides hash.
# ARGV: one JSON array (redis-py packs each argument in Python: one is cheaper than 20):
#       4 caps (-1: none), 4 window ttls, prompt nano, max tokens, output pico per token,
#       output nano of max tokens, output nano of one token, expires_at, marker ttl,
#       id, user, model, day, month, the override the caps were worked out from (false:
#       none).
# Returns {'ok', max tokens, reserved}, {'denied', i, used, held, ...} for each window
# that cannot pay the prompt and one token, {'stale', override or nil} when the
# override is not the one the caps came from, or {'unavailable', reason}.
RESERVE: Final = _Script("""#!lua
if redis.call('EXISTS', KEYS[8]) == 1 then
  return {'unavailable', 'rebuilding'}
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {'unavailable', 'duplicate id'}
end
local a = cjson.decode(ARGV[1])
local override = redis.call('HGET', KEYS[9], a[17])
if override ~= a[21] then
  return {'stale', override}
end
-- Reads first: a key of the wrong type fails the script before anything is written.
redis.call('ZSCORE', KEYS[6], a[16])
local kind = redis.call('TYPE', KEYS[7])['ok']
if kind ~= 'string' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[7] .. ' is not a string')
end
local prompt = a[9]
local need = prompt + a[13]
local tightest = false
local denied = {}
local fresh = {}
for i = 1, 4 do
  local counters = redis.call('HMGET', KEYS[i], 'used', 'held')
  fresh[i] = not counters[1]
  local cap = a[i]
  if cap >= 0 then
    local used = tonumber(counters[1] or '0')
    local left = cap - used
    if left <= 0 or left < need then
      denied[#denied + 1] = i
      denied[#denied + 1] = used
      denied[#denied + 1] = tonumber(counters[2] or '0')
    elseif not tightest or left < tightest then
      tightest = left
    end
  end
end
if #denied > 0 then
  return {'denied', unpack(denied)}
end
-- The clamp rule (budget.affordable_max_tokens) in exact integers: every product
-- stays below 2^53 (the caller bounds the output cost), fmod is exact on doubles.
local max_tokens = a[10]
local output = a[12]
if tightest and tightest - prompt < output then
  local pico = a[11]
  local budget = (tightest - prompt) * 1000
  max_tokens = (budget - math.fmod(budget, pico)) / pico
  local cost = max_tokens * pico
  local cut = math.fmod(cost, 1000)
  output = (cost - cut) / 1000
  if cut > 0 then
    output = output + 1
  end
end
local amount = prompt + output
for i = 1, 4 do
  redis.call('HINCRBY', KEYS[i], 'used', amount)
  redis.call('HINCRBY', KEYS[i], 'held', amount)
  if fresh[i] then
    redis.call('EXPIRE', KEYS[i], a[4 + i])
  end
end
redis.call('HSET', KEYS[5], 'reserved', amount, 'max_tokens', max_tokens,
           'expires_at', a[14], 'user', a[17], 'model', a[18],
           'day', a[19], 'month', a[20])
redis.call('ZADD', KEYS[6], a[14], a[16])
if redis.call('INCR', KEYS[7]) == 1 then
  redis.call('EXPIRE', KEYS[7], a[15])
end
return {'ok', max_tokens, amount}
""")

# Finishing reservations: settling at a cost, or expiring (billed at the reserved amount).
# KEYS: expiry set, rebuild lock, then for each reservation 12: reservation, done marker,
#       4 windows, models hash, applied marker, 4 warned flags.
# ARGV: one JSON array: mode ('settle' or 'expire'), now, done ttl, and an array with,
#       for each reservation, an array of 12: id, cost, 4 window ttls, models ttl,
#       4 warn thresholds (-1: none), marker ttl.
# Returns {'unavailable'} or, for each: {status, reserved, billed, model, crossed mask,
# spent x4, held x4}; status is settled, expired, done:settled, done:expired, unknown,
# or pending (not expired yet).
FINISH: Final = _Script("""#!lua
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'unavailable'}
end
local args = cjson.decode(ARGV[1])
local mode, now, done_ttl = args[1], args[2], args[3]
-- Reads first: a key of the wrong type fails the script before anything is written
-- (SET replaces any type, so the done marker and warned flags need no check).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is not a zset')
end
-- Counters are read once, before any write: the spent and held figures returned are
-- exact for a settlement (always one reservation), approximate within a reaped batch.
local reads = {}
for i = 0, #args[4] - 1 do
  local k = 2 + i * 12
  local read = {res = redis.call('HMGET', KEYS[k + 1], 'reserved', 'model'), used = {},
                held = {}}
  if read.res[1] then
    for w = 1, 4 do
      local counters = redis.call('HMGET', KEYS[k + 2 + w], 'used', 'held')
      read.used[w] = counters[1] and tonumber(counters[1])
      read.held[w] = tonumber(counters[2] or '0')
    end
    local models = redis.call('TYPE', KEYS[k + 7])['ok']
    local marker = redis.call('TYPE', KEYS[k + 8])['ok']
    if models ~= 'hash' and models ~= 'none' then
      return redis.error_reply('WRONGTYPE ' .. KEYS[k + 7] .. ' is not a hash')
    elseif marker ~= 'string' and marker ~= 'none' then
      return redis.error_reply('WRONGTYPE ' .. KEYS[k + 8] .. ' is not a string')
    end
    read.new_models = models == 'none'
  end
  reads[i + 1] = read
end
local results = {}
for i = 0, #args[4] - 1 do
  local k = 2 + i * 12
  local a = args[4][i + 1]
  local id = a[1]
  local res = reads[i + 1].res
  local score = mode == 'expire' and redis.call('ZSCORE', KEYS[1], id)
  if not res[1] then
    if mode == 'expire' then
      redis.call('ZREM', KEYS[1], id)
    end
    local done = redis.call('GET', KEYS[k + 2])
    results[#results + 1] = {done and ('done:' .. done) or 'unknown', 0, 0, ''}
  elseif mode == 'expire' and score and tonumber(score) > now then
    results[#results + 1] = {'pending', tonumber(res[1]), 0, res[2]}
  else
    local reserved = tonumber(res[1])
    local billed = reserved
    local status = 'expired'
    if mode == 'settle' then
      billed = a[2]
      status = 'settled'
    end
    local spent, held = {}, {}
    for w = 1, 4 do
      local key = KEYS[k + 2 + w]
      local used = (reads[i + 1].used[w] or 0) + billed - reserved
      held[w] = reads[i + 1].held[w] - reserved
      spent[w] = used - held[w]
      if billed ~= reserved then
        redis.call('HINCRBY', key, 'used', billed - reserved)
      end
      redis.call('HINCRBY', key, 'held', -reserved)
      if not reads[i + 1].used[w] then
        redis.call('EXPIRE', key, a[2 + w])  -- gone meanwhile: do not leave it forever
      end
    end
    redis.call('HINCRBY', KEYS[k + 7], res[2], billed)
    if reads[i + 1].new_models then
      redis.call('EXPIRE', KEYS[k + 7], a[7])
    end
    redis.call('DEL', KEYS[k + 1])
    redis.call('ZREM', KEYS[1], id)
    redis.call('SET', KEYS[k + 2], status, 'EX', done_ttl)
    if redis.call('INCR', KEYS[k + 8]) == 1 then
      redis.call('EXPIRE', KEYS[k + 8], a[12])
    end
    local crossed = 0
    if mode == 'settle' then
      for w = 1, 4 do
        local threshold = a[7 + w]
        if threshold >= 0 and spent[w] >= threshold and
           redis.call('SET', KEYS[k + 8 + w], '1', 'NX', 'EX', a[2 + w]) then
          crossed = crossed + 2 ^ (w - 1)
        end
      end
    end
    results[#results + 1] = {status, reserved, billed, res[2], crossed,
                             spent[1], spent[2], spent[3], spent[4],
                             held[1], held[2], held[3], held[4]}
  end
end
return results
""")

# KEYS: rebuild lock. ARGV: token. Deletes the lock only if it is still ours.
RELEASE: Final = _Script("""#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""")


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money set aside for one call; `max_tokens` is what the call may produce, clamped."""

    id: str
    user_id: str
    model: str
    max_tokens: int
    reserved_nano: int
    day: str
    month: str
    expires_at: float


class Outcome(StrEnum):
    SETTLED = "settled"
    ALREADY_SETTLED = "already settled"
    ALREADY_EXPIRED = "already expired"
    """The reservation expired first and was billed at its reserved amount."""
    UNKNOWN = "unknown"
    """No such reservation: never made, or lost with Redis state (the ledger bills it)."""


@dataclass(frozen=True, slots=True)
class Settlement:
    reservation_id: str
    outcome: Outcome
    billed_nano: int
    reserved_nano: int
    crossed: tuple[WindowUse, ...]
    """Windows whose spend passed `warn_at` of their cap with this settlement, each
    reported once per user and window: tell the user (`budget.render_warning`)."""


_DONE: Final = {
    b"settled": Outcome.SETTLED,
    b"done:settled": Outcome.ALREADY_SETTLED,
    b"done:expired": Outcome.ALREADY_EXPIRED,
    b"unknown": Outcome.UNKNOWN,
}


def _ttl(until: float, now: float) -> int:
    return max(3_600, math.ceil(until - now) + WINDOW_MARGIN_S)


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the gate ------------------------------------------------------------------------------


class BudgetGate:
    """Checks and reserves before each model call, settles after; one atomic script each.

    `clock` gives epoch seconds (injected by tests); windows and expiries follow it,
    not the Redis server's clock. Every reserve, denial, settlement and expiry is
    also appended to `ledger`, from which `rebuild` restores Redis's counters.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: BudgetSettings,
        ledger: Ledger,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._settings = settings
        self._ledger = ledger
        self._clock = clock
        self._tz = settings.timezone
        # Reservations whose script may or may not have run (the connection broke or
        # the caller was cancelled): nobody will call with them, so they are settled
        # at 0 (or recorded as denied) once Redis answers.
        self._unresolved: dict[str, Entry] = {}
        # Settings are frozen: limits and windows are worked out once, not on every call.
        self._default_limits = _limits(settings, "budget.user", settings.user)
        self._limits = {
            user: _limits(settings, f"budget.overrides.{user}", caps)
            for user, caps in settings.overrides.items()
        }
        # user -> (the runtime override last seen in Redis, the limits it gives);
        # no entry: none seen, the settings' limits.
        self._overrides: dict[str, tuple[str | None, _Limits]] = {}
        self._malformed: dict[str, bytes] = {}
        self._today: Windows | None = None
        self._days: dict[str, Windows] = {}

    @property
    def client(self) -> aioredis.Redis:
        """The Redis the budget lives on; the operator's other controls live there too."""
        return self._client

    def _configured(self, user_id: str) -> _Limits:
        return self._limits.get(user_id, self._default_limits)

    def _limits_of(self, user_id: str) -> _Limits:
        seen = self._overrides.get(user_id)
        return self._configured(user_id) if seen is None else seen[1]

    def _assumed(self, user_id: str) -> str | None:
        seen = self._overrides.get(user_id)
        return None if seen is None else seen[0]

    def _caps_of(self, user_id: str) -> tuple[int | None, ...]:
        return self._limits_of(user_id)[0]

    def _thresholds_of(self, user_id: str) -> tuple[int | None, ...]:
        return self._limits_of(user_id)[1]

    def _adopt(self, user_id: str, raw: Any) -> _Limits:
        """Remember the override Redis holds for `user_id` (None: none); its limits.

        BudgetUnavailable when it is malformed: the user's budget is then unknown.
        """
        if raw is None:
            override, limits = None, self._configured(user_id)
        else:
            try:
                override = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
                limits = _limits_from(caps_from_json(override), self._settings)
            except ValueError as exc:
                shown = raw if isinstance(raw, bytes) else str(raw).encode()
                if self._malformed.get(user_id) != shown:
                    self._malformed[user_id] = shown
                    log.error(
                        "the caps override of %s is malformed (%s): their calls are refused "
                        "until an operator sets or clears it",
                        user_id,
                        type(exc).__name__,
                    )
                raise BudgetUnavailable(f"the caps override of {user_id} is malformed") from None
        self._malformed.pop(user_id, None)
        if len(self._overrides) >= MAX_REMEMBERED_OVERRIDES and user_id not in self._overrides:
            self._overrides.clear()
        self._overrides[user_id] = (override, limits)
        return limits

    async def set_caps(self, user_id: str, caps: Caps) -> None:
        """Give `user_id` these caps instead of the configured ones, on every host at once.

        ValueError for a cap the gate cannot count; BudgetUnavailable when Redis fails.
        """
        if not user_id:
            raise ValueError("caps need a user id")
        override = caps_to_json(caps)
        try:
            await self._client.hset(CAPS_KEY, user_id, override)
        except RedisError as exc:
            raise BudgetUnavailable(f"caps not set: {type(exc).__name__}") from None
        self._adopt(user_id, override)
        log.info("caps of %s set to %s", user_id, override)

    async def clear_caps(self, user_id: str) -> None:
        """Give `user_id` the configured caps again."""
        try:
            await self._client.hdel(CAPS_KEY, user_id)
        except RedisError as exc:
            raise BudgetUnavailable(f"caps not cleared: {type(exc).__name__}") from None
        self._adopt(user_id, None)
        log.info("caps of %s back to the configured ones", user_id)

    def _windows_at(self, now: float) -> Windows:
        today = self._today
        if today is None or not today.holds(now):
            today = self._today = windows_at(now, self._tz)
        return today

    def _windows_of(self, day: str) -> Windows:
        windows = self._days.get(day)
        if windows is None:
            if len(self._days) >= 64:
                self._days.clear()
            windows = self._days[day] = windows_of_day(day, self._tz)
        return windows

    def _use(
        self, windows: Windows, index: int, spent: int, held: int, cap: int | None, now: float
    ) -> WindowUse:
        """Window number `index` of WINDOW_ORDER, as a report."""
        scope, period = WINDOW_ORDER[index]
        return WindowUse(
            scope=scope,
            period=period,
            key=windows.key(period),
            spent_nano=spent,
            held_nano=held,
            cap_nano=cap,
            resets_at=windows.resets_at(period),
            as_of=now,
            timezone=self._tz,
        )

    # -- reserve ---------------------------------------------------------------------------

    async def reserve(
        self,
        user_id: str,
        model: str,
        price: TokenPrice | Price,
        prompt_tokens: int,
        max_tokens: int,
    ) -> Reservation:
        """Reserve the worst case of one call, or refuse it.

        There is no reservation without a price: the caller refuses unpriced models.
        `prompt_tokens` must be an upper bound (`budget.prompt_token_bound`). The
        returned `max_tokens` may be lower than asked: what the tightest window still
        pays for. Raises BudgetExceeded when a window cannot pay the prompt and one
        completion token, BudgetUnavailable when the state cannot be checked.
        """
        if isinstance(price, Price):
            price = TokenPrice.from_settings(price)
        _check_call(user_id, prompt_tokens, max_tokens)
        now = self._clock()
        windows = self._windows_at(now)
        max_tokens = bounded_max_tokens(price, max_tokens)
        prompt_nano = input_cost_nano(price, prompt_tokens)
        output_nano = output_cost_nano(price, max_tokens)
        rid = new_reservation_id(windows.day, user_id)
        expires_at = now + self._settings.reservation_ttl_s
        entry = Entry(
            op="reserve",
            id=rid,
            t=now,
            user=user_id,
            model=model,
            day=windows.day,
            month=windows.month,
            nano=prompt_nano + output_nano,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            expires_at=expires_at,
        )
        # Before the script: a crash between the two leaves a reserve with no outcome,
        # which a rebuild bills in full rather than forgets.
        self._ledger.append(entry)
        keys = [
            *_window_keys(windows, user_id),
            reservation_key(rid),
            EXPIRY_KEY,
            applied_key(windows.month),
            REBUILD_KEY,
            CAPS_KEY,
        ]
        ttls = [_ttl(windows.resets_at(p), now) for _, p in WINDOW_ORDER]
        rest = [
            *ttls,
            prompt_nano,
            max_tokens,
            price.output_pico,
            output_nano,
            output_cost_nano(price, 1),
            repr(expires_at),
            ttls[1],
            rid,
            user_id,
            model,
            windows.day,
            windows.month,
        ]
        for _ in range(STALE_RETRIES):
            caps = self._caps_of(user_id)
            override = self._assumed(user_id)
            args = [*(-1 if cap is None else cap for cap in caps), *rest, override or False]
            reply = await self._run_reserve(entry, keys, json.dumps(args))
            if reply[0] != b"stale":
                break
            try:
                self._adopt(user_id, reply[1])
            except BudgetUnavailable:
                self._deny(entry, "malformed caps override")
                raise
        else:
            self._deny(entry, "caps override kept changing")
            raise BudgetUnavailable("the caps override kept changing during the reserve")
        status = reply[0]
        if status == b"ok":
            return Reservation(
                id=rid,
                user_id=user_id,
                model=model,
                max_tokens=int(reply[1]),
                reserved_nano=int(reply[2]),
                day=windows.day,
                month=windows.month,
                expires_at=expires_at,
            )
        if status == b"denied":
            refusing = self._refusing(reply[1:], windows, caps, now)
            self._deny(entry, f"{refusing.scope} {refusing.period}")
            raise BudgetExceeded(
                exceeded_sentence(refusing, needed_nano=prompt_nano + output_cost_nano(price, 1)),
                scope=str(refusing.scope),
                period=str(refusing.period),
                cap_nano=refusing.cap_nano or 0,
                remaining_nano=refusing.remaining_nano or 0,
                resets_at=refusing.resets_at,
            )
        reason = _text(reply[1]) if len(reply) > 1 else "unexpected reply"
        self._deny(entry, reason)
        raise BudgetUnavailable(f"budget state is not available: {reason}")

    async def _run_reserve(self, entry: Entry, keys: list[str], args: str) -> list[Any]:
        """RESERVE's reply; BudgetUnavailable (with the outcome recorded) when there is none."""
        rid, user_id = entry.id, entry.user
        try:
            reply = await RESERVE(self._client, keys, [args])
        except ResponseError as exc:
            self._deny(entry, "script error")
            log.error("budget reserve script failed for %s: %s", user_id, exc)
            raise BudgetUnavailable(f"the budget script failed: {exc}") from None
        except MaxConnectionsError:
            # Raised before anything is sent: the script surely did not run.
            self._deny(entry, "no Redis connection free")
            raise BudgetUnavailable("no Redis connection free; size the pool") from None
        except (RedisError, OSError, asyncio.CancelledError) as exc:
            # The script may or may not have run: found out once Redis answers.
            self._unresolved[rid] = entry
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BudgetUnavailable(f"Redis did not answer: {type(exc).__name__}") from None
        return list(reply)

    def _deny(self, entry: Entry, reason: str) -> None:
        try:
            self._ledger.append(
                Entry(
                    op="denied",
                    id=entry.id,
                    t=self._clock(),
                    user=entry.user,
                    model=entry.model,
                    day=entry.day,
                    month=entry.month,
                    reason=reason,
                )
            )
        except BudgetUnavailable as exc:
            # The reserve stays without outcome in the ledger: a rebuild would bill it.
            log.error("ledger: denial of %s not recorded: %s", entry.id, exc)

    def _refusing(
        self, flat: Sequence[Any], windows: Windows, caps: Sequence[int | None], now: float
    ) -> WindowUse:
        """The refusing window to tell the user about: the one that stays shut longest."""
        refused = []
        for i in range(0, len(flat), 3):
            index = int(flat[i]) - 1
            used, held = int(flat[i + 1]), int(flat[i + 2])
            refused.append(self._use(windows, index, used - held, held, caps[index], now))
        # Latest reset first; on a tie the user's own window before the shared one.
        return max(refused, key=lambda w: (w.resets_at, w.scope is Scope.USER))

    # -- settle and expire -----------------------------------------------------------------

    async def settle(
        self, reservation_id: str, cost_nano: int, prompt_tokens: int, completion_tokens: int
    ) -> Settlement:
        """Bill a finished call at its real cost and release the rest of its reservation.

        Idempotent: a second settlement of the same id changes nothing and reports
        ALREADY_SETTLED (or ALREADY_EXPIRED if the reaper billed it first).
        """
        if cost_nano < 0 or prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("costs and token counts are 0 or more")
        day, user_id = parse_reservation_id(reservation_id)
        for _ in range(SETTLE_RETRIES):
            (result,) = await self._finish("settle", [reservation_id], [cost_nano])
            if result is not None:
                break
            # A rebuild holds the lock for a moment; the reservation comes back after it.
            await asyncio.sleep(SETTLE_RETRY_S)
        else:
            raise BudgetUnavailable("budget state is being rebuilt")
        outcome = _DONE.get(result[0], Outcome.UNKNOWN)
        if outcome is not Outcome.SETTLED:
            log.info("settlement of %s: %s, nothing changed", reservation_id, outcome)
            return Settlement(reservation_id, outcome, 0, 0, ())
        reserved, billed, model = int(result[1]), int(result[2]), _text(result[3])
        if billed > reserved:
            log.warning(
                "call %s cost %d nano-dollars, above its reservation of %d: billed in full",
                reservation_id,
                billed,
                reserved,
            )
        self._record_finish(
            "settle", reservation_id, day, user_id, model, billed, reserved,
            prompt_tokens, completion_tokens,
        )  # fmt: skip
        return Settlement(
            reservation_id,
            outcome,
            billed,
            reserved,
            self._crossed(day, user_id, int(result[4]), result[5:13]),
        )

    def _crossed(
        self, day: str, user_id: str, mask: int, counters: Sequence[Any]
    ) -> tuple[WindowUse, ...]:
        if not mask:
            return ()
        windows = self._windows_of(day)
        caps = self._caps_of(user_id)
        now = self._clock()
        return tuple(
            self._use(windows, i, int(counters[i]), int(counters[4 + i]), caps[i], now)
            for i in range(len(WINDOW_ORDER))
            if mask & (1 << i)
        )

    def _record_finish(
        self,
        op: str,
        rid: str,
        day: str,
        user_id: str,
        model: str,
        billed: int,
        reserved: int,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        entry = Entry(
            op="settle" if op == "settle" else "expire",
            id=rid,
            t=self._clock(),
            user=user_id,
            model=model,
            day=day,
            month=day[:7],
            nano=billed,
            reserved=reserved,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        try:
            self._ledger.append(entry)
        except BudgetUnavailable as exc:
            # Redis has it; a rebuild without this record bills the reserved amount.
            log.error("ledger: %s of %s not recorded: %s", op, rid, exc)

    async def _finish(
        self, mode: str, ids: Sequence[str], costs: Sequence[int] | None
    ) -> list[list[Any] | None]:
        """Run FINISH on `ids`; None for each when a rebuild holds the lock."""
        now = self._clock()
        keys = [EXPIRY_KEY, REBUILD_KEY]
        items: list[list[str | int]] = []
        for n, rid in enumerate(ids):
            day, user_id = parse_reservation_id(rid)
            windows = self._windows_of(day)
            ttls = [_ttl(windows.resets_at(p), now) for _, p in WINDOW_ORDER]
            keys += [
                reservation_key(rid),
                done_key(rid),
                *_window_keys(windows, user_id),
                models_key(user_id, windows.month),
                applied_key(windows.month),
                *(warned_key(s, p, windows.key(p), user_id) for s, p in WINDOW_ORDER),
            ]
            thresholds = self._thresholds_of(user_id)
            items.append(
                [
                    rid,
                    costs[n] if costs is not None else 0,
                    *ttls,
                    ttls[1],
                    *(-1 if t is None else t for t in thresholds),
                    ttls[1],
                ]
            )
        done_ttl = self._settings.reservation_ttl_s + WINDOW_MARGIN_S
        args = json.dumps([mode, now, done_ttl, items])
        try:
            reply = await FINISH(self._client, keys, [args])
        except RedisError as exc:
            raise BudgetUnavailable(f"budget {mode} failed: {type(exc).__name__}: {exc}") from None
        if reply and reply[0] == b"unavailable":
            return [None] * len(ids)
        return [list(r) for r in reply]

    async def reap(self) -> int:
        """Bill expired, unsettled reservations at their reserved amount; how many.

        Safe from several processes at once: each reservation is finished once.
        """
        await self._resolve()
        now = self._clock()
        reaped = 0
        while True:
            try:
                raw = await self._client.zrangebyscore(
                    EXPIRY_KEY, "-inf", now, start=0, num=REAP_BATCH
                )
            except RedisError as exc:
                raise BudgetUnavailable(f"reap failed: {type(exc).__name__}") from None
            ids = [_text(r) for r in raw]
            if not ids:
                return reaped
            results = await self._finish("expire", ids, None)
            progress = False
            for rid, result in zip(ids, results, strict=True):
                if result is None:
                    return reaped  # a rebuild is running; the next pass continues
                if result[0] == b"pending":
                    continue
                progress = True
                if result[0] == b"expired":
                    day, user_id = parse_reservation_id(rid)
                    reserved = int(result[1])
                    self._record_finish(
                        "expire", rid, day, user_id, _text(result[3]), reserved, reserved
                    )
                    log.info(
                        "reservation %s expired unsettled: billed %d nano-dollars", rid, reserved
                    )
                    reaped += 1
            if not progress or len(ids) < REAP_BATCH:
                return reaped

    async def _resolve(self) -> None:
        """Settle at 0 the reservations whose reserve answer was lost: no call was made."""
        for rid, entry in list(self._unresolved.items()):
            try:
                (result,) = await self._finish("settle", [rid], [0])
            except BudgetUnavailable:
                return
            if result is None:
                return
            del self._unresolved[rid]
            if result[0] == b"settled":
                self._record_finish(
                    "settle", rid, entry.day, entry.user, entry.model, 0, int(result[1])
                )
            elif result[0] == b"unknown":
                self._deny(entry, "not applied")

    async def run(self, interval_s: float = 5.0) -> None:
        """Reap expired reservations every `interval_s` until cancelled."""
        while True:
            # redis-py can swallow a cancellation on Python 3.11 (see gateway._aio): without
            # this check a stopping gateway waited for this loop forever.
            raise_if_cancelling()
            try:
                await self.reap()
            except BudgetUnavailable as exc:
                log.warning("budget reaper: %s; trying again in %.0f s", exc, interval_s)
            except Exception:  # task boundary: log, go on
                log.exception("budget reaper pass failed; trying again in %.0f s", interval_s)
            await asyncio.sleep(interval_s)

    # -- usage -----------------------------------------------------------------------------

    async def usage(self, user_id: str) -> Usage:
        """`user_id`'s windows, everyone's windows, and the user's models this month."""
        now = self._clock()
        windows = self._windows_at(now)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in _window_keys(windows, user_id):
                    pipe.hmget(key, ["used", "held"])
                pipe.hgetall(models_key(user_id, windows.month))
                pipe.hget(CAPS_KEY, user_id)
                replies = await pipe.execute()
        except RedisError as exc:
            raise BudgetUnavailable(f"usage failed: {type(exc).__name__}") from None
        caps = self._adopt(user_id, replies[5])[0]
        uses = []
        for i in range(len(WINDOW_ORDER)):
            used, held = (_int(v) for v in replies[i])
            uses.append(self._use(windows, i, used - held, held, caps[i], now))
        models = sorted(
            ((_text(m), int(v)) for m, v in replies[4].items()), key=lambda mv: (-mv[1], mv[0])
        )
        return Usage(user_id, tuple(uses), tuple(models))

    # -- recovery --------------------------------------------------------------------------

    async def _read_ledger(self, month: str) -> list[Entry]:
        try:
            return await asyncio.to_thread(self._ledger.read_month, month)
        except OSError as exc:
            raise BudgetUnavailable(f"the spend ledger cannot be read: {exc}") from None

    async def _marker(self, month: str) -> int | None:
        try:
            value = await self._client.get(applied_key(month))
        except RedisError as exc:
            raise BudgetUnavailable(f"recover failed: {type(exc).__name__}") from None
        return None if value is None else int(value)

    async def recover(self) -> bool:
        """At start: rebuild this month's state from the ledger if Redis lost any of it.

        Redis counts the ledger records it has applied (a marker per month). A marker
        that is missing, or stays below the ledger's count, means Redis restarted from
        an older snapshot or lost its data: the counters are rebuilt. True if rebuilt.
        """
        month = windows_at(self._clock(), self._tz).month
        expected = applied_count(await self._read_ledger(month))
        marker = await self._marker(month)
        if marker is None and expected == 0:
            return False
        if marker is not None and marker < expected:
            # Maybe records whose scripts are running right now; lost state stays behind.
            await asyncio.sleep(RECOVER_RECHECK_S)
            marker = await self._marker(month)
        if marker is not None and marker >= expected:
            return False
        log.warning(
            "budget: Redis holds %s of the %d ledger records of %s; rebuilding from %s",
            "none" if marker is None else marker,
            expected,
            month,
            self._ledger.directory,
        )
        return await self.rebuild()

    async def rebuild(self) -> bool:
        """Replace this month's budget state in Redis with what the ledger says.

        Reserves, settlements and reaping everywhere are refused (BudgetUnavailable)
        while it runs. Returns False when another process was already rebuilding
        (this one waits for it to finish).
        """
        token = secrets.token_hex(8)
        try:
            taken = await self._client.set(REBUILD_KEY, token, nx=True, px=REBUILD_LOCK_MS)
            if not taken:
                while await self._client.exists(REBUILD_KEY):
                    raise_if_cancelling()
                    await asyncio.sleep(0.05)
                return False
            try:
                await asyncio.sleep(REBUILD_GRACE_S)
                now = self._clock()
                windows = windows_at(now, self._tz)
                entries = await self._read_ledger(windows.month)
                state = replay(entries, now)
                self._ledger.append_all(state.expired)
                await self._write(state, windows, token, now)
            finally:
                await RELEASE(self._client, [REBUILD_KEY], [token])
        except RedisError as exc:
            raise BudgetUnavailable(f"rebuild failed: {type(exc).__name__}: {exc}") from None
        log.warning(
            "budget: rebuilt %s from the ledger: %d windows, %d running reservations restored, "
            "%d billed as expired",
            windows.month,
            len(state.windows),
            len(state.open),
            len(state.expired),
        )
        return True

    async def _write(self, state: Replay, windows: Windows, token: str, now: float) -> None:
        stale: list[str] = [EXPIRY_KEY]
        for pattern in ("w:*", "r:*", "models:*", "applied:*"):
            stale += [_text(k) async for k in self._client.scan_iter(match=PREFIX + pattern)]
        days = {windows.day} | {entry.day for entry in state.open}
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.watch(REBUILD_KEY)
                if await pipe.get(REBUILD_KEY) not in (token, token.encode()):
                    raise BudgetUnavailable("the rebuild lock expired before the write")
                pipe.multi()  # type: ignore[no-untyped-call]
                for start in range(0, len(stale), 1_000):
                    pipe.delete(*stale[start : start + 1_000])
                for (scope, period, key, user), (used, held) in state.windows.items():
                    if period == Period.DAY and key not in days:
                        continue  # an earlier day of the month: no longer checked
                    ours = windows_of_day(key if period == Period.DAY else f"{key}-01", self._tz)
                    name = window_key(Scope(scope), Period(period), key, user)
                    pipe.hset(name, mapping={"used": used, "held": held})
                    pipe.expire(name, _ttl(ours.resets_at(Period(period)), now))
                for (user, month), models in state.models.items():
                    pipe.hset(models_key(user, month), mapping=dict[Any, Any](models))
                    pipe.expire(models_key(user, month), _ttl(windows.month_resets_at, now))
                for entry in state.open:
                    pipe.hset(
                        reservation_key(entry.id),
                        mapping={
                            "reserved": entry.nano,
                            "max_tokens": entry.max_tokens,
                            "expires_at": repr(entry.expires_at),
                            "user": entry.user,
                            "model": entry.model,
                            "day": entry.day,
                            "month": entry.month,
                        },
                    )
                    pipe.zadd(EXPIRY_KEY, {entry.id: entry.expires_at})
                marker = applied_key(windows.month)
                pipe.set(marker, state.applied, ex=_ttl(windows.month_resets_at, now))
                await pipe.execute()
        except WatchError:
            raise BudgetUnavailable("the rebuild lock changed hands during the write") from None


def _check_call(user_id: str, prompt_tokens: int, max_tokens: int) -> None:
    if not user_id:
        raise ValueError("a reservation needs a user id")
    if not 0 <= prompt_tokens <= MAX_PROMPT_TOKENS:
        raise ValueError(f"prompt_tokens must be 0 to {MAX_PROMPT_TOKENS}")
    if max_tokens < 1:
        raise ValueError("max_tokens must be 1 or more")


_Limits = tuple[tuple[int | None, ...], tuple[int | None, ...]]
"""A user's caps and warning thresholds in nano-dollars, in WINDOW_ORDER."""


def _limits(settings: BudgetSettings, name: str, user: Caps) -> _Limits:
    """A user's configured caps and thresholds; a bad cap names its key."""
    for where, caps in ((name, user), ("budget.total", settings.total)):
        for field in ("daily_usd", "monthly_usd"):
            usd = getattr(caps, field)
            try:
                if usd is not None:
                    usd_to_nano(usd)
            except ValueError as exc:
                raise ConfigError("settings", f"{where}.{field}", str(exc)) from None
    return _limits_from(user, settings)


def _limits_from(user: Caps, settings: BudgetSettings) -> _Limits:
    """A user's caps and thresholds; ValueError for a cap that cannot be counted."""
    caps_nano = window_caps(user, settings.total)
    return caps_nano, tuple(warn_threshold(cap, settings.warn_at) for cap in caps_nano)
