"""`stockade pair` and `stockade link` against a real Redis, through the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from gateway.audit import AuditLog
from gateway.bus import out_stream
from gateway.cli import main
from gateway.envelope import decode_outbound
from gateway.policy import AccessStore, Identities
from gateway.policy._access_store import ALLOWED_KEY
from gateway.policy.access import shown_code
from gateway.settings import AccessSettings
from tests.gateway.audit.test_cli_audit import stockade_env  # noqa: F401  (fixture)
from tests.gateway.routing import dm

T = TypeVar("T")


def with_redis(url: str, work: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    async def run() -> T:
        client = aioredis.Redis.from_url(url)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_pairing_is_listed_and_approved_from_the_command_line(
    stockade_env: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def request(client: aioredis.Redis) -> str:
        offer = await AccessStore(client, AccessSettings()).request_pairing(dm("42", "hi"))
        assert offer is not None
        return offer.code

    code = with_redis(stockade_env, request)
    assert main(["pair", "list"]) == 0
    assert shown_code(code) in capsys.readouterr().out
    assert main(["pair", "approve", shown_code(code).lower()]) == 0
    assert "Approved telegram:42" in capsys.readouterr().out

    async def after(client: aioredis.Redis) -> tuple[str | None, bool, list[str], list[str]]:
        user = await Identities(client).lookup("telegram", "42")
        allowed = bool(user) and bool(await client.sismember(ALLOWED_KEY, user or ""))
        welcome = [decode_outbound(f).text for _, f in await client.xrange(out_stream("telegram"))]
        actions = [e.action for e in await AuditLog(client).tail(5)]
        return user, allowed, welcome, actions

    user, allowed, welcome, actions = with_redis(stockade_env, after)
    assert user is not None and allowed
    assert welcome == ["You're in: an operator approved you. Say hello!"]
    assert actions == ["pair.approve"]
    assert main(["pair", "approve", code]) == 0  # taken once: now gone
    assert "No pairing request" in capsys.readouterr().out
    assert main(["pair", "deny", "not-a-code"]) == 1
    assert "is not a pairing code" in capsys.readouterr().err


def test_link_makes_another_identity_a_name_of_the_same_user(
    stockade_env: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def known(client: aioredis.Redis) -> str:
        return await Identities(client).resolve("telegram", "42")

    user = with_redis(stockade_env, known)
    assert main(["link", "slack:U42", "telegram:42"]) == 0
    assert f"slack:U42 is {user}." in capsys.readouterr().out

    async def linked(client: aioredis.Redis) -> tuple[str | None, str]:
        entry = (await AuditLog(client).tail(1))[0]
        return await Identities(client).lookup("slack", "U42"), entry.action

    assert with_redis(stockade_env, linked) == (user, "link")
    assert main(["link", "nochannel", user]) == 1
    assert main(["link", "slack:U43", "telegram:999"]) == 1
    assert "nobody is known" in capsys.readouterr().err
