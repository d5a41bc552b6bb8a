"""Spending reports: the /usage command and `stockade usage`, on a real budget gate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.commands import CommandContext, Invocation, default_registry
from gateway.envelope import Inbound
from gateway.policy import BudgetGate, Identities, Ledger, TokenPrice
from gateway.settings import BudgetSettings, Caps
from tests.gateway.test_cli import stockade
from tests.services import RedisProcess

PRICE = TokenPrice.from_usd(1e-6, 2e-6)
BUDGET = BudgetSettings(user=Caps(daily_usd=1.0, monthly_usd=20.0), total=Caps(monthly_usd=200.0))


@pytest.fixture
async def gate(redis: aioredis.Redis, tmp_path: Path) -> AsyncIterator[BudgetGate]:
    async with Ledger(tmp_path / "ledger") as ledger:
        yield BudgetGate(redis, BUDGET, ledger)


async def spend(gate: BudgetGate, user_id: str, model: str, nano: int) -> None:
    reservation = await gate.reserve(user_id, model, PRICE, 10, 100)
    await gate.settle(reservation.id, nano, 10, 100)


def context(user_id: str) -> CommandContext:
    inbound = Inbound(
        channel="console",
        event_id="s-1",
        sender_id="ada",
        sender_name="Ada",
        conversation_id="s",
        text="/usage",
        received_at=0.0,
    )
    return CommandContext(inbound=inbound, user_id=user_id, registry=default_registry())


async def test_usage_shows_the_users_own_spend_caps_and_models_only(gate: BudgetGate) -> None:
    await spend(gate, "u00000000000a11ce", "openai/gpt-4o-mini", 120_000_000)
    await spend(gate, "u0000000000000b0b", "openai/gpt-4o", 50_000_000)
    registry = default_registry(usage_of=gate.usage)

    answer = await registry.run(Invocation("usage", ()), context("u00000000000a11ce"))

    assert "$0.12 of $1.00" in answer
    assert "of $20.00" in answer
    assert "openai/gpt-4o-mini" in answer
    assert "resets" in answer
    assert "openai/gpt-4o " not in answer and "$0.05" not in answer  # not another user's
    assert "All users" not in answer  # the total is the operator's


async def test_usage_is_listed_in_help_only_where_the_gate_is() -> None:
    assert "/usage" not in default_registry().help_text(admin=False)


async def test_usage_with_budget_state_unreadable_says_so(tmp_path: Path) -> None:
    gone = aioredis.Redis(unix_socket_path=str(tmp_path / "none.sock"))
    async with Ledger(tmp_path / "ledger") as ledger:
        registry = default_registry(usage_of=BudgetGate(gone, BUDGET, ledger).usage)
        answer = await registry.run(Invocation("usage", ()), context("u00000000000a11ce"))
    await gone.aclose()
    assert "cannot be read right now" in answer


async def test_usage_refuses_arguments(gate: BudgetGate) -> None:
    registry = default_registry(usage_of=gate.usage)
    answer = await registry.run(Invocation("usage", ("bob",)), context("u00000000000a11ce"))
    assert "Usage: /usage" in answer


async def test_stockade_usage_reports_everyone_and_one_user(
    redis_server: RedisProcess, redis: aioredis.Redis, gate: BudgetGate, tmp_path: Path
) -> None:
    alice = await Identities(redis).resolve("console", "alice")
    await spend(gate, alice, "openai/gpt-4o-mini", 250_000_000)
    env = {"STOCKADE_REDIS__URL": redis_server.url, "STOCKADE_DATA_DIR": str(tmp_path)}

    everyone = stockade("usage", env=env)
    one = stockade("usage", "console:alice", env=env)
    by_id = stockade("usage", alice, env=env)
    unknown = stockade("usage", "console:nobody", env=env)

    assert everyone.returncode == 0, everyone.stderr
    assert f"{alice} (console:alice): today $0.25 of $1.00" in everyone.stdout
    assert "All users together" in everyone.stdout
    assert one.returncode == 0, one.stderr
    assert one.stdout == by_id.stdout
    assert f"Spending of {alice}" in one.stdout and "openai/gpt-4o-mini $0.25" in one.stdout
    assert unknown.returncode == 1
    assert "nobody is known" in unknown.stderr
    assert "Traceback" not in unknown.stderr + everyone.stderr


def test_stockade_usage_without_a_running_gateway_says_so(tmp_path: Path) -> None:
    result = stockade("usage", env={"STOCKADE_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "stockade up" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ledger").exists()  # reading never opens the ledger
