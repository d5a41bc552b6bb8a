"""Caps set at runtime by the operator (/budget): they replace the configured ones at once."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.controls import CAPS_KEY
from gateway.errors import BudgetExceeded, BudgetUnavailable
from gateway.policy import BudgetGate, Ledger, TokenPrice
from gateway.policy._budget_store import EXPIRY_KEY
from gateway.policy._ledger import read_month
from gateway.policy.budget import Period, Scope, caps_from_json, caps_to_json, usd_to_nano
from gateway.settings import BudgetSettings, Caps
from tests.gateway.policy._budget import PRICE, Clock

DOLLAR_OF_PROMPT = TokenPrice(10**6, 0)
"""1,000 nano-dollars per prompt token and free output: a million prompt tokens cost $1."""

GateFactory = Callable[..., BudgetGate]


@pytest.fixture
def make_gate(redis: aioredis.Redis, ledger: Ledger) -> GateFactory:
    def make(client: aioredis.Redis = redis, **settings: Any) -> BudgetGate:
        return BudgetGate(client, BudgetSettings(**settings), ledger, clock=Clock())

    return make


async def spend(gate: BudgetGate, user: str, usd: float) -> None:
    """Bill `user` exactly `usd`."""
    tokens = int(usd * 1_000_000)
    reservation = await gate.reserve(user, "m", DOLLAR_OF_PROMPT, tokens, 1)
    await gate.settle(reservation.id, usd_to_nano(usd), tokens, 0)


# -- the stored value ----------------------------------------------------------------------


def test_caps_round_trip_through_their_stored_form() -> None:
    caps = Caps(daily_usd=0.5, monthly_usd=None)
    assert json.loads(caps_to_json(caps)) == {"daily_usd": 0.5, "monthly_usd": None}
    assert caps_from_json(caps_to_json(caps)) == caps


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"daily_usd": "1"}',
        '{"daily_usd": true}',
        '{"daily_usd": -1}',
        '{"daily_usd": 1e300}',
        '{"daily_usd": NaN}',
        '{"daily_usd": 1, "weekly_usd": 1}',
        b"\xff\xfe",
    ],
)
def test_a_malformed_stored_value_is_refused(raw: str | bytes) -> None:
    with pytest.raises(ValueError):
        caps_from_json(raw)


def test_a_cap_the_gate_cannot_count_is_not_stored() -> None:
    with pytest.raises(ValueError, match="at most"):
        caps_to_json(Caps(monthly_usd=2e6))


# -- the gate ------------------------------------------------------------------------------


async def test_lowering_then_raising_a_users_daily_cap_takes_effect_on_the_next_call(
    redis: aioredis.Redis, make_gate: GateFactory
) -> None:
    gate = make_gate(user=Caps(daily_usd=5, monthly_usd=50))
    other = make_gate()  # another process: it learns of the change from Redis alone
    await spend(gate, "alice", 2.0)
    await spend(gate, "bob", 2.0)

    await gate.set_caps("alice", Caps(daily_usd=1.5, monthly_usd=50))

    for process in (gate, other):
        with pytest.raises(BudgetExceeded) as caught:
            await process.reserve("alice", "m", PRICE, 10, 10)
        assert caught.value.sentence.startswith("Your daily budget of $1.50 is used up")
    await gate.reserve("bob", "m", PRICE, 10, 10)  # others keep the configured caps
    day = (await gate.usage("alice")).window(Scope.USER, Period.DAY)
    assert (day.cap_nano, day.remaining_nano) == (usd_to_nano(1.5), 0)
    assert (await gate.usage("bob")).window(Scope.USER, Period.DAY).cap_nano == usd_to_nano(5)

    await other.set_caps("alice", Caps(daily_usd=3, monthly_usd=50))

    await gate.reserve("alice", "m", PRICE, 10, 10)
    assert (await other.usage("alice")).window(Scope.USER, Period.DAY).cap_nano == usd_to_nano(3)
    stored = await redis.hget(CAPS_KEY, "alice")
    assert stored is not None
    assert json.loads(stored) == {"daily_usd": 3.0, "monthly_usd": 50.0}


async def test_clearing_a_users_caps_restores_the_configured_ones(
    redis: aioredis.Redis, make_gate: GateFactory
) -> None:
    gate = make_gate(user=Caps(daily_usd=5), overrides={"alice": Caps(daily_usd=4)})
    await gate.set_caps("alice", Caps(daily_usd=0))
    with pytest.raises(BudgetExceeded, match=r"\$0\.00"):
        await gate.reserve("alice", "m", PRICE, 10, 10)

    await gate.clear_caps("alice")

    await gate.reserve("alice", "m", PRICE, 10, 10)
    assert await redis.hget(CAPS_KEY, "alice") is None
    day = (await gate.usage("alice")).window(Scope.USER, Period.DAY)
    assert day.cap_nano == usd_to_nano(4)  # the configured override, not budget.user


async def test_a_runtime_cap_of_none_lifts_that_window(make_gate: GateFactory) -> None:
    gate = make_gate(user=Caps(daily_usd=1, monthly_usd=20))
    await spend(gate, "alice", 1.0)
    await gate.set_caps("alice", Caps(daily_usd=None, monthly_usd=20))
    await gate.reserve("alice", "m", PRICE, 10, 10)
    assert (await gate.usage("alice")).window(Scope.USER, Period.DAY).cap_nano is None


async def test_the_max_tokens_clamp_follows_the_runtime_cap(make_gate: GateFactory) -> None:
    gate = make_gate(user=Caps(daily_usd=5))
    await gate.set_caps("alice", Caps(daily_usd=0.01))  # 10,000,000 nano-dollars
    reservation = await gate.reserve("alice", "m", PRICE, 1_000, 1_000_000)
    # $1 per Mtok in, $4 out: the prompt costs 1,000,000, each output token 4,000 nano-dollars.
    assert reservation.max_tokens == (10_000_000 - 1_000_000) // 4_000


async def test_warnings_follow_the_runtime_cap(make_gate: GateFactory) -> None:
    gate = make_gate(user=Caps(daily_usd=100, monthly_usd=1000), warn_at=0.8)
    await gate.set_caps("alice", Caps(daily_usd=1, monthly_usd=1000))
    reservation = await gate.reserve("alice", "m", DOLLAR_OF_PROMPT, 850_000, 1)
    settlement = await gate.settle(reservation.id, 850_000_000, 850_000, 0)
    assert [(w.scope, w.period, w.cap_nano) for w in settlement.crossed] == [
        (Scope.USER, Period.DAY, 10**9)
    ]


async def test_a_malformed_override_refuses_that_users_calls_and_logs_once(
    redis: aioredis.Redis,
    make_gate: GateFactory,
    ledger: Ledger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = make_gate()
    await redis.hset(CAPS_KEY, "alice", '{"daily_usd": "lots"}')

    with caplog.at_level(logging.ERROR, "stockade.budget"):
        for _ in range(2):
            with pytest.raises(BudgetUnavailable):
                await gate.reserve("alice", "m", PRICE, 10, 10)
        with pytest.raises(BudgetUnavailable):
            await gate.usage("alice")

    malformed = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(malformed) == 1
    assert "lots" not in malformed[0].getMessage()
    assert await redis.zcard(EXPIRY_KEY) == 0  # nothing held
    ops = [e.op for e in read_month(ledger.directory, "2026-11")]
    assert ops == ["reserve", "denied", "reserve", "denied"]
    await gate.reserve("bob", "m", PRICE, 10, 10)

    await gate.set_caps("alice", Caps(daily_usd=1))
    await gate.reserve("alice", "m", PRICE, 10, 10)


async def test_caps_cannot_be_set_when_redis_is_unreachable(
    tmp_path: Path, make_gate: GateFactory
) -> None:
    client = aioredis.Redis(
        unix_socket_path=str(tmp_path / "nothing.sock"), retry=Retry(NoBackoff(), 0)
    )
    try:
        gate = make_gate(client)
        with pytest.raises(BudgetUnavailable):
            await gate.set_caps("alice", Caps(daily_usd=1))
        with pytest.raises(BudgetUnavailable):
            await gate.clear_caps("alice")
    finally:
        await client.aclose()


async def test_a_cap_the_gate_cannot_count_is_refused_before_redis(
    redis: aioredis.Redis, make_gate: GateFactory
) -> None:
    with pytest.raises(ValueError):
        await make_gate().set_caps("alice", Caps(daily_usd=2e6))
    assert await redis.hget(CAPS_KEY, "alice") is None
