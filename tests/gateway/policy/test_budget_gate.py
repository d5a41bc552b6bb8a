"""The budget gate on a real Redis: reserve, clamp, settle, warn, reap, fail closed."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.errors import BudgetExceeded, BudgetUnavailable, ConfigError
from gateway.policy import BudgetGate, Ledger, Outcome, Reservation, TokenPrice
from gateway.policy._budget_store import EXPIRY_KEY, PREFIX, window_key
from gateway.policy._ledger import applied_count, read_month
from gateway.policy.budget import (
    Period,
    Scope,
    affordable_max_tokens,
    cost_nano,
    input_cost_nano,
    output_cost_nano,
    usd_to_nano,
    worst_case,
)
from gateway.settings import BudgetSettings, Caps, Price
from tests.gateway.policy._budget import NOON, PRICE, Clock
from tests.services import RedisProcess

REPO_ROOT = Path(__file__).resolve().parents[3]
UNCAPPED = Caps(daily_usd=None, monthly_usd=None)


@pytest.fixture
def clock() -> Clock:
    return Clock()


GateFactory = Callable[..., BudgetGate]


@pytest.fixture
def make_gate(redis: aioredis.Redis, ledger: Ledger, clock: Clock) -> GateFactory:
    def make(**settings: Any) -> BudgetGate:
        return BudgetGate(redis, BudgetSettings(**settings), ledger, clock=clock)

    return make


async def counters(
    redis: aioredis.Redis, scope: Scope, period: Period, key: str, user: str = ""
) -> tuple[int, int]:
    used, held = await redis.hmget(window_key(scope, period, key, user), ["used", "held"])
    return int(used or 0), int(held or 0)


async def day_used(redis: aioredis.Redis, user: str, day: str = "2026-11-22") -> int:
    return (await counters(redis, Scope.USER, Period.DAY, day, user))[0]


# -- reserve and settle --------------------------------------------------------------------


async def test_reserve_holds_the_worst_case_in_all_four_windows(
    redis: aioredis.Redis, make_gate: GateFactory
) -> None:
    gate = make_gate()
    reservation = await gate.reserve("alice", "m", PRICE, 1_000, 500)
    assert reservation.max_tokens == 500
    assert reservation.reserved_nano == worst_case(PRICE, 1_000, 500)
    assert (reservation.day, reservation.month) == ("2026-11-22", "2026-11")
    assert reservation.expires_at == NOON + 900
    for scope, period, key, user in [
        (Scope.USER, Period.DAY, "2026-11-22", "alice"),
        (Scope.USER, Period.MONTH, "2026-11", "alice"),
        (Scope.TOTAL, Period.DAY, "2026-11-22", ""),
        (Scope.TOTAL, Period.MONTH, "2026-11", ""),
    ]:
        assert await counters(redis, scope, period, key, user) == (
            reservation.reserved_nano,
            reservation.reserved_nano,
        )
    assert await redis.zscore(EXPIRY_KEY, reservation.id) == NOON + 900


async def test_settle_bills_the_real_cost_and_releases_the_rest(
    redis: aioredis.Redis, make_gate: GateFactory
) -> None:
    gate = make_gate()
    reservation = await gate.reserve("alice", "m", PRICE, 1_000, 500)
    cost = cost_nano(PRICE, 800, 120)
    settlement = await gate.settle(reservation.id, cost, 800, 120)
    assert settlement.outcome is Outcome.SETTLED
    assert (settlement.billed_nano, settlement.reserved_nano) == (cost, reservation.reserved_nano)
    assert await counters(redis, Scope.USER, Period.DAY, "2026-11-22", "alice") == (cost, 0)
    assert await counters(redis, Scope.TOTAL, Period.MONTH, "2026-11") == (cost, 0)
    assert await redis.zcard(EXPIRY_KEY) == 0
    usage = await gate.usage("alice")
    assert usage.window(Scope.USER, Period.DAY).spent_nano == cost
    assert usage.models == (("m", cost),)


async def test_settling_twice_changes_nothing(
    redis: aioredis.Redis, make_gate: GateFactory
) -> None:
    gate = make_gate()
    reservation = await gate.reserve("alice", "m", PRICE, 1_000, 500)
    first = await gate.settle(reservation.id, 5_000_000, 1_000, 1_000)
    second = await gate.settle(reservation.id, 7_000_000, 1_000, 1_500)
    assert first.outcome is Outcome.SETTLED
    assert second.outcome is Outcome.ALREADY_SETTLED
    assert second.billed_nano == 0
    assert await day_used(redis, "alice") == 5_000_000
    assert (await gate.usage("alice")).models == (("m", 5_000_000),)


async def test_a_cost_above_the_reservation_is_billed_in_full(
    redis: aioredis.Redis, make_gate: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gate = make_gate()
    reservation = await gate.reserve("alice", "m", PRICE, 10, 10)
    settlement = await gate.settle(reservation.id, reservation.reserved_nano + 1_000, 10, 10)
    assert settlement.billed_nano == reservation.reserved_nano + 1_000
    assert await day_used(redis, "alice") == reservation.reserved_nano + 1_000
    assert "above its reservation" in caplog.text


async def test_settling_an_unknown_id_is_a_no_op(make_gate: GateFactory) -> None:
    gate = make_gate()
    settlement = await gate.settle("2026-11-22:0123456789abcdef:alice", 5, 1, 1)
    assert settlement.outcome is Outcome.UNKNOWN
    with pytest.raises(ValueError, match="reservation id"):
        await gate.settle("not-an-id", 5, 1, 1)


async def test_max_tokens_is_clamped_to_what_the_cap_still_pays(
    redis: aioredis.Redis, make_gate: GateFactory
) -> None:
    gate = make_gate(user=Caps(daily_usd=0.01, monthly_usd=1), total=UNCAPPED)
    # $0.01 = 10,000,000 nano: the prompt takes 1,000,000, leaving 2,250 output tokens.
    reservation = await gate.reserve("alice", "m", PRICE, 1_000, 100_000)
    assert reservation.max_tokens == 2_250
    assert reservation.reserved_nano == 10_000_000
    assert await day_used(redis, "alice") == 10_000_000


async def test_the_lua_clamp_is_the_pure_clamp(
    make_gate: GateFactory, redis: aioredis.Redis
) -> None:
    rng = random.Random(7)
    for case in range(150):
        cap_usd = rng.choice([0, 1e-6, 0.001, 0.37, 5, 999_999.99, rng.uniform(0, 50)])
        price = TokenPrice(
            rng.randrange(0, 10**11), rng.choice([0, 1, 37_500, rng.randrange(1, 10**11)])
        )
        prompt = rng.choice([0, 1, rng.randrange(0, 10_000_000)])
        max_tokens = rng.randrange(1, 200_001)
        user = f"u{case}"
        gate = make_gate(overrides={user: Caps(daily_usd=cap_usd)}, total=UNCAPPED)
        cap = usd_to_nano(cap_usd)
        expected = affordable_max_tokens(price, prompt, max_tokens, cap)
        try:
            reservation = await gate.reserve(user, "m", price, prompt, max_tokens)
        except BudgetExceeded:
            assert expected == 0, (cap, price, prompt, max_tokens)
            continue
        assert reservation.max_tokens == expected, (cap, price, prompt, max_tokens)
        assert reservation.reserved_nano == input_cost_nano(price, prompt) + output_cost_nano(
            price, expected
        )
        assert reservation.reserved_nano <= cap
        assert await day_used(redis, user) == reservation.reserved_nano


async def test_a_settings_price_is_accepted(make_gate: GateFactory) -> None:
    gate = make_gate()
    price = Price(input_usd_per_mtok=1, output_usd_per_mtok=4)
    reservation = await gate.reserve("alice", "m", price, 1_000, 500)
    assert reservation.reserved_nano == worst_case(PRICE, 1_000, 500)


# -- caps ----------------------------------------------------------------------------------


async def test_a_zero_cap_refuses_every_call(
    redis: aioredis.Redis, make_gate: GateFactory, ledger: Ledger
) -> None:
    gate = make_gate(user=Caps(daily_usd=0, monthly_usd=20))
    with pytest.raises(BudgetExceeded) as caught:
        await gate.reserve("alice", "m", TokenPrice(0, 0), 0, 1)
    assert caught.value.sentence == "Your daily budget is $0.00, so no model calls can be made."
    assert (caught.value.scope, caught.value.period, caught.value.cap_nano) == ("user", "day", 0)
    assert not caught.value.retryable
    assert await redis.zcard(EXPIRY_KEY) == 0
    assert await day_used(redis, "alice") == 0
    ops = [e.op for e in read_month(ledger.directory, "2026-11")]
    assert ops == ["reserve", "denied"]


async def test_an_exhausted_cap_says_which_window_and_when_it_resets(
    make_gate: GateFactory,
) -> None:
    gate = make_gate(user=Caps(daily_usd=1, monthly_usd=20))
    reservation = await gate.reserve("alice", "m", TokenPrice(10**6, 0), 1_000_000, 1)
    await gate.settle(reservation.id, 10**9, 1_000_000, 0)
    with pytest.raises(BudgetExceeded) as caught:
        await gate.reserve("alice", "m", PRICE, 10, 10)
    assert str(caught.value) == (
        "Your daily budget of $1.00 is used up; it resets at 00:00 UTC (in 12 h)."
    )
    assert caught.value.resets_at == NOON + 12 * 3600
    assert caught.value.remaining_nano == 0


async def test_when_day_and_month_are_both_spent_the_month_is_named(make_gate: GateFactory) -> None:
    gate = make_gate(user=Caps(daily_usd=1, monthly_usd=1))
    reservation = await gate.reserve("alice", "m", TokenPrice(10**6, 0), 1_000_000, 1)
    await gate.settle(reservation.id, 10**9, 1_000_000, 0)
    with pytest.raises(BudgetExceeded) as caught:
        await gate.reserve("alice", "m", PRICE, 10, 10)
    assert caught.value.period == "month"
    assert "monthly budget of $1.00 is used up" in caught.value.sentence


async def test_none_caps_are_not_checked_but_still_counted(
    redis: aioredis.Redis, make_gate: GateFactory
) -> None:
    gate = make_gate(user=UNCAPPED, total=UNCAPPED)
    reservation = await gate.reserve("alice", "m", PRICE, 10_000_000, 200_000)
    assert reservation.max_tokens == 200_000
    assert await day_used(redis, "alice") == worst_case(PRICE, 10_000_000, 200_000)
    usage = await gate.usage("alice")
    assert all(w.cap_nano is None and w.remaining_nano is None for w in usage.windows)


async def test_the_total_cap_binds_across_users(make_gate: GateFactory) -> None:
    one_call = worst_case(PRICE, 1_000, 1_000)
    gate = make_gate(
        user=Caps(daily_usd=100, monthly_usd=100),
        total=Caps(daily_usd=2 * one_call / 1e9, monthly_usd=None),
    )
    await gate.reserve("alice", "m", PRICE, 1_000, 1_000)
    await gate.reserve("bob", "m", PRICE, 1_000, 1_000)
    with pytest.raises(BudgetExceeded) as caught:
        await gate.reserve("carol", "m", PRICE, 1_000, 1_000)
    assert caught.value.scope == "total"
    assert caught.value.sentence.startswith("The daily budget shared by all users is used up")


async def test_an_override_replaces_the_user_caps(make_gate: GateFactory) -> None:
    gate = make_gate(user=Caps(daily_usd=0, monthly_usd=0), overrides={"vip": Caps(daily_usd=5)})
    await gate.reserve("vip", "m", PRICE, 1_000, 1_000)
    with pytest.raises(BudgetExceeded):
        await gate.reserve("alice", "m", PRICE, 1_000, 1_000)


def test_a_cap_too_large_for_exact_arithmetic_is_a_config_error(
    redis: aioredis.Redis, ledger: Ledger
) -> None:
    with pytest.raises(ConfigError, match=r"budget\.overrides\.vip\.monthly_usd"):
        BudgetGate(redis, BudgetSettings(overrides={"vip": Caps(monthly_usd=2e6)}), ledger)


# -- windows and warnings ------------------------------------------------------------------


async def test_a_call_across_midnight_counts_in_the_day_it_started(
    redis: aioredis.Redis, make_gate: GateFactory, clock: Clock
) -> None:
    clock.now = datetime.fromisoformat("2026-11-30T23:59:50+01:00").timestamp()
    gate = make_gate(timezone="Europe/Berlin")
    reservation = await gate.reserve("alice", "m", PRICE, 1_000, 500)
    assert (reservation.day, reservation.month) == ("2026-11-30", "2026-11")
    clock.now += 20  # 00:00:10 on 1 December in Berlin
    await gate.settle(reservation.id, 2_000_000, 1_000, 250)
    assert await counters(redis, Scope.USER, Period.DAY, "2026-11-30", "alice") == (2_000_000, 0)
    assert await counters(redis, Scope.USER, Period.MONTH, "2026-11", "alice") == (2_000_000, 0)
    assert await counters(redis, Scope.TOTAL, Period.DAY, "2026-12-01") == (0, 0)
    usage = await gate.usage("alice")
    assert usage.window(Scope.USER, Period.DAY).key == "2026-12-01"
    assert usage.window(Scope.USER, Period.MONTH).spent_nano == 0
    assert usage.models == ()


async def test_a_new_day_starts_from_zero(make_gate: GateFactory, clock: Clock) -> None:
    gate = make_gate(user=Caps(daily_usd=1, monthly_usd=20))
    reservation = await gate.reserve("alice", "m", TokenPrice(10**6, 0), 1_000_000, 1)
    await gate.settle(reservation.id, 10**9, 1_000_000, 0)
    with pytest.raises(BudgetExceeded):
        await gate.reserve("alice", "m", PRICE, 10, 10)
    clock.now += 12 * 3600  # midnight UTC
    await gate.reserve("alice", "m", PRICE, 10, 10)


async def test_a_user_is_warned_once_per_window(make_gate: GateFactory, clock: Clock) -> None:
    gate = make_gate(user=Caps(daily_usd=1, monthly_usd=100), warn_at=0.8)
    price = TokenPrice(10**6, 0)  # 1,000 nano-dollars per prompt token, output free

    async def spend(nano: int) -> list[tuple[str, str]]:
        reservation = await gate.reserve("alice", "m", price, nano // 1_000, 1)
        settlement = await gate.settle(reservation.id, nano, nano // 1_000, 0)
        return [(w.scope, w.period) for w in settlement.crossed]

    assert await spend(500_000_000) == []
    crossed = await gate.settle(
        (await gate.reserve("alice", "m", price, 350_000, 1)).id, 350_000_000, 0, 0
    )
    assert [(w.scope, w.period, w.spent_nano, w.cap_nano) for w in crossed.crossed] == [
        (Scope.USER, Period.DAY, 850_000_000, 10**9)
    ]
    assert await spend(50_000_000) == []
    clock.now += 86_400
    assert await spend(850_000_000) == [(Scope.USER, Period.DAY)]


async def test_a_warning_for_the_shared_budget(make_gate: GateFactory) -> None:
    gate = make_gate(user=UNCAPPED, total=Caps(daily_usd=1), warn_at=0.5)
    reservation = await gate.reserve("alice", "m", TokenPrice(10**6, 0), 600_000, 1)
    settlement = await gate.settle(reservation.id, 600_000_000, 600_000, 0)
    assert [(w.scope, w.period) for w in settlement.crossed] == [(Scope.TOTAL, Period.DAY)]


# -- expiry and the reaper -----------------------------------------------------------------


async def test_reap_bills_expired_reservations_in_full_once(
    redis: aioredis.Redis, make_gate: GateFactory, clock: Clock, ledger: Ledger
) -> None:
    gate = make_gate(reservation_ttl_s=10)
    kept = await gate.reserve("alice", "m", PRICE, 1_000, 500)
    clock.now += 5
    late = await gate.reserve("alice", "m", PRICE, 1_000, 500)
    clock.now += 6
    assert await gate.reap() == 1
    assert await gate.reap() == 0
    used, held = await counters(redis, Scope.USER, Period.DAY, "2026-11-22", "alice")
    assert (used, held) == (kept.reserved_nano + late.reserved_nano, late.reserved_nano)
    settled = await gate.settle(kept.id, 1, 1, 1)
    assert settled.outcome is Outcome.ALREADY_EXPIRED
    clock.now += 10
    assert await gate.reap() == 1
    assert await redis.zcard(EXPIRY_KEY) == 0
    assert await redis.keys(PREFIX + "r:*") == []
    ops = sorted(e.op for e in read_month(ledger.directory, "2026-11"))
    assert ops == ["expire", "expire", "reserve", "reserve"]


async def test_concurrent_reapers_bill_each_reservation_once(
    redis: aioredis.Redis, make_gate: GateFactory, clock: Clock
) -> None:
    gate = make_gate(user=UNCAPPED, total=UNCAPPED, reservation_ttl_s=10)
    reservations = [await gate.reserve("alice", "m", PRICE, 1_000, 500) for _ in range(250)]
    clock.now += 11
    reapers = [make_gate(user=UNCAPPED, total=UNCAPPED) for _ in range(4)]
    counts = await asyncio.gather(*(r.reap() for r in reapers))
    assert sum(counts) == 250
    total = sum(r.reserved_nano for r in reservations)
    assert await counters(redis, Scope.USER, Period.DAY, "2026-11-22", "alice") == (total, 0)
    assert (await gate.usage("alice")).models == (("m", total),)


CHILD = """
import asyncio, json, sys
from pathlib import Path
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from gateway.policy import BudgetGate, Ledger, TokenPrice
from gateway.settings import BudgetSettings, Caps

async def main(url, ledger_dir):
    client = aioredis.Redis.from_url(url)
    async with Ledger(Path(ledger_dir)) as ledger:
        settings = BudgetSettings(user=Caps(daily_usd=0.05, monthly_usd=1), reservation_ttl_s=10)
        gate = BudgetGate(client, settings, ledger)
        price = TokenPrice(1_000_000, 4_000_000)
        reservation = await gate.reserve("victim", "m", price, 1000, 1000)
        print(json.dumps([reservation.id, reservation.reserved_nano]), flush=True)
        await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_process_killed_between_reserve_and_settle_is_billed_in_full(
    redis: aioredis.Redis, redis_server: RedisProcess, tmp_path: Path, ledger: Ledger
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, redis_server.url, str(ledger.directory),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        rid, reserved = json.loads(line)
    finally:
        proc.kill()  # SIGKILL: no settlement, no cleanup
        await proc.wait()
    assert await redis.zcard(EXPIRY_KEY) == 1

    settings = BudgetSettings(user=Caps(daily_usd=0.05, monthly_usd=1), reservation_ttl_s=10)
    reaper = BudgetGate(redis, settings, ledger, clock=lambda: time.time() + 11)
    assert await reaper.reap() == 1
    assert await redis.zcard(EXPIRY_KEY) == 0
    assert await redis.keys(PREFIX + "r:*") == []
    day = rid.split(":")[0]
    used, held = await counters(redis, Scope.USER, Period.DAY, day, "victim")
    assert (used, held) == (reserved, 0)
    assert used <= 50_000_000
    assert await reaper.settle(rid, 0, 0, 0) == await reaper.settle(rid, 0, 0, 0)


# -- concurrency ---------------------------------------------------------------------------


@pytest.fixture
async def pooled(
    redis: aioredis.Redis, redis_server: RedisProcess
) -> AsyncIterator[aioredis.Redis]:
    """A client whose pool serves 400 calls at once, as the app sizes it for its agents."""
    client = aioredis.Redis.from_url(redis_server.url, max_connections=512)
    yield client
    await client.aclose()


@pytest.mark.slow
async def test_two_hundred_concurrent_calls_never_overspend(
    pooled: aioredis.Redis, redis: aioredis.Redis, ledger: Ledger, clock: Clock
) -> None:
    one_call = worst_case(PRICE, 1_000, 12_250)  # 50,000,000 nano = $0.05
    cap = 20 * one_call + one_call // 2  # pays for 20 calls and half of one more
    settings = BudgetSettings(
        user=Caps(daily_usd=cap / 1e9, monthly_usd=None), total=UNCAPPED, reservation_ttl_s=60
    )
    gate = BudgetGate(pooled, settings, ledger, clock=clock)
    key = window_key(Scope.USER, Period.DAY, "2026-11-22", "alice")
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, int(await redis.hget(key, "used") or 0))
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    rng = random.Random(1)

    def real_cost(reservation: Reservation) -> int:
        billed = cost_nano(PRICE, rng.randrange(1_001), rng.randrange(reservation.max_tokens + 1))
        assert billed <= reservation.reserved_nano
        return billed

    async def call(barrier: asyncio.Barrier, settle: bool) -> tuple[Reservation, int] | None:
        await barrier.wait()
        try:
            reservation = await gate.reserve("alice", "m", PRICE, 1_000, 12_250)
        except BudgetExceeded:
            return None
        if not settle:
            return reservation, 0
        await asyncio.sleep(rng.random() / 100)
        billed = real_cost(reservation)
        await gate.settle(reservation.id, billed, 0, 0)
        return reservation, billed

    # Wave 1: all 200 reserves reach Redis before any settlement frees money.
    barrier = asyncio.Barrier(200)
    first = [r for r in await asyncio.gather(*(call(barrier, False) for _ in range(200))) if r]
    reserved = [reservation for reservation, _ in first]
    assert len(reserved) == 21
    assert min(r.max_tokens for r in reserved) == (one_call // 2 - 1_000_000) // 4_000
    assert int(await redis.hget(key, "used")) == sum(r.reserved_nano for r in reserved) == cap

    # Wave 2: the first wave settles at random real costs while 200 more calls race in.
    billed_first = [real_cost(r) for r in reserved]
    barrier = asyncio.Barrier(200)
    settled, second = await asyncio.gather(
        asyncio.gather(
            *(gate.settle(r.id, b, 0, 0) for r, b in zip(reserved, billed_first, strict=True))
        ),
        asyncio.gather(*(call(barrier, True) for _ in range(200))),
    )
    sampling = False
    await sampler
    assert all(s.outcome is Outcome.SETTLED for s in settled)
    spent = sum(billed_first) + sum(billed for _, billed in filter(None, second))
    used, held = await counters(redis, Scope.USER, Period.DAY, "2026-11-22", "alice")
    assert held == 0
    assert used == spent <= cap
    assert peak <= cap
    assert await redis.zcard(EXPIRY_KEY) == 0


# -- failing closed ------------------------------------------------------------------------


async def test_redis_unreachable_means_unavailable(tmp_path: Path, ledger: Ledger) -> None:
    path = tmp_path / "closed.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))  # bound, never listening, then closed: connections refused
    client = aioredis.Redis(unix_socket_path=str(path), retry=Retry(NoBackoff(), 0))
    try:
        gate = BudgetGate(client, BudgetSettings(), ledger, clock=Clock())
        with pytest.raises(BudgetUnavailable) as caught:
            await gate.reserve("alice", "m", PRICE, 10, 10)
        assert caught.value.retryable
        with pytest.raises(BudgetUnavailable):
            await gate.settle("2026-11-22:0123456789abcdef:alice", 1, 1, 1)
        with pytest.raises(BudgetUnavailable):
            await gate.usage("alice")
        with pytest.raises(BudgetUnavailable):
            await gate.reap()
        with pytest.raises(BudgetUnavailable):
            await gate.recover()
    finally:
        await client.aclose()


BUSY_300_MS = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start > 300000
"""


@pytest.mark.parametrize("ran", [True, False], ids=["script ran", "script never ran"])
async def test_a_reserve_whose_answer_was_lost_is_resolved_once_redis_answers(
    redis: aioredis.Redis, pooled: aioredis.Redis, ledger: Ledger, ran: bool
) -> None:
    await pooled.ping()  # connected: the reserve below is sent at once
    gate = BudgetGate(pooled, BudgetSettings(), ledger, clock=Clock())
    reservation = await gate.reserve("alice", "m", PRICE, 10, 10)
    await gate.settle(reservation.id, 1, 0, 0)
    # The caller is cancelled while its reserve waits for Redis: nobody will settle it.
    # A busy server runs the command it was sent later; a paused one drops it with the
    # closed connection.
    if ran:
        busy = asyncio.create_task(redis.eval(BUSY_300_MS, 0))
    else:
        await redis.execute_command("CLIENT", "PAUSE", 300, "WRITE")
    await asyncio.sleep(0.05)
    task = asyncio.create_task(gate.reserve("alice", "m", PRICE, 1_000, 500))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if ran:
        await busy
    await asyncio.sleep(0.3)
    assert await redis.zcard(EXPIRY_KEY) == int(ran)
    await gate.reap()
    assert await redis.zcard(EXPIRY_KEY) == 0
    used, held = await counters(redis, Scope.USER, Period.DAY, "2026-11-22", "alice")
    assert (used, held) == (1, 0)  # no model call was made: nothing is billed
    entries = read_month(ledger.directory, "2026-11")
    resolved = ("settle", 0) if ran else ("denied", 0)
    assert sorted((e.op, e.nano) for e in entries if e.op != "reserve") == sorted(
        [("settle", 1), resolved]
    )
    assert applied_count(entries) == int(await redis.get(PREFIX + "applied:2026-11"))


async def test_an_exhausted_connection_pool_refuses_and_records_the_refusal(
    redis_server: RedisProcess, ledger: Ledger
) -> None:
    client = aioredis.Redis.from_url(redis_server.url, max_connections=1)
    try:
        gate = BudgetGate(client, BudgetSettings(), ledger, clock=Clock())
        holder = asyncio.create_task(client.blpop(["stockade:test:nothing"], timeout=1))
        await asyncio.sleep(0.05)  # the pool's one connection is now busy
        with pytest.raises(BudgetUnavailable, match="connection"):
            await gate.reserve("alice", "m", PRICE, 10, 10)
        await holder
    finally:
        await client.aclose()
    entries = read_month(ledger.directory, "2026-11")
    assert [(e.op, e.reason) for e in entries] == [
        ("reserve", ""),
        ("denied", "no Redis connection free"),
    ]


async def test_a_script_error_means_unavailable_and_changes_nothing(
    redis: aioredis.Redis, make_gate: GateFactory, ledger: Ledger
) -> None:
    gate = make_gate()
    await redis.set(window_key(Scope.TOTAL, Period.MONTH, "2026-11", ""), "not a hash")
    with pytest.raises(BudgetUnavailable):
        await gate.reserve("alice", "m", PRICE, 10, 10)
    assert await day_used(redis, "alice") == 0
    assert await redis.zcard(EXPIRY_KEY) == 0
    entries = read_month(ledger.directory, "2026-11")
    assert [(e.op, e.reason) for e in entries] == [("reserve", ""), ("denied", "script error")]


async def test_a_wrong_type_key_at_settle_changes_nothing(
    redis: aioredis.Redis, make_gate: GateFactory
) -> None:
    gate = make_gate()
    reservation = await gate.reserve("alice", "m", PRICE, 10, 10)
    await redis.set(PREFIX + "models:2026-11:alice", "oops")
    with pytest.raises(BudgetUnavailable):
        await gate.settle(reservation.id, 1, 1, 1)
    assert await counters(redis, Scope.USER, Period.DAY, "2026-11-22", "alice") == (
        reservation.reserved_nano,
        reservation.reserved_nano,
    )
    await redis.delete(PREFIX + "models:2026-11:alice")
    assert (await gate.settle(reservation.id, 1, 1, 1)).outcome is Outcome.SETTLED


def test_user_ids_with_colons_are_fine() -> None:
    from gateway.policy._budget_store import new_reservation_id, parse_reservation_id

    rid = new_reservation_id("2026-11-22", "matrix:@a:b.org")
    assert parse_reservation_id(rid) == ("2026-11-22", "matrix:@a:b.org")
