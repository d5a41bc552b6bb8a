"""The spend ledger, and rebuilding Redis's budget state from it after Redis lost it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.errors import BudgetUnavailable
from gateway.policy import BudgetGate, Ledger, Outcome
from gateway.policy._budget_store import EXPIRY_KEY, PREFIX, REBUILD_KEY, window_key
from gateway.policy._ledger import Entry, applied_count, decode, encode, read_month, replay
from gateway.policy.budget import Period, Scope, worst_case
from gateway.settings import BudgetSettings, Caps
from tests.gateway.policy._budget import NOON, PRICE, Clock

ROOMY = BudgetSettings(user=Caps(daily_usd=100, monthly_usd=1_000), total=Caps())


def entry(op: str, rid: str, **fields: Any) -> Entry:
    base: dict[str, Any] = {
        "t": NOON,
        "user": "alice",
        "model": "m",
        "day": "2026-11-22",
        "month": "2026-11",
    }
    return Entry(op=op, id=rid, **(base | fields))  # type: ignore[arg-type]


async def budget_state(redis: aioredis.Redis) -> dict[str, Any]:
    """Every budget key that a rebuild restores, with its value."""
    state: dict[str, Any] = {}
    for raw in sorted(await redis.keys(PREFIX + "*")):
        key = raw.decode()
        if key.startswith((PREFIX + "done:", PREFIX + "warned:")):
            continue
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            state[key] = await redis.hgetall(key)
        elif kind == "zset":
            state[key] = await redis.zrange(key, 0, -1, withscores=True)
        else:
            state[key] = await redis.get(key)
    return state


# -- the file format -----------------------------------------------------------------------


def test_records_round_trip_as_one_ascii_line() -> None:
    record = entry("reserve", "r1", nano=5, max_tokens=7, expires_at=NOON + 900, user="ü:\n")
    line = encode(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert decode(line) == record


def test_malformed_and_cut_lines_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = encode(entry("settle", "r1", nano=3))
    other = encode(entry("reserve", "r2", nano=9))
    (tmp_path / "2026-11.h.1.a.jsonl").write_bytes(good + b'{"v":1,"op":"nope"}\n' + other[:20])
    (tmp_path / "2026-11.h.2.b.jsonl").write_bytes(b"not json\n" + other)
    (tmp_path / "2026-10.h.1.a.jsonl").write_bytes(encode(entry("settle", "old", month="2026-10")))
    entries = read_month(tmp_path, "2026-11")
    assert sorted(e.id for e in entries) == ["r1", "r2"]
    assert "skipped 2 malformed lines" in caplog.text


async def test_each_process_appends_to_its_own_file_per_month(tmp_path: Path) -> None:
    async with Ledger(tmp_path) as one, Ledger(tmp_path) as two:
        one.append(entry("reserve", "a"))
        two.append(entry("reserve", "b"))
        one.append(entry("reserve", "c", month="2026-12", day="2026-12-01"))
        await one.sync()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3
    assert all(name.endswith(".jsonl") for name in files)
    assert sum(name.startswith("2026-11.") for name in files) == 2
    assert {e.id for e in read_month(tmp_path, "2026-11")} == {"a", "b"}
    assert (tmp_path / files[0]).stat().st_mode & 0o777 == 0o600


async def test_closing_the_ledger_closes_its_files(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    async with ledger:
        ledger.append(entry("reserve", "a"))
        fds = list(ledger._fds.values())
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_an_unwritable_ledger_refuses(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "missing" / "dir")
    with pytest.raises(BudgetUnavailable, match="ledger"):
        ledger.append(entry("reserve", "a"))


# -- replay --------------------------------------------------------------------------------


def test_replay_bills_settled_expired_and_orphaned_reservations() -> None:
    entries = [
        entry("reserve", "settled", nano=100, expires_at=NOON + 900),
        entry("settle", "settled", nano=40, reserved=100),
        entry("reserve", "reaped", nano=50, expires_at=NOON - 1),
        entry("expire", "reaped", nano=50, reserved=50),
        entry("reserve", "refused", nano=70, expires_at=NOON + 900),
        entry("denied", "refused", reason="user day"),
        entry("reserve", "orphan", nano=30, expires_at=NOON - 5, user="bob"),
        entry("reserve", "running", nano=20, expires_at=NOON + 5, model="n"),
    ]
    state = replay(entries, NOON)
    assert state.windows[("user", "day", "2026-11-22", "alice")] == [40 + 50 + 20, 20]
    assert state.windows[("user", "day", "2026-11-22", "bob")] == [30, 0]
    assert state.windows[("total", "month", "2026-11", "")] == [40 + 50 + 30 + 20, 20]
    assert state.models[("alice", "2026-11")] == {"m": 90}
    assert state.models[("bob", "2026-11")] == {"m": 30}
    assert [e.id for e in state.open] == ["running"]
    assert [(e.op, e.id, e.nano, e.reserved) for e in state.expired] == [
        ("expire", "orphan", 30, 30)
    ]
    # reserves made (settled, reaped, orphan, running) + finishes (settled, reaped, orphan)
    assert state.applied == 7


def test_a_finish_proves_its_reserve_even_after_a_denial_record() -> None:
    entries = [
        entry("reserve", "r", nano=10),
        entry("denied", "r", reason="script error"),
        entry("settle", "r", nano=4, reserved=10),
    ]
    assert applied_count(entries) == 2
    assert replay(entries, NOON).windows[("user", "day", "2026-11-22", "alice")] == [4, 0]


# -- recovery ------------------------------------------------------------------------------


async def busy_day(gate: BudgetGate, clock: Clock) -> list[str]:
    """Settled, reaped and still-running reservations of two users on two models."""
    running = []
    for i in range(6):
        user = "alice" if i % 2 else "bob"
        reservation = await gate.reserve(user, f"model-{i % 3}", PRICE, 1_000 + i, 500)
        clock.now += 1
        if i % 3 == 0:
            running.append(reservation.id)
        else:
            await gate.settle(reservation.id, 1_000_000 + i, 1_000, 100)
    short = await gate.reserve("carol", "m", PRICE, 10, 10)
    clock.now += 901
    assert await gate.reap() == 3  # carol's, and two of the running ones
    assert short.id
    running.append((await gate.reserve("alice", "m", PRICE, 5, 5)).id)
    return running


async def test_after_flushall_recover_rebuilds_identical_state(
    redis: aioredis.Redis, ledger: Ledger
) -> None:
    clock = Clock()
    gate = BudgetGate(redis, ROOMY, ledger, clock=clock)
    await busy_day(gate, clock)
    before = await budget_state(redis)
    assert await gate.recover() is False  # nothing lost: nothing to do
    await redis.flushall()
    assert await gate.recover() is True
    assert await budget_state(redis) == before
    assert await gate.recover() is False


async def test_a_stale_snapshot_is_noticed_and_replaced(
    redis: aioredis.Redis, ledger: Ledger
) -> None:
    clock = Clock()
    gate = BudgetGate(redis, ROOMY, ledger, clock=clock)
    first = await gate.reserve("alice", "m", PRICE, 1_000, 500)
    snapshot = {key: await redis.dump(key) for key in await redis.keys(PREFIX + "*")}
    await gate.settle(first.id, 2_000_000, 1_000, 200)
    for _ in range(3):
        await gate.settle((await gate.reserve("alice", "m", PRICE, 1_000, 500)).id, 7, 1, 1)
    after = await budget_state(redis)
    # Redis restarts from the snapshot taken after the first reserve.
    await redis.flushall()
    for key, value in snapshot.items():
        await redis.restore(key, 0, value)
    assert await gate.recover() is True
    assert await budget_state(redis) == after
    # The stale reservation is gone: settling it again changes nothing.
    assert (await gate.settle(first.id, 1, 1, 1)).outcome is not Outcome.SETTLED


async def test_a_reserve_recorded_without_outcome_is_billed_at_its_worst_case(
    redis: aioredis.Redis, ledger: Ledger
) -> None:
    clock = Clock()
    gate = BudgetGate(redis, ROOMY, ledger, clock=clock)
    # A process crashed after writing its reserve record, before running the script.
    ledger.append(entry("reserve", "2026-11-22:00000000000000aa:alice", nano=5_000_000,
                        expires_at=NOON - 1))  # fmt: skip
    ledger.append(entry("reserve", "2026-11-22:00000000000000bb:alice", nano=3_000_000,
                        max_tokens=9, expires_at=NOON + 60))  # fmt: skip
    assert await gate.recover() is True
    key = window_key(Scope.USER, Period.DAY, "2026-11-22", "alice")
    assert await redis.hmget(key, ["used", "held"]) == [b"8000000", b"3000000"]
    assert await redis.zcard(EXPIRY_KEY) == 1
    ops = sorted(e.op for e in read_month(ledger.directory, "2026-11"))
    assert ops == ["expire", "reserve", "reserve"]
    # The running one still settles normally...
    settled = await gate.settle("2026-11-22:00000000000000bb:alice", 1_000_000, 1, 1)
    assert settled.outcome is Outcome.SETTLED
    assert await redis.hmget(key, ["used", "held"]) == [b"6000000", b"0"]
    assert await gate.recover() is False
    await redis.flushall()
    assert await gate.recover() is True
    assert await redis.hmget(key, ["used", "held"]) == [b"6000000", b"0"]


async def test_every_call_is_refused_while_a_rebuild_runs(
    redis: aioredis.Redis, ledger: Ledger
) -> None:
    gate = BudgetGate(redis, ROOMY, ledger, clock=Clock())
    reservation = await gate.reserve("alice", "m", PRICE, 10, 10)
    await redis.set(REBUILD_KEY, "someone", px=400)
    with pytest.raises(BudgetUnavailable, match="rebuilding"):
        await gate.reserve("alice", "m", PRICE, 10, 10)
    assert await gate.reap() == 0
    # A settlement waits for the rebuild to finish rather than fail.
    settled = await gate.settle(reservation.id, 1, 1, 1)
    assert settled.outcome is Outcome.SETTLED
    denied = [e for e in read_month(ledger.directory, "2026-11") if e.op == "denied"]
    assert [e.reason for e in denied] == ["rebuilding"]


async def test_two_gates_recovering_at_once_rebuild_once(
    redis: aioredis.Redis, ledger: Ledger
) -> None:
    clock = Clock()
    gate = BudgetGate(redis, ROOMY, ledger, clock=clock)
    await busy_day(gate, clock)
    before = await budget_state(redis)
    await redis.flushall()
    others = [BudgetGate(redis, ROOMY, ledger, clock=clock) for _ in range(3)]
    done = await asyncio.gather(*(g.recover() for g in [gate, *others]))
    assert sorted(done) == [False, False, False, True]
    assert await budget_state(redis) == before


async def test_usage_after_a_rebuild(redis: aioredis.Redis, ledger: Ledger) -> None:
    clock = Clock()
    gate = BudgetGate(redis, ROOMY, ledger, clock=clock)
    reservation = await gate.reserve("alice", "gpt", PRICE, 1_000, 500)
    await gate.settle(reservation.id, 3_000_000, 1_000, 500)
    held = await gate.reserve("alice", "gpt", PRICE, 1_000, 500)
    await redis.flushall()
    await gate.recover()
    usage = await gate.usage("alice")
    today = usage.window(Scope.USER, Period.DAY)
    assert (today.spent_nano, today.held_nano) == (3_000_000, held.reserved_nano)
    assert held.reserved_nano == worst_case(PRICE, 1_000, 500)
    assert usage.models == (("gpt", 3_000_000),)
