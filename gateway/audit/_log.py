"""The audit log in Redis: one hash chain that every role, on every host, appends to.

stockade:audit        stream of entries, oldest first; never trimmed
stockade:audit:head   "<seq> <hash>" of the last entry, written in the same transaction

Writers agree on one chain by optimistic concurrency: WATCH the head, read it, seal
the next entry, then XADD and SET in one MULTI. If another writer got there first
the transaction is dropped and the entry is sealed again on the new head.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from gateway.audit._chain import AuditEntry, Head, Outcome, Verdict, Verifier, seal
from gateway.errors import EnvelopeError, RedisUnavailable

STREAM: Final = "stockade:audit"
HEAD_KEY: Final = "stockade:audit:head"

BATCH: Final = 500
"""Entries read per XRANGE while walking the whole log."""

APPEND_ATTEMPTS: Final = 100
"""Each lost race means another writer's entry went in, so this many concurrent
writers can all get through; past it, the append gives up rather than spin."""
_BACKOFF_S: Final = 0.002
"""Up to this, times the attempt, spreads writers that keep colliding."""

_FIELDS: Final = ("seq", "at", "actor", "action", "target", "detail", "outcome", "prev", "hash")
_HEX: Final = frozenset("0123456789abcdef")

RawFields = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]
_Row = tuple[bytes | str | None, dict[bytes | str, bytes | str] | None]


def entry_fields(entry: AuditEntry) -> dict[str, str]:
    """The stream fields of `entry`; `at` as repr, which reads back to the same float."""
    return {
        "seq": str(entry.seq),
        "at": repr(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "detail": entry.detail,
        "outcome": entry.outcome,
        "prev": entry.prev,
        "hash": entry.hash,
    }


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _is_hash(value: str) -> bool:
    return len(value) == 64 and set(value) <= _HEX


def parse_entry(fields: RawFields) -> AuditEntry:
    """The entry stored in `fields`; EnvelopeError naming the problem if they are not one."""
    try:
        text = {_text(k): _text(v) for k, v in fields.items()}
    except UnicodeDecodeError:
        raise EnvelopeError("a field is not UTF-8") from None
    missing = [name for name in _FIELDS if name not in text]
    if missing:
        raise EnvelopeError(f"missing field {missing[0]!r}")
    extra = sorted(set(text) - set(_FIELDS))
    if extra:
        raise EnvelopeError(f"unexpected field {extra[0][:40]!r}")
    try:
        seq = int(text["seq"])
        at = float(text["at"])
    except ValueError:
        raise EnvelopeError("seq or time is not a number") from None
    if seq < 1 or not math.isfinite(at):
        raise EnvelopeError("seq or time is out of range")
    if not (_is_hash(text["prev"]) and _is_hash(text["hash"])):
        raise EnvelopeError("prev or hash is not 64 hex digits")
    return AuditEntry(
        seq=seq,
        at=at,
        actor=text["actor"],
        action=text["action"],
        target=text["target"],
        detail=text["detail"],
        outcome=text["outcome"],
        prev=text["prev"],
        hash=text["hash"],
    )


def parse_head(raw: bytes | str | None) -> Head | None:
    """The head stored as "<seq> <hash>"; None if there is none; EnvelopeError if garbled."""
    if raw is None:
        return None
    try:
        seq_text, digest = _text(raw).split(" ")
        seq = int(seq_text)
    except (UnicodeDecodeError, ValueError):
        raise EnvelopeError("the audit head is garbled") from None
    if seq < 1 or not _is_hash(digest):
        raise EnvelopeError("the audit head is garbled")
    return Head(seq, digest)


def _head_value(entry: AuditEntry) -> str:
    return f"{entry.seq} {entry.hash}"


def _stream_id(raw: bytes | str | None) -> str:
    return "" if raw is None else _text(raw)


class AuditLog:
    """Appends to and reads the shared audit chain in Redis."""

    def __init__(self, client: aioredis.Redis, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._clock = clock

    async def append(
        self,
        actor: str,
        action: str,
        target: str = "",
        detail: str = "",
        outcome: Outcome = "ok",
    ) -> AuditEntry:
        """Seal and store the next entry; the entry as stored (strings cleaned and capped).

        Raises RedisUnavailable if Redis does not answer or the head stays contended, and
        EnvelopeError if the head key is garbled: nothing is chained onto a head that was
        tampered with (`stockade audit verify` says so too).
        """
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for attempt in range(APPEND_ATTEMPTS):
                    try:
                        await pipe.watch(HEAD_KEY)
                        head = parse_head(await pipe.get(HEAD_KEY)) or Head()
                        entry = seal(
                            head,
                            at=self._clock(),
                            actor=actor,
                            action=action,
                            target=target,
                            detail=detail,
                            outcome=outcome,
                        )
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.xadd(STREAM, entry_fields(entry))  # type: ignore[arg-type]
                        pipe.set(HEAD_KEY, _head_value(entry))
                        await pipe.execute()
                    except WatchError:
                        await asyncio.sleep(random.uniform(0, _BACKOFF_S * (attempt + 1)))
                        continue
                    return entry
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RedisUnavailable(f"audit entry not written: {type(exc).__name__}") from None
        raise RedisUnavailable(
            f"audit entry not written: the head changed under it {APPEND_ATTEMPTS} times"
        )

    async def tail(self, n: int) -> list[AuditEntry]:
        """The last `n` entries, oldest first; EnvelopeError if one of them is malformed."""
        if n <= 0:
            return []
        try:
            rows = await self._client.xrevrange(STREAM, "+", "-", count=n)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RedisUnavailable(f"audit log not read: {type(exc).__name__}") from None
        return [_parse_row(stream_id, fields) for stream_id, fields in reversed(rows or [])]

    async def entries(self) -> AsyncIterator[AuditEntry]:
        """Every entry, oldest first, read in batches; EnvelopeError at a malformed one."""
        async for stream_id, fields in self._rows("+"):
            yield _parse_row(stream_id, fields)

    async def head(self) -> Head | None:
        """What the head key says the last entry is; None before the first append."""
        try:
            raw = await self._client.get(HEAD_KEY)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RedisUnavailable(f"audit head not read: {type(exc).__name__}") from None
        return parse_head(raw)

    async def verify(self, pinned: str | None = None) -> Verdict:
        """Check the whole chain and its head, and that it holds the `pinned` entry when
        one is given; a malformed entry or head is a finding."""
        verifier = Verifier(pinned)
        # The head and the last stream id are read in one transaction, and only entries
        # up to that id are walked: appends made meanwhile are neither checked nor
        # mistaken for entries beyond the head.
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(HEAD_KEY)
                pipe.xrevrange(STREAM, "+", "-", count=1)
                raw_head, last_rows = await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise RedisUnavailable(f"audit log not read: {type(exc).__name__}") from None
        head: Head | None
        try:
            head = parse_head(raw_head) or Head()
            garbled = ""
        except EnvelopeError as exc:
            head, garbled = None, str(exc)
        if last_rows:
            async with contextlib.aclosing(self._rows(_stream_id(last_rows[0][0]))) as rows:
                async for stream_id, fields in rows:
                    try:
                        entry = parse_entry(fields or {})
                    except EnvelopeError as exc:
                        verifier.malformed(f"with stream id {_stream_id(stream_id)}", str(exc))
                        break
                    if not verifier.feed(entry):
                        break
        verdict = verifier.finish(head)
        if verdict.ok and garbled:
            reason = f"{garbled}: it should hold the last entry's seq and hash"
            return Verdict(False, verdict.checked, verdict.head, None, reason)
        return verdict

    async def _rows(self, until: str) -> AsyncGenerator[_Row, None]:
        start = "-"
        while True:
            try:
                rows = await self._client.xrange(STREAM, start, until, count=BATCH)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise RedisUnavailable(f"audit log not read: {type(exc).__name__}") from None
            rows = rows or []
            for row in rows:
                yield row
            if len(rows) < BATCH:
                return
            start = "(" + _stream_id(rows[-1][0])


def _parse_row(stream_id: bytes | str | None, fields: RawFields | None) -> AuditEntry:
    try:
        return parse_entry(fields or {})
    except EnvelopeError as exc:
        raise EnvelopeError(f"audit record {_stream_id(stream_id)} is malformed: {exc}") from None
