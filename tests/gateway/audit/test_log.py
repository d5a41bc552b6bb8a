"""The audit log on a real Redis: one chain from many writers, and tampering found."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.audit import HEAD_KEY, STREAM, AuditEntry, AuditLog, Head, seal
from gateway.audit._log import BATCH, entry_fields, parse_entry
from gateway.errors import EnvelopeError, RedisUnavailable
from tests.services import RedisProcess

ADMIN = "u00000000000a11ce"
USER = "u0000000000000b0b"


async def filled(redis: aioredis.Redis, n: int) -> list[AuditEntry]:
    log = AuditLog(redis)
    return [await log.append(ADMIN, "kill", USER, f"#{i}") for i in range(n)]


async def stream_ids(redis: aioredis.Redis) -> list[bytes]:
    return [row[0] for row in await redis.xrange(STREAM)]


async def test_append_stores_an_entry_that_reads_back_the_same(redis: aioredis.Redis) -> None:
    log = AuditLog(redis, clock=lambda: 1234.5)
    entry = await log.append(ADMIN, "budget.set", USER, "daily $5", "ok")

    assert entry.seq == 1 and entry.at == 1234.5
    assert await log.tail(5) == [entry]
    assert [e async for e in log.entries()] == [entry]
    assert await log.head() == Head(1, entry.hash)


async def test_append_cleans_values_before_sealing_them(redis: aioredis.Redis) -> None:
    log = AuditLog(redis)
    entry = await log.append(ADMIN, "allow", "eve\nok", "x" * 2000, "refused")

    assert entry.target == "eve\ufffdok"
    assert len(entry.detail) == 500
    assert await log.tail(1) == [entry]
    assert (await log.verify()).ok


async def test_tail_gives_the_last_entries_oldest_first(redis: aioredis.Redis) -> None:
    entries = await filled(redis, 7)
    log = AuditLog(redis)

    assert await log.tail(3) == entries[4:]
    assert await log.tail(100) == entries
    assert await log.tail(0) == []


async def test_concurrent_appends_from_several_clients_form_one_chain(
    redis_server: RedisProcess, redis: aioredis.Redis
) -> None:
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(5)]
    try:
        logs = [AuditLog(client) for client in clients]
        written = await asyncio.gather(
            *(logs[i % 5].append(f"u{i:016x}", "pause", USER, f"writer {i}") for i in range(50))
        )
    finally:
        for client in clients:
            await client.aclose()

    assert sorted(e.seq for e in written) == list(range(1, 51))
    stored = [e async for e in AuditLog(redis).entries()]
    assert [e.seq for e in stored] == list(range(1, 51))
    assert sorted(stored, key=lambda e: e.seq) == sorted(written, key=lambda e: e.seq)
    verdict = await AuditLog(redis).verify()
    assert verdict.ok and verdict.checked == 50
    assert verdict.head == stored[-1].hash


async def test_verify_while_others_append_sees_no_false_fault(redis: aioredis.Redis) -> None:
    log = AuditLog(redis)
    await filled(redis, 5)

    async def appends() -> None:
        for i in range(30):
            await log.append("system", "resume", USER, str(i))

    writer = asyncio.create_task(appends())
    verdicts = await asyncio.gather(*(log.verify() for _ in range(10)))
    await writer

    assert all(v.ok for v in verdicts), [v.reason for v in verdicts]
    assert (await log.verify()).checked == 35


async def test_entries_walks_a_log_longer_than_one_batch_in_order(redis: aioredis.Redis) -> None:
    head = Head()
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(BATCH * 2 + 3):
            entry = seal(head, at=float(i), actor="system", action="allow", target=str(i))
            pipe.xadd(STREAM, entry_fields(entry))
            head = Head(entry.seq, entry.hash)
        pipe.set(HEAD_KEY, f"{head.seq} {head.hash}")
        await pipe.execute()
    log = AuditLog(redis)

    seqs = [e.seq async for e in log.entries()]
    verdict = await log.verify()

    assert seqs == list(range(1, BATCH * 2 + 4))
    assert verdict.ok and verdict.checked == BATCH * 2 + 3


async def test_an_edited_entry_is_found(redis: aioredis.Redis) -> None:
    entries = await filled(redis, 10)
    await redis.delete(STREAM)
    for entry in entries:
        fields = entry_fields(entry)
        if entry.seq == 7:
            fields["detail"] = "nothing to see"
        await redis.xadd(STREAM, fields)

    verdict = await AuditLog(redis).verify()

    assert not verdict.ok
    assert verdict.bad_seq == 7
    assert verdict.checked == 6
    assert verdict.reason == "entry 7 was changed: its hash does not match its content"


async def test_a_deleted_entry_is_found(redis: aioredis.Redis) -> None:
    await filled(redis, 10)
    await redis.xdel(STREAM, (await stream_ids(redis))[7])

    verdict = await AuditLog(redis).verify()

    assert verdict.bad_seq == 8
    assert verdict.reason == "entry 8 is missing: 7 is followed by 9"


async def test_entries_cut_from_the_end_are_found(redis: aioredis.Redis) -> None:
    await filled(redis, 10)
    await redis.xdel(STREAM, (await stream_ids(redis))[-1])

    verdict = await AuditLog(redis).verify()

    assert verdict.bad_seq == 10
    assert verdict.reason == "the log ends at 9 but its head says 10: entries were cut from the end"


async def test_a_deleted_head_is_found(redis: aioredis.Redis) -> None:
    await filled(redis, 3)
    await redis.delete(HEAD_KEY)

    verdict = await AuditLog(redis).verify()

    assert not verdict.ok
    assert "its head says 0" in verdict.reason


async def test_a_garbled_head_is_reported_not_raised(redis: aioredis.Redis) -> None:
    await filled(redis, 3)
    await redis.set(HEAD_KEY, b"\xff garbage")

    verdict = await AuditLog(redis).verify()

    assert not verdict.ok
    assert verdict.checked == 3
    assert "head is garbled" in verdict.reason


async def test_a_malformed_stream_entry_is_a_bad_entry_not_a_crash(redis: aioredis.Redis) -> None:
    await filled(redis, 4)
    garbage_id = (await redis.xadd(STREAM, {"seq": "five", "junk": b"\xff\xfe"})).decode()
    log = AuditLog(redis)

    verdict = await log.verify()

    assert not verdict.ok
    assert verdict.bad_seq == 5
    assert verdict.checked == 4
    assert f"the record with stream id {garbage_id} after entry 4 is not a valid entry" in (
        verdict.reason
    )
    with pytest.raises(EnvelopeError, match=garbage_id):
        await log.tail(2)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"seq": "0"}, "out of range"),
        ({"at": "inf"}, "out of range"),
        ({"at": "soon"}, "not a number"),
        ({"hash": "zz"}, "64 hex"),
        ({"extra": "x"}, "unexpected field"),
    ],
)
def test_parse_entry_names_what_is_wrong(change: dict[str, str], problem: str) -> None:
    fields = entry_fields(seal(Head(), at=1.0, actor="system", action="allow"))
    with pytest.raises(EnvelopeError, match=problem):
        parse_entry({**fields, **change})


def test_an_entry_stamped_by_an_integer_clock_reads_back_with_the_same_hash() -> None:
    entry = seal(Head(), at=1_795_341_845, actor="system", action="allow")
    assert parse_entry(entry_fields(entry)).computed_hash() == entry.hash


def test_parse_entry_reads_bytes_fields_back_to_the_same_entry() -> None:
    entry = seal(Head(), at=0.1 + 0.2, actor="cli:root", action="model.set", detail="ü 🎉")
    raw = {k.encode(): v.encode() for k, v in entry_fields(entry).items()}
    assert parse_entry(raw) == entry
    assert parse_entry(raw).computed_hash() == entry.hash


async def test_a_redis_outage_raises_redis_unavailable(tmp_path: Path) -> None:
    # No retries: redis-py's default backoff would spend seconds on each call.
    gone = aioredis.Redis(unix_socket_path=str(tmp_path / "none.sock"), retry=Retry(NoBackoff(), 0))
    log = AuditLog(gone)
    try:
        with pytest.raises(RedisUnavailable):
            await log.append(ADMIN, "kill", USER)
        with pytest.raises(RedisUnavailable):
            await log.tail(5)
        with pytest.raises(RedisUnavailable):
            await log.verify()
        with pytest.raises(RedisUnavailable):
            [e async for e in log.entries()]
    finally:
        await gone.aclose()


async def test_nothing_is_chained_onto_a_garbled_head(redis: aioredis.Redis) -> None:
    await filled(redis, 2)
    await redis.set(HEAD_KEY, "2 not-a-hash")

    with pytest.raises(EnvelopeError, match="garbled"):
        await AuditLog(redis).append(ADMIN, "kill", USER)

    assert await redis.xlen(STREAM) == 2
