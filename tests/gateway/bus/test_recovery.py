"""Recovery: a restarted consumer, a SIGKILLed consumer process, a restarted Redis."""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.bus import IN_STREAM, Bus, Delivery
from gateway.errors import RedisUnavailable
from gateway.settings import BusSettings
from tests.services import RedisProcess

from . import FAST, consuming, eventually, inbound
from ._consumer_proc import EFFECTS_KEY, FORWARD_STREAM, STALLED_KEY, apply

REPO_ROOT = Path(__file__).resolve().parents[3]
BATCH = 1_000


async def test_restarted_consumer_rereads_its_own_pending_entries_first(
    redis: aioredis.Redis,
) -> None:
    settings = BusSettings(claim_idle_ms=60_000, block_ms=20)
    before = Bus(redis, settings)
    await before.ensure_group(IN_STREAM, "router")
    for i in range(5):
        await before.publish(IN_STREAM, inbound(i))
    unacked = await before.read(IN_STREAM, "router", "r1")
    for i in range(5, 8):
        await before.publish(IN_STREAM, inbound(i))

    after = Bus(redis, settings)  # the same consumer name, after a restart
    first = await after.read(IN_STREAM, "router", "r1", count=3)
    second = await after.read(IN_STREAM, "router", "r1", count=3)
    third = await after.read(IN_STREAM, "router", "r1", count=3)

    assert [d.entry_id for d in first + second[:2]] == [d.entry_id for d in unacked]
    assert {d.deliveries for d in first + second[:2]} == {2}
    assert [d.envelope.event_id for d in second[2:] + third] == ["5", "6", "7"]
    assert {d.deliveries for d in second[2:] + third} == {1}


async def test_failed_entry_is_not_reread_at_once_by_its_own_consumer(
    redis: aioredis.Redis,
) -> None:
    bus = Bus(redis, BusSettings(claim_idle_ms=60_000, block_ms=20))
    await bus.ensure_group(IN_STREAM, "router")
    await bus.publish(IN_STREAM, inbound(1))
    (delivery,) = await bus.read(IN_STREAM, "router", "r1")
    await bus.fail(delivery, "try later")
    # The retry waits for claim_idle_ms; a hot loop on a failing entry would not.
    assert await bus.read(IN_STREAM, "router", "r1", block_ms=0) == []


@pytest.fixture
async def consumer_procs() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Started consumer processes; any still running at the end are killed."""
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["effect", "forward"])
async def test_sigkilled_consumer_loses_nothing_and_duplicates_nothing(
    redis: aioredis.Redis,
    redis_server: RedisProcess,
    consumer_procs: list[asyncio.subprocess.Process],
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Bus(redis, BusSettings(claim_idle_ms=200, block_ms=50))
    await bus.ensure_group(IN_STREAM, "router")
    for i in range(BATCH):
        await bus.publish(IN_STREAM, inbound(i))

    stall_after = 250
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.gateway.bus._consumer_proc",
        redis_server.url,
        IN_STREAM,
        "router",
        "doomed",
        mode,
        str(stall_after),
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    consumer_procs.append(proc)

    async def stalled() -> bool:
        assert proc.returncode is None, f"consumer process exited with {proc.returncode}"
        return bool(await redis.exists(STALLED_KEY))

    await eventually(stalled, within=20)
    proc.kill()  # SIGKILL: no cleanup, no last ack
    await asyncio.wait_for(proc.wait(), timeout=10)

    assert await _done(redis, mode) == stall_after
    held = await redis.xpending_range(IN_STREAM, "router", "-", "+", BATCH, "doomed")
    assert held, "the killed consumer should have died holding unacked entries"

    reclaimed: list[Delivery] = []
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(delivery.entry_id)
        if delivery.deliveries > 1:
            reclaimed.append(delivery)
        await apply(redis, bus, mode, delivery)

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="stockade.bus"):
        async with consuming(bus, IN_STREAM, "router", "survivor", handler):

            async def finished() -> bool:
                summary = await redis.xpending(IN_STREAM, "router")
                return await _done(redis, mode) == BATCH and summary["pending"] == 0

            await eventually(finished, within=30)
    recovery_s = time.monotonic() - started

    held_ids = {p["message_id"].decode() for p in held}
    reclaimed_ids = {d.entry_id for d in reclaimed}
    assert held_ids <= reclaimed_ids
    assert len(handled) == len(set(handled)), "an entry was handled twice"
    if reclaimed_ids - held_ids:
        # The survivor's own batch ran past claim_idle_ms (a slow host): the bus left
        # its unhandled tail to the reclaim pass, and says so.
        slow = [r for r in caplog.records if "slow for claim_idle_ms" in r.getMessage()]
        assert slow, f"reclaimed entries nobody held: {sorted(reclaimed_ids - held_ids)}"
    if mode == "effect":
        effects = await redis.hgetall(EFFECTS_KEY)
        assert sorted(int(k) for k in effects) == list(range(BATCH))
        assert set(effects.values()) == {b"1"}
    else:
        forwarded = await redis.xrange(FORWARD_STREAM)
        event_ids = [int(fields[b"event_id"]) for _, fields in forwarded]
        assert sorted(event_ids) == list(range(BATCH))
    assert await bus.lag(IN_STREAM, "router") == 0
    assert recovery_s < 30


async def _done(redis: aioredis.Redis, mode: str) -> int:
    if mode == "effect":
        return int(await redis.hlen(EFFECTS_KEY))
    return int(await redis.xlen(FORWARD_STREAM))


@pytest.mark.slow
async def test_consume_rides_out_a_redis_restart_and_logs_the_outage_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with tempfile.TemporaryDirectory(prefix="stk-b-", dir="/tmp") as tmp:
        server = RedisProcess(Path(tmp), appendonly=True)
        server.start()
        client = aioredis.Redis.from_url(server.url)
        try:
            bus = Bus(client, FAST)
            seen: list[str] = []

            async def handler(delivery: Delivery) -> None:
                seen.append(delivery.envelope.event_id)

            with caplog.at_level(logging.WARNING, logger="stockade.bus"):
                async with consuming(bus, IN_STREAM, "router", "r1", handler):
                    await bus.publish(IN_STREAM, inbound(1))
                    await eventually(lambda: _seen(seen, 1))
                    server.stop()
                    await asyncio.sleep(0.5)  # the loop meets the outage and backs off
                    server.start()
                    await eventually(lambda: _published(bus, 2))
                    await eventually(lambda: _seen(seen, 2))
        finally:
            await client.aclose()
            server.stop()
    assert seen == ["1", "2"]
    outages = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outages) == 1


async def _seen(seen: list[str], n: int) -> bool:
    return len(seen) >= n


async def _published(bus: Bus, event_id: int) -> bool:
    try:
        await bus.publish(IN_STREAM, inbound(event_id))
    except RedisUnavailable:
        return False
    return True
