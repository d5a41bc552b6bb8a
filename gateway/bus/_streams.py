"""The message bus on Redis Streams: at-least-once delivery, atomic hand-off, dead letters.

Each stream has consumer groups; a consumer acks an entry once its work is durable.
An entry that is never acked stays in the group's pending list (PEL): after a
restart its consumer re-reads it first, and once it has been idle for
`claim_idle_ms` any consumer of the group reclaims it. An entry that does not
decode, or that was delivered `max_deliveries` times without an ack, goes to the
stream's dead-letter stream with its reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway._aio import raise_if_cancelling
from gateway.bus import _keys as keys
from gateway.bus import _scripts
from gateway.bus._scripts import command as _cmd
from gateway.envelope import Envelope, decode, encode
from gateway.errors import EnvelopeError, RedisUnavailable, StaleDelivery
from gateway.settings import BusSettings

__all__ = ["Bus", "DeadLetter", "Delivery", "Handler", "keys"]

log = logging.getLogger("stockade.bus")

REASON_MAX: Final = 500
"""Failure reasons are cut to this many characters before they are stored."""

_FIRST_BATCH: Final = 10
"""Entries `consume` reads before it knows how long its handler takes."""
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0
_LAG_COUNT_CAP: Final = 100_000
_EMPTY_ID: Final = "0-0"
_SEND_MAX: Final = 256
"""Most publishes sent in one script call: a longer call would hold up Redis."""
ADOPT_EVERY_S: Final = 2.0
"""How often a consumer looks for dead consumers' entries in its group (with `gone`)."""
ADOPT_BATCH: Final = 1_000
"""A dead consumer's pending entries taken over per look; more come at the next."""
ADOPT_MIN_IDLE_MS: Final = 1_000
"""An entry touched more recently than this is left alone: its process may be alive."""

_Publish = tuple[str, str | None, bytes]
"""One queued publish: stream, dedupe marker key (or None), fields packed as JSON."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to a consumer."""

    stream: str
    group: str
    entry_id: str
    envelope: Envelope
    deliveries: int
    """How many times this entry has been delivered, this time included (1 on first read)."""


Handler = Callable[[Delivery], Awaitable[None]]
Lane = Callable[[Delivery], Hashable]
"""Which entries must be handled in order: those with the same lane."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry moved to a dead-letter stream, with why."""

    entry_id: str
    """Id in the dead-letter stream."""
    stream: str
    """The stream the entry came from."""
    group: str
    source_id: str
    """The entry's id in `stream`."""
    reason: str
    deliveries: int
    fields: Mapping[bytes, bytes]
    """The original fields, byte for byte; empty when the entry had been trimmed."""

    def envelope(self) -> Envelope:
        """The original envelope; `EnvelopeError` when it never decoded."""
        return decode(self.fields)


def batch_size(batch: int, claim_idle_ms: int, handler_s: float | None) -> int:
    """How many entries `consume` reads at once, given its handler's typical run time.

    Entries read but not yet handled age in the PEL like the one being handled. If
    a batch took longer than `claim_idle_ms`, another consumer would reclaim its
    tail and run it a second time, so a batch is sized to take a quarter of that.
    """
    if handler_s is None:
        return min(batch, _FIRST_BATCH)
    if handler_s <= 0:
        return batch
    return max(1, min(batch, int(claim_idle_ms / 4000 / handler_s)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _packed(envelope: Envelope) -> bytes:
    """The envelope's stream fields as one JSON array of field, value, field, value…"""
    flat = [item for pair in encode(envelope).items() for item in pair]
    try:
        return json.dumps(flat, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # Channels sanitize text (repairing lone surrogates) before it gets here.
        raise EnvelopeError("envelope text is not valid Unicode (lone surrogate)") from None


def _published(stream: str, reply: Any) -> str | None:
    """What `publish` returns for one reply of the PUBLISH script."""
    if isinstance(reply, int):
        if reply == 0:
            return None
        raise ResponseError(f"WRONGTYPE {stream} holds a value that is not a stream")
    return _text(reply)


def _entries(reply: Any) -> list[tuple[bytes, Mapping[bytes, bytes]]]:
    """The entries of a one-stream XREADGROUP reply, in any of redis-py's reply shapes."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (value,) = reply.values()
        # RESP3 replies in redis-py's legacy shape wrap the entry list in a list.
        if value and isinstance(value[0], list):
            value = value[0]
        return list(value)
    return list(reply[0][1])


def _pairs(flat: Sequence[bytes] | None) -> dict[bytes, bytes]:
    if not flat:
        return {}
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:REASON_MAX]


class _RedisErrors:
    """Turns a lost or timed-out Redis connection into `RedisUnavailable`."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if isinstance(exc, RedisConnectionError | RedisTimeoutError):
            raise RedisUnavailable(f"Redis did not answer: {exc}") from None
        return False


_redis_errors: Final = _RedisErrors()
# redis-py times socket reads out after 5 s when a client sets no socket_timeout
# (a client from from_url does not), so that is the bound for a blocking read.
_REDIS_PY_DEFAULT_TIMEOUT_S: Final = 5.0
# Redis checks blocked clients' timeouts from its event loop, which wakes at least
# every 1000/hz ms (hz 10 by default): a BLOCK can end up to 100 ms late, more on a
# loaded host. A blocking read leaves at least this much of the socket timeout free.
_BLOCK_MARGIN_S: Final = 0.25


class Bus:
    """Publish, read, ack, forward and dead-letter envelopes on Redis Streams."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: BusSettings,
        *,
        gone: Callable[[], Awaitable[Collection[str]]] | None = None,
    ) -> None:
        """`gone` names consumers known to be dead (their process stopped beating): what
        they held is taken over within `ADOPT_EVERY_S`, not after `claim_idle_ms`."""
        # Stream entries are always read as bytes (the `raw` replies below), also on a
        # decode_responses client: an entry holding invalid UTF-8 must reach the
        # dead-letter path, not break every read of its stream.
        self._r = client
        self._settings = settings
        self._maxlen = settings.stream_maxlen
        self._max_deliveries = settings.max_deliveries
        # A failure reason must outlive every retry of its entry; the expiry only
        # bounds what is left behind by entries trimmed away or groups deleted.
        retries_s = settings.max_deliveries * settings.claim_idle_ms // 1000
        self._fail_ttl_s = 86_400 + 2 * retries_s
        self._claim_every_s = settings.claim_idle_ms / 2000
        # A blocking read must return before the client's socket timeout (redis-py
        # defaults to 5 s), or a quiet stream would look like a lost connection.
        timeout_s = (
            client.connection_pool.connection_kwargs.get("socket_timeout")
            or _REDIS_PY_DEFAULT_TIMEOUT_S
        )
        margin_s = max(timeout_s * 0.2, _BLOCK_MARGIN_S)
        self._max_block_ms = max(1, int((timeout_s - margin_s) * 1000))
        # Per (stream, group, consumer): progress through the consumer's own PEL,
        # which is re-read once before anything else; then where XAUTOCLAIM goes on.
        self._own_done: set[tuple[str, str, str]] = set()
        self._own_cursor: dict[tuple[str, str, str], str] = {}
        self._claim_cursor: dict[tuple[str, str, str], str] = {}
        self._claim_due: dict[tuple[str, str, str], float] = {}
        self._gone = gone
        self._adopt_due: dict[tuple[str, str, str], float] = {}
        self._outbox: list[tuple[_Publish, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._sending = False

    # -- producing -------------------------------------------------------------------

    async def publish(
        self, stream: str, envelope: Envelope, *, dedupe: str | None = None
    ) -> str | None:
        """Append an envelope; with `dedupe`, only if that key was not seen within the TTL.

        The dedupe marker is set in the same Lua step as the XADD, so a key is
        recorded exactly when its entry exists. Returns the entry id, or None for a
        duplicate. Publishes made while another is in flight are queued and sent
        together in one script call; concurrent publishes have no order among
        them, while one caller's awaited publishes keep theirs.
        """
        if dedupe is not None and not dedupe:
            raise ValueError("a dedupe key must not be empty")
        marker = None if dedupe is None else keys.dedupe(stream, dedupe)
        item = (stream, marker, _packed(envelope))
        if not self._sending:
            # Nothing in flight: send at once, without the queue's extra task switch.
            self._sending = True
            try:
                with _redis_errors:
                    (reply,) = await self._publish_many((item,))
            finally:
                self._sending = False
            return _published(stream, reply)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outbox.append((item, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_outbox())
        return _published(stream, await future)

    async def _publish_many(self, items: Sequence[_Publish]) -> list[Any]:
        """Publish in one script call; each publish's id, 0 (duplicate) or -1 (wrong type)."""
        key_list: list[str] = []
        args: list[str | int | bytes] = [self._maxlen, self._settings.dedupe_ttl_s]
        for stream, marker, packed in items:
            key_list.append(stream)
            if marker is None:
                args.append(0)
            else:
                key_list.append(marker)
                args.append(1)
            args.append(packed)
        return list(await _scripts.PUBLISH(self._r, key_list, args))

    async def _send_outbox(self) -> None:
        """Send queued publishes until none are left, those queued meanwhile together.

        Concurrent publishers (a channel under load) then share round trips. The
        task lives only while publishes are queued, and each caller awaits its own
        future, so a cancelled caller never strands the others.
        """
        try:
            while self._outbox:
                batch = self._outbox[:_SEND_MAX]
                del self._outbox[:_SEND_MAX]
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[tuple[_Publish, asyncio.Future[Any]]]) -> None:
        try:
            with _redis_errors:
                replies = await self._publish_many([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every publish that waited on it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():  # done: its caller was cancelled
                future.set_result(reply)

    # -- consuming -------------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str, *, start: str = "0") -> None:
        """Create the consumer group and the stream if missing; an existing group stays.

        A new group delivers the entries after `start`: "0" (all, the default) or "$"
        (only entries added from now on).
        """
        with _redis_errors:
            try:
                await _cmd(self._r, "XGROUP", "CREATE", stream, group, start, "MKSTREAM")
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    async def drop_group(self, stream: str, group: str) -> None:
        """Delete a consumer group with its pending entries; a missing one is no error."""
        with _redis_errors:
            try:
                await _cmd(self._r, "XGROUP", "DESTROY", stream, group)
            except ResponseError as exc:
                # Redis answers this when the stream itself does not exist.
                if "requires the key to exist" not in str(exc):
                    raise
        for key in [k for k in self._claim_due.keys() | self._own_done if k[:2] == (stream, group)]:
            self._forget(key)

    async def read(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int | None = None,
        block_ms: int | None = None,
    ) -> list[Delivery]:
        """The next entries for `consumer`: its own pending ones, then reclaimed, then new.

        The consumer's own PEL is re-read once per Bus (after a restart it holds
        what the consumer had not acked); entries idle longer than `claim_idle_ms`
        in any consumer are reclaimed; then new entries are read, waiting up to
        `block_ms` (default `settings.block_ms`; 0 does not wait). Undecodable and
        over-delivered entries go to the dead-letter stream and are not returned.
        """
        n = count or self._settings.batch
        block = self._settings.block_ms if block_ms is None else block_ms
        with _redis_errors:
            return await self._next((stream, group, consumer), n, block)

    async def _next(self, key: tuple[str, str, str], n: int, block: int) -> list[Delivery]:
        stream, group, consumer = key
        if key not in self._own_done:
            own = await self._read_own(key, n)
            if own:
                return own
        now = time.monotonic()
        if self._gone is not None and now >= self._adopt_due.get(key, 0.0):
            self._adopt_due[key] = now + ADOPT_EVERY_S
            if await self._adopt(key):
                # Now this consumer's own: read them as after a restart, with their counts.
                self._own_done.discard(key)
                self._own_cursor.pop(key, None)
                own = await self._read_own(key, n)
                if own:
                    return own
        if now >= self._claim_due.get(key, 0.0):
            claimed = await self._claim(key, n, now)
            if claimed:
                return claimed
        if block > 0:
            # Wake up in time for the next reclaim pass: a failed entry waits there.
            until_claim_ms = int((self._claim_due[key] - time.monotonic()) * 1000)
            block = max(1, min(block, until_claim_ms, self._max_block_ms))
            args: tuple[str | int, ...] = ("COUNT", n, "BLOCK", block)
        else:
            args = ("COUNT", n)
        reply = await _cmd(
            self._r,
            "XREADGROUP",
            "GROUP",
            group,
            consumer,
            *args,
            "STREAMS",
            stream,
            ">",
            raw=True,
        )
        entries = _entries(reply)
        if not entries:
            return []
        return await self._admit(stream, group, entries, None)

    async def _read_own(self, key: tuple[str, str, str], n: int) -> list[Delivery]:
        stream, group, consumer = key
        while True:
            cursor = self._own_cursor.get(key, "0")
            reply = await _cmd(
                self._r,
                "XREADGROUP",
                "GROUP",
                group,
                consumer,
                "COUNT",
                n,
                "STREAMS",
                stream,
                cursor,
                raw=True,
            )
            entries = _entries(reply)
            if not entries:
                self._own_done.add(key)
                self._own_cursor.pop(key, None)
                return []
            first, last = _text(entries[0][0]), _text(entries[-1][0])
            self._own_cursor[key] = last
            pending = await self._r.xpending_range(
                stream, group, min=first, max=last, count=len(entries), consumername=consumer
            )
            counts = {
                _text(cast("bytes | str", p["message_id"])): int(p["times_delivered"])
                for p in pending
            }
            admitted = await self._admit(stream, group, entries, counts)
            if admitted:
                return admitted

    async def _adopt(self, key: tuple[str, str, str]) -> int:
        """Take over the pending entries of the group's dead consumers; how many.

        Reading them back as this consumer's own counts one delivery (the JUSTID claim
        counts none), so an entry that kills every process handling it still reaches
        the dead-letter stream after `max_deliveries`. The minimum idle time keeps
        entries a stalled-but-living process touched just now."""
        assert self._gone is not None
        stream, group, consumer = key
        dead = set(await self._gone()) - {consumer}
        if not dead:
            return 0
        try:
            consumers = await self._r.xinfo_consumers(stream, group)
        except ResponseError:
            return 0  # no stream or group yet
        taken = 0
        for info in consumers:
            name = _text(info["name"])
            if name not in dead:
                continue
            if int(info.get("pending") or 0) == 0:
                await self._r.xgroup_delconsumer(stream, group, name)
                continue
            held = await self._r.xpending_range(
                stream, group, min="-", max="+", count=ADOPT_BATCH, consumername=name
            )
            ids: list[int | bytes | str | memoryview[int]] = [
                _text(cast("bytes | str", p["message_id"])) for p in held
            ]
            if ids:
                claimed = await self._r.xclaim(
                    stream, group, consumer, ADOPT_MIN_IDLE_MS, ids, justid=True
                )
                taken += len(claimed)
                log.warning(
                    "took over %d entries of %s in %s/%s from %s, which stopped",
                    len(claimed),
                    stream,
                    group,
                    consumer,
                    name,
                )
        return taken

    async def _claim(self, key: tuple[str, str, str], n: int, now: float) -> list[Delivery]:
        stream, group, consumer = key
        start = self._claim_cursor.get(key, _EMPTY_ID)
        reply = await _scripts.CLAIM(
            self._r,
            [stream],
            [group, consumer, self._settings.claim_idle_ms, start, n],
            raw=True,
        )
        next_start, claimed, counts, deleted = reply
        cursor = _text(next_start)
        self._claim_cursor[key] = cursor
        # XAUTOCLAIM scans a bounded part of the PEL per call; go on at once while
        # it says there is more, otherwise look again after half the idle time.
        self._claim_due[key] = now if cursor != _EMPTY_ID else now + self._claim_every_s
        if deleted:
            log.warning(
                "%d pending entries of %s (group %s) were trimmed before anyone acked them",
                len(deleted),
                stream,
                group,
            )
        if not claimed:
            return []
        entries = [(entry[0], _pairs(entry[1])) for entry in claimed]
        by_id = {_text(entry[0]): int(times) for entry, times in zip(claimed, counts, strict=True)}
        return await self._admit(stream, group, entries, by_id)

    async def _admit(
        self,
        stream: str,
        group: str,
        entries: Sequence[tuple[bytes | str, Mapping[bytes, bytes]]],
        counts: Mapping[str, int] | None,
    ) -> list[Delivery]:
        """Decode entries into deliveries; dead-letter the ones that must not be handled."""
        out: list[Delivery] = []
        dead: list[tuple[str, str]] = []
        max_deliveries = self._max_deliveries
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            times = 1 if counts is None else counts.get(entry_id, 1)
            if times > max_deliveries:
                dead.append((entry_id, ""))
                continue
            if not fields:
                dead.append((entry_id, "the entry was trimmed from the stream before an ack"))
                continue
            try:
                envelope = decode(fields)
            except EnvelopeError as exc:
                dead.append((entry_id, f"undecodable entry: {exc}"[:REASON_MAX]))
                continue
            out.append(Delivery(stream, group, entry_id, envelope, times))
        for entry_id, reason in dead:
            await self._dead_letter(stream, group, entry_id, reason)
        return out

    async def _dead_letter(self, stream: str, group: str, entry_id: str, reason: str) -> None:
        moved = await _scripts.DEAD_LETTER(
            self._r,
            [stream, keys.dead(stream), keys.failure(stream, group, entry_id)],
            [group, entry_id, self._maxlen, reason],
        )
        if moved is not None:
            # The reason can quote message content; operators read it with dead_letters().
            log.warning(
                "moved entry %s of %s (group %s) to %s", entry_id, stream, group, keys.dead(stream)
            )

    # -- settling --------------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        """Mark the entry done for its group; acking twice is harmless."""
        with _redis_errors:
            await self._ack(delivery.stream, delivery.group, (delivery,))

    async def _ack(self, stream: str, group: str, deliveries: Sequence[Delivery]) -> None:
        ids = [d.entry_id for d in deliveries]
        # Only a redelivered entry can have a failure reason on record.
        stale = [keys.failure(stream, group, d.entry_id) for d in deliveries if d.deliveries > 1]
        if not stale:
            await _cmd(self._r, "XACK", stream, group, *ids)
            return
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.xack(stream, group, *ids)
            pipe.delete(*stale)
            await pipe.execute()

    async def forward(self, delivery: Delivery, stream: str, envelope: Envelope) -> str:
        """Append `envelope` to `stream` and ack `delivery`, atomically; the new entry id.

        Raises `StaleDelivery`, writing nothing, when the entry is no longer pending
        (another consumer finished it, or it was dead-lettered): the hand-off then
        happens exactly once even when two consumers ran the same entry.
        """
        (entry_id,) = await self._forward(delivery, ((stream, envelope),))
        return entry_id

    async def forward_many(self, delivery: Delivery, items: Sequence[tuple[str, Envelope]]) -> None:
        """`forward` to several streams at once: all entries and the ack, or nothing."""
        await self._forward(delivery, items)

    async def _forward(
        self, delivery: Delivery, items: Sequence[tuple[str, Envelope]]
    ) -> list[str]:
        key_list = [
            delivery.stream,
            keys.failure(delivery.stream, delivery.group, delivery.entry_id),
        ]
        args: list[str | int | bytes] = [delivery.group, delivery.entry_id, self._maxlen]
        for stream, envelope in items:
            key_list.append(stream)
            args.append(_packed(envelope))
        with _redis_errors:
            ids = await _scripts.FORWARD(self._r, key_list, args)
        if ids is None:
            raise StaleDelivery(
                f"entry {delivery.entry_id} of {delivery.stream} is no longer pending in "
                f"group {delivery.group}; nothing was forwarded"
            )
        return [_text(entry_id) for entry_id in ids]

    async def fail(self, delivery: Delivery, reason: str) -> None:
        """Record a failed attempt; the entry stays pending and is retried after a while.

        A retry comes through the reclaim path once the entry has been idle for
        `claim_idle_ms`. The attempt that reaches `max_deliveries` dead-letters the
        entry with this reason instead, so a handler runs at most that many times.
        """
        reason = reason[:REASON_MAX] or "failed without a reason"
        with _redis_errors:
            if delivery.deliveries >= self._max_deliveries:
                await self._dead_letter(delivery.stream, delivery.group, delivery.entry_id, reason)
            else:
                await _cmd(
                    self._r,
                    "SET",
                    keys.failure(delivery.stream, delivery.group, delivery.entry_id),
                    reason,
                    "EX",
                    self._fail_ttl_s,
                )

    # -- the consumer loop -----------------------------------------------------------

    async def consume(
        self,
        stream: str,
        group: str,
        consumer: str,
        handler: Handler,
        *,
        lane: Lane | None = None,
    ) -> None:
        """Run `handler` on every entry for `consumer` until cancelled.

        Entries whose handler returns are acked, a batch at a time; a handler that
        raises is logged and its entry `fail`ed. While Redis is unreachable the
        loop waits with a capped backoff and logs once per outage.

        Without `lane`, a batch is handled one entry after another. With it, entries
        of different lanes are handled at the same time and those of one lane in
        stream order: a handler that waits on the network then no longer holds up
        everyone else's entries behind it.
        """
        key = (stream, group, consumer)
        backoff = _BACKOFF_MIN_S
        outage = False
        ready = False
        handler_s: float | None = None
        # Past this age a batch's unhandled tail may already be reclaimed elsewhere.
        too_old_s = self._settings.claim_idle_ms * 0.75 / 1000
        while True:
            raise_if_cancelling()
            try:
                if not ready:
                    await self.ensure_group(stream, group)
                    ready = True
                count = batch_size(self._settings.batch, self._settings.claim_idle_ms, handler_s)
                with _redis_errors:
                    batch = await self._next(key, count, self._settings.block_ms)
                if outage:
                    log.info(
                        "Redis answers again; %s consumes %s (group %s)", consumer, stream, group
                    )
                    outage, backoff = False, _BACKOFF_MIN_S
                if not batch:
                    continue
                read_at = time.monotonic()
                done: list[Delivery] = []
                if lane is None:
                    await self._in_order(handler, batch, done, read_at + too_old_s)
                else:
                    await self._in_lanes(handler, batch, lane, done, read_at + too_old_s)
                # The time one entry holds the batch up, for sizing the next batch.
                took = (time.monotonic() - read_at) / len(batch)
                handler_s = took if handler_s is None else 0.8 * handler_s + 0.2 * took
                if done:
                    with _redis_errors:
                        await self._ack(stream, group, done)
            except RedisUnavailable:
                if not outage:
                    log.warning(
                        "Redis is unavailable; %s retries %s (group %s) until it answers",
                        consumer,
                        stream,
                        group,
                    )
                    outage = True
                # Redis may come back from its append-only file: start over from the PEL.
                self._forget(key)
                ready = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            except ResponseError as exc:
                # NOGROUP: the group or stream was deleted; UNBLOCKED: deleted during a read.
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                log.warning("group %s of %s disappeared; creating it again", group, stream)
                self._forget(key)
                ready = False

    async def _in_order(
        self, handler: Handler, deliveries: list[Delivery], done: list[Delivery], until: float
    ) -> None:
        for index, delivery in enumerate(deliveries):
            if time.monotonic() > until:
                log.warning(
                    "handlers on %s are slow for claim_idle_ms; %d entries left to reclaim",
                    delivery.stream,
                    len(deliveries) - index,
                )
                return
            await self._handle(handler, delivery, done)

    async def _in_lanes(
        self,
        handler: Handler,
        batch: list[Delivery],
        lane: Lane,
        done: list[Delivery],
        until: float,
    ) -> None:
        lanes: dict[Hashable, list[Delivery]] = {}
        for delivery in batch:
            lanes.setdefault(lane(delivery), []).append(delivery)
        if len(lanes) == 1:
            await self._in_order(handler, batch, done, until)
            return
        try:
            async with asyncio.TaskGroup() as tasks:
                for deliveries in lanes.values():
                    tasks.create_task(self._in_order(handler, deliveries, done, until))
        except* RedisUnavailable as lost:
            # `_handle` lets only this through; the other lanes were cancelled with it,
            # and their entries stay pending for the next read.
            raise lost.exceptions[0] from None

    async def _handle(self, handler: Handler, delivery: Delivery, done: list[Delivery]) -> None:
        try:
            await handler(delivery)
        except RedisUnavailable:
            raise
        except StaleDelivery:
            log.info("entry %s of %s was finished elsewhere", delivery.entry_id, delivery.stream)
        except EnvelopeError as exc:
            # The handler found the envelope unusable: retrying cannot help.
            with _redis_errors:
                await self._dead_letter(
                    delivery.stream, delivery.group, delivery.entry_id, _reason(exc)
                )
        except Exception as exc:  # noqa: BLE001 - task boundary: log, record, go on
            # Only the type: the exception text may quote the message; fail() stores it.
            log.warning(
                "handler failed on entry %s of %s (group %s, delivery %d): %s",
                delivery.entry_id,
                delivery.stream,
                delivery.group,
                delivery.deliveries,
                type(exc).__name__,
            )
            await self.fail(delivery, _reason(exc))
        else:
            done.append(delivery)

    def _forget(self, key: tuple[str, str, str]) -> None:
        self._adopt_due.pop(key, None)
        self._own_done.discard(key)
        self._own_cursor.pop(key, None)
        self._claim_cursor.pop(key, None)
        self._claim_due.pop(key, None)

    # -- inspection ------------------------------------------------------------------

    async def dead_letters(self, stream: str, count: int = 100) -> list[DeadLetter]:
        """The newest `count` dead letters of `stream`, oldest first."""
        with _redis_errors:
            reply = await _cmd(
                self._r, "XREVRANGE", keys.dead(stream), "+", "-", "COUNT", count, raw=True
            )
        out: list[DeadLetter] = []
        for raw_id, fields in reversed(reply or []):
            out.append(
                DeadLetter(
                    entry_id=_text(raw_id),
                    stream=fields.get(b"stream", b"").decode("utf-8", "replace"),
                    group=fields.get(b"group", b"").decode("utf-8", "replace"),
                    source_id=fields.get(b"entry_id", b"").decode("utf-8", "replace"),
                    reason=fields.get(b"reason", b"").decode("utf-8", "replace"),
                    deliveries=int(fields.get(b"deliveries", b"0")),
                    fields={k[2:]: v for k, v in fields.items() if k.startswith(b"f:")},
                )
            )
        return out

    async def lag(self, stream: str, group: str) -> int:
        """Entries of `stream` the group has not finished: never delivered plus pending."""
        with _redis_errors:
            try:
                groups = await self._r.xinfo_groups(stream)
            except ResponseError as exc:
                if "no such key" in str(exc):
                    return 0
                raise
            for info in groups:
                if _text(info["name"]) != group:
                    continue
                lag = info.get("lag")
                if lag is None:
                    # Redis cannot compute the lag after deletions inside the range.
                    lag = await _scripts.COUNT_AFTER(
                        self._r, [stream], [_text(info["last-delivered-id"]), _LAG_COUNT_CAP]
                    )
                return int(info["pending"]) + int(lag)
            return int(await self._r.xlen(stream))
