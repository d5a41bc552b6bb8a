"""Every operator and self-service command through the real router, as admin and as user."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from gateway.audit import AuditLog
from gateway.controls import CONTROL_STREAM, MODEL_KEY, Control
from gateway.policy import Identities
from gateway.settings import AccessSettings, ChannelAccess, MeshSettings, ModelSettings, Settings
from gateway.supervisor import STATUS_KEY, AgentStatus
from tests.gateway.routing import ADMIN_ID, BUS, answer, dm, route

ACCESS = AccessSettings(telegram=ChannelAccess(dm_policy="open", admins=(ADMIN_ID,)))
CONFIG = Settings(
    bus=BUS,
    access=ACCESS,
    models={"default": ModelSettings(), "big": ModelSettings(name="openai/gpt-4o")},
    mesh=MeshSettings(allowed_models=["default", "big"]),
)
ADMIN_COMMANDS = (
    "status",
    "agents",
    "budget telegram:42",
    "allow telegram:43",
    "deny telegram:43",
    "pair",
    "pause all",
    "resume all",
    "kill telegram:42",
    "model telegram:42 big",
    "audit",
)


async def user_42(redis: aioredis.Redis) -> str:
    await route(redis, CONFIG, dm("42", "hello"))
    user = await Identities(redis).lookup("telegram", "42")
    assert user is not None
    return user


async def controls(redis: aioredis.Redis) -> list[Control]:
    return [Control.from_fields(f) for _, f in await redis.xrange(CONTROL_STREAM)]


@pytest.mark.parametrize("line", ADMIN_COMMANDS)
async def test_every_admin_command_is_refused_to_a_user_and_changes_nothing(
    redis: aioredis.Redis, line: str
) -> None:
    await user_42(redis)
    name = line.split()[0]
    assert await answer(redis, CONFIG, dm("42", f"/{line}")) == f"/{name} is for operators only."
    assert await redis.xlen(CONTROL_STREAM) == 0
    assert await redis.hlen(MODEL_KEY) == 0
    [entry] = await AuditLog(redis).tail(1)
    assert (entry.action, entry.target, entry.outcome) == ("command.denied", f"/{name}", "refused")


async def test_status_reports_roles_queues_agents_and_spend(redis: aioredis.Redis) -> None:
    text = await answer(redis, CONFIG, dm(ADMIN_ID, "/status"))
    assert text.startswith("Roles: router 0 up; agents 0 up; channels 0 up.")
    assert "stockade:in:" in text and "stockade:out:console: 0 / 0" in text
    assert "Agents: 0 running of 0 known." in text
    assert "Spend today: $0" in text


async def test_agents_lists_what_the_supervisors_report(redis: aioredis.Redis) -> None:
    user = await user_42(redis)
    assert await answer(redis, CONFIG, dm(ADMIN_ID, "/agents")) == "No agent has a container."
    now = time.time()
    status = AgentStatus(
        user, "running", "abcdef123456", now - 3_720, 50 << 20, 512 << 20, "e1", now
    )
    await redis.hset(STATUS_KEY, user, status.to_json())
    text = await answer(redis, CONFIG, dm(ADMIN_ID, "/agents"))
    assert text == f"{user}: running, 50 MiB of 512 MiB, up 1 h 2 min, today $0.00"


async def test_budget_shows_and_sets_a_users_caps(redis: aioredis.Redis) -> None:
    user = await user_42(redis)
    shown = await answer(redis, CONFIG, dm(ADMIN_ID, "/budget telegram:42"))
    assert shown.startswith(f"Spending of {user}:") and "$1.00" in shown
    set_ = await answer(redis, CONFIG, dm(ADMIN_ID, f"/budget {user} daily 5"))
    assert set_.startswith(f"{user}'s daily cap is now $5.00.") and "$5.00" in set_
    assert "$20.00" in set_  # the monthly cap is kept
    off = await answer(redis, CONFIG, dm(ADMIN_ID, f"/budget {user} monthly none"))
    assert "monthly cap is now no cap" in off
    [*_, entry] = await AuditLog(redis).tail(5)
    assert (entry.action, entry.target) == ("budget.set", user)
    bad = await answer(redis, CONFIG, dm(ADMIN_ID, f"/budget {user} weekly 5"))
    assert bad.endswith("Usage: /budget USER [daily|monthly AMOUNT]")
    assert "not an amount" in await answer(redis, CONFIG, dm(ADMIN_ID, f"/budget {user} daily x"))
    assert "between 0" in await answer(redis, CONFIG, dm(ADMIN_ID, f"/budget {user} daily -1"))


async def test_model_chooses_only_from_the_allowed_list(redis: aioredis.Redis) -> None:
    user = await user_42(redis)
    assert await answer(redis, CONFIG, dm(ADMIN_ID, f"/model {user}")) == (
        f"{user} uses default. Allowed: default, big."
    )
    assert (
        await answer(redis, CONFIG, dm(ADMIN_ID, f"/model {user} big")) == f"{user} now uses big."
    )
    assert await redis.hget(MODEL_KEY, user) == b"big"
    refused = await answer(redis, CONFIG, dm(ADMIN_ID, f"/model {user} gpt-9"))
    assert "not allowed" in refused and refused.endswith("Usage: /model USER [MODEL]")
    assert await redis.hget(MODEL_KEY, user) == b"big"


async def test_kill_asks_the_supervisors_and_is_audited(redis: aioredis.Redis) -> None:
    user = await user_42(redis)
    assert await answer(redis, CONFIG, dm(ADMIN_ID, "/kill telegram:42")) == ""
    [control] = await controls(redis)
    assert (control.action, control.user, control.notify_channel) == ("kill", user, "telegram")
    [entry] = await AuditLog(redis).tail(1)
    assert (entry.action, entry.target) == ("kill", user)


async def test_pause_and_resume_all_reach_every_supervisor(redis: aioredis.Redis) -> None:
    await answer(redis, CONFIG, dm(ADMIN_ID, "/pause all"))
    await answer(redis, CONFIG, dm(ADMIN_ID, "/resume ALL"))
    assert [(c.action, c.user) for c in await controls(redis)] == [("pause", "*"), ("resume", "*")]


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("/kill", "kill USER"),
        ("/kill telegram:999", "kill USER"),
        ("/kill someone", "kill USER"),
        ("/allow a b", "allow USER"),
        ("/pair maybe X", "pair [approve|deny CODE]"),
        ("/pair approve 0OIL1234", "pair [approve|deny CODE]"),
        ("/audit many", "audit [N ≤ 50]"),
        ("/model", "model USER [MODEL]"),
        ("/status now", "status"),
    ],
)
async def test_bad_arguments_get_the_commands_usage_line(
    redis: aioredis.Redis, line: str, usage: str
) -> None:
    text = await answer(redis, CONFIG, dm(ADMIN_ID, line))
    assert text.endswith(f"Usage: /{usage}")
    assert await redis.xlen(CONTROL_STREAM) == 0


async def test_audit_shows_the_latest_entries(redis: aioredis.Redis) -> None:
    assert await answer(redis, CONFIG, dm(ADMIN_ID, "/audit")) == "The audit trail is empty."
    await answer(redis, CONFIG, dm(ADMIN_ID, "/allow telegram:43"))
    await answer(redis, CONFIG, dm(ADMIN_ID, "/deny telegram:43"))
    text = await answer(redis, CONFIG, dm(ADMIN_ID, "/audit 1"))
    assert text.count("\n") == 0 and " deny " in text


async def test_reset_asks_for_confirmation_before_anything_is_deleted(
    redis: aioredis.Redis,
) -> None:
    user = await user_42(redis)
    early = await answer(redis, CONFIG, dm("42", "/reset confirm"))
    assert early == "Nothing to confirm: send /reset first."
    asked = await answer(redis, CONFIG, dm("42", "/reset"))
    assert "for good" in asked and "/reset confirm" in asked
    assert await redis.xlen(CONTROL_STREAM) == 0
    done = await answer(redis, CONFIG, dm("42", "/reset confirm"))
    assert done == "Deleting your assistant's memory and files…"
    [control] = await controls(redis)
    assert (control.action, control.user, control.by) == ("reset", user, user)
    again = await answer(redis, CONFIG, dm("42", "/reset confirm"))
    assert again.startswith("Nothing to confirm")


async def test_stop_asks_the_supervisors_to_end_the_current_turn(redis: aioredis.Redis) -> None:
    user = await user_42(redis)
    assert await answer(redis, CONFIG, dm("42", "/stop")) == ""
    [control] = await controls(redis)
    assert (control.action, control.user, control.notify_conversation) == ("stop", user, "chat-42")
