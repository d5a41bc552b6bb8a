"""Access control through the real router on a real Redis: pairing, lists, bots, loops, pauses."""

from __future__ import annotations

import asyncio
import re

import redis.asyncio as aioredis

from gateway.audit import AuditLog
from gateway.bus import WAKE_STREAM, agent_stream
from gateway.controls import CONTROL_STREAM, PAUSED_KEY, Control
from gateway.envelope import decode_inbound
from gateway.policy import AccessStore, Identities
from gateway.policy._access_store import ALLOWED_KEY
from gateway.policy.identity import IDENTITY_KEY
from gateway.settings import AccessSettings, ChannelAccess, LoopGuardSettings
from tests.gateway.routing import ADMIN, ADMIN_ID, answer, dm, replies, route, settings

CODE = re.compile(r"[A-Z0-9]{4}-[A-Z0-9]{4}")


async def queued(client: aioredis.Redis, user_id: str) -> list[str]:
    return [decode_inbound(f).text for _, f in await client.xrange(agent_stream(user_id))]


async def actions(client: aioredis.Redis) -> list[tuple[str, str, str]]:
    entries = await AuditLog(client).tail(100)
    return [(e.action, e.target, e.outcome) for e in entries]


async def test_a_stranger_is_paired_from_first_contact_to_approval(
    redis: aioredis.Redis,
) -> None:
    config = settings()
    first = await answer(redis, config, dm("42", "hello"))
    found = CODE.search(first)
    assert found is not None and "pairing code" in first
    code = found.group()
    # Nothing reached an agent, nobody was given an id, nothing was woken.
    assert await redis.hlen(IDENTITY_KEY) == 0
    assert await redis.xlen(WAKE_STREAM) == 0

    again = await answer(redis, config, dm("42", "hello?"))
    assert code in again and "still" in again

    listing = await answer(redis, config, dm(ADMIN_ID, "/pair"))
    assert code in listing and "telegram:42" in listing and "name-42" in listing

    approved = await answer(redis, config, dm(ADMIN_ID, f"/pair approve {code.lower()}"))
    user = await Identities(redis).lookup("telegram", "42")
    assert user is not None and f"Approved telegram:42; they are {user}" in approved
    welcome = [r for r in await replies(redis) if r.outbound_id == f"pair:{code.replace('-', '')}"]
    assert len(welcome) == 1 and welcome[0].conversation_id == "chat-42"

    await route(redis, config, dm("42", "now I am in"))
    assert await queued(redis, user) == ["now I am in"]
    assert ("pair.request", "telegram:42", "ok") in await actions(redis)
    assert ("pair.approve", user, "ok") in await actions(redis)
    assert await AuditLog(redis).verify()


async def test_a_refused_pairing_keeps_the_stranger_out(redis: aioredis.Redis) -> None:
    config = settings()
    code = CODE.search(await answer(redis, config, dm("42", "hello")))
    assert code is not None
    refused = await answer(redis, config, dm(ADMIN_ID, f"/pair deny {code.group()}"))
    assert "Refused telegram:42" in refused
    used = await answer(redis, config, dm(ADMIN_ID, f"/pair approve {code.group()}"))
    assert "No pairing request" in used
    assert await redis.scard(ALLOWED_KEY) == 0


async def test_at_most_the_configured_number_of_codes_wait_per_channel(
    redis: aioredis.Redis,
) -> None:
    config = settings(AccessSettings(telegram=ADMIN, max_pending_pairings=3))
    texts = [await answer(redis, config, dm(str(n), "hi")) for n in range(1, 5)]
    assert all(CODE.search(t) for t in texts[:3])
    assert texts[3] == ""  # the fourth stranger gets nothing until one is settled
    assert len(await AccessStore(redis, config.access).pairings()) == 3


async def test_a_pairing_code_expires(redis: aioredis.Redis) -> None:
    now = [1_000.0]
    store = AccessStore(redis, AccessSettings(pairing_ttl_s=3_600), clock=lambda: now[0])
    offer = await store.request_pairing(dm("42", "hi"))
    assert offer is not None and offer.new
    now[0] += 3_601
    assert await store.pairings() == []
    assert await store.take_pairing(offer.code) is None
    fresh = await store.request_pairing(dm("42", "hi"))
    assert fresh is not None and fresh.new and fresh.code != offer.code


async def test_a_code_is_taken_once_even_by_two_admins_at_once(redis: aioredis.Redis) -> None:
    store = AccessStore(redis, AccessSettings())
    offer = await store.request_pairing(dm("42", "hi"))
    assert offer is not None

    taken = await asyncio.gather(*(store.take_pairing(offer.code) for _ in range(5)))
    assert sum(1 for t in taken if t is not None) == 1


async def test_an_allowlist_channel_drops_strangers_without_an_answer(
    redis: aioredis.Redis,
) -> None:
    config = settings(AccessSettings(telegram=ChannelAccess(dm_policy="allowlist")))
    assert await answer(redis, config, dm("42", "hello")) == ""
    assert await answer(redis, config, dm("42", "/help")) == ""
    assert await redis.hlen(IDENTITY_KEY) == 0


async def test_allow_and_deny_by_an_admin_take_effect_at_once(redis: aioredis.Redis) -> None:
    config = settings(
        AccessSettings(telegram=ChannelAccess(dm_policy="allowlist", admins=("1000",)))
    )
    allowed = await answer(redis, config, dm(ADMIN_ID, "/allow telegram:42"))
    user = await Identities(redis).lookup("telegram", "42")
    assert user is not None and f"{user} may talk" in allowed
    await route(redis, config, dm("42", "one"))
    denied = await answer(redis, config, dm(ADMIN_ID, f"/deny {user}"))
    assert "kept out" in denied
    await route(redis, config, dm("42", "two"))
    assert await queued(redis, user) == ["one"]
    assert [a for a in await actions(redis) if a[0] in ("allow", "deny")] == [
        ("allow", user, "ok"),
        ("deny", user, "ok"),
    ]


async def test_a_denied_user_is_dropped_even_on_an_open_channel(redis: aioredis.Redis) -> None:
    open_ = ChannelAccess(dm_policy="open", admins=(ADMIN_ID,))
    config = settings(AccessSettings(telegram=open_))
    await answer(redis, config, dm(ADMIN_ID, "/deny telegram:42"))
    assert await answer(redis, config, dm("42", "/help")) == ""
    user = await Identities(redis).lookup("telegram", "42")
    assert user is not None and await queued(redis, user) == []


async def test_an_admin_command_from_a_user_is_refused_and_audited(redis: aioredis.Redis) -> None:
    config = settings(AccessSettings(telegram=ChannelAccess(dm_policy="open", admins=(ADMIN_ID,))))
    refused = await answer(redis, config, dm("42", "/kill telegram:1000"))
    assert refused == "/kill is for operators only."
    assert await redis.xlen(CONTROL_STREAM) == 0
    [entry] = await AuditLog(redis).tail(1)
    assert (entry.action, entry.target, entry.outcome) == ("command.denied", "/kill", "refused")
    assert "telegram:42" in entry.detail


async def test_help_shows_admin_commands_to_admins_only(redis: aioredis.Redis) -> None:
    config = settings(AccessSettings(telegram=ChannelAccess(dm_policy="open", admins=(ADMIN_ID,))))
    for_user = await answer(redis, config, dm("42", "/help"))
    for_admin = await answer(redis, config, dm(ADMIN_ID, "/help"))
    assert "/reset" in for_user and "/kill" not in for_user
    assert "/kill" in for_admin and "/audit" in for_admin
    assert "Role: admin." in await answer(redis, config, dm(ADMIN_ID, "/whoami"))
    assert "Role: user." in await answer(redis, config, dm("42", "/whoami"))


async def test_messages_from_bots_are_ignored_unless_bots_are_allowed(
    redis: aioredis.Redis,
) -> None:
    open_ = ChannelAccess(dm_policy="open")
    closed = settings(AccessSettings(telegram=open_))
    assert await answer(redis, closed, dm("77", "/help", from_bot=True)) == ""
    assert await redis.hlen(IDENTITY_KEY) == 0
    allowing = settings(AccessSettings(telegram=open_, allow_bots=True))
    assert "Commands:" in await answer(redis, allowing, dm("77", "/help", from_bot=True))


async def test_a_conversation_over_its_rate_is_paused_with_one_notice(
    redis: aioredis.Redis,
) -> None:
    guard = LoopGuardSettings(per_conversation_per_min=5, pause_s=600)
    config = settings(
        AccessSettings(
            telegram=ChannelAccess(dm_policy="open", admins=(ADMIN_ID,)), loop_guard=guard
        )
    )
    flood = [dm("77", f"m{n}", conversation_id="room") for n in range(8)]
    await route(redis, config, *flood)
    user = await Identities(redis).lookup("telegram", "77")
    assert user is not None
    assert await queued(redis, user) == [f"m{n}" for n in range(5)]
    notices = [r for r in await replies(redis) if r.outbound_id.endswith(":loop")]
    assert len(notices) == 1 and "pausing here for 10 minutes" in notices[0].text
    # An admin's command still works in the paused conversation.
    help_ = await answer(redis, config, dm(ADMIN_ID, "/help", conversation_id="room"))
    assert "Commands:" in help_
    assert [a for a in await actions(redis) if a[0] == "loop.pause"]


async def test_a_paused_users_messages_wait_and_they_are_told_once(redis: aioredis.Redis) -> None:
    config = settings(AccessSettings(telegram=ChannelAccess(dm_policy="open", admins=(ADMIN_ID,))))
    await route(redis, config, dm("42", "before"))
    user = await Identities(redis).lookup("telegram", "42")
    assert user is not None
    assert await answer(redis, config, dm(ADMIN_ID, f"/pause {user}")) == ""
    assert await redis.sismember(PAUSED_KEY, user)
    [(_, fields)] = await redis.xrange(CONTROL_STREAM)
    control = Control.from_fields(fields)
    assert (control.action, control.user, control.notify_conversation) == (
        "pause",
        user,
        f"chat-{ADMIN_ID}",
    )
    woken = await redis.xlen(WAKE_STREAM)
    await route(redis, config, dm("42", "during 1"), dm("42", "during 2"))
    assert await queued(redis, user) == ["before", "during 1", "during 2"]
    assert await redis.xlen(WAKE_STREAM) == woken + 2  # wanted, but started only on /resume
    notices = [r for r in await replies(redis) if r.outbound_id.endswith(":paused")]
    assert len(notices) == 1 and "paused by the operator" in notices[0].text

    await answer(redis, config, dm(ADMIN_ID, f"/resume {user}"))
    assert not await redis.sismember(PAUSED_KEY, user)
    assert [Control.from_fields(f).action for _, f in await redis.xrange(CONTROL_STREAM)] == [
        "pause",
        "resume",
    ]
    await route(redis, config, dm("42", "after"))
    assert await redis.xlen(WAKE_STREAM) == woken + 3


async def test_an_admin_linked_to_another_channel_is_not_admin_there(redis: aioredis.Redis) -> None:
    access = AccessSettings(
        telegram=ChannelAccess(dm_policy="open", admins=(ADMIN_ID,)),
        slack=ChannelAccess(dm_policy="open"),
    )
    config = settings(access)
    await route(redis, config, dm(ADMIN_ID, "hi"))
    admin = await Identities(redis).lookup("telegram", ADMIN_ID)
    assert admin is not None
    await Identities(redis).link("slack", "U1", admin)
    on_slack = await answer(redis, config, dm("U1", "/whoami", channel="slack"))
    assert f"You are {admin}" in on_slack and "Role: user." in on_slack
    assert "for operators only" in await answer(redis, config, dm("U1", "/status", channel="slack"))


async def test_the_loop_guard_counts_a_sliding_minute_not_the_clock_minute(
    redis: aioredis.Redis,
) -> None:
    now = [6_000.0 + 50]  # 50 s into a clock minute
    store = AccessStore(redis, AccessSettings(), clock=lambda: now[0])
    for n in range(20):
        await store.standing(dm("77", f"m{n}", conversation_id="room"))
    now[0] += 15  # 5 s into the next minute: the 20 before still count
    standing = await store.standing(dm("77", "next", conversation_id="room"))
    assert standing.conversation_count == 1 + 20 * 55 // 60
    now[0] += 60  # a minute later: they no longer count
    assert (await store.standing(dm("77", "later", conversation_id="room"))).conversation_count == 1
