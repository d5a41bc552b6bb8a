"""Operator controls on the supervisor: the wording and timing rules as plain values, then
kill, reset, pause and resume on a real Docker engine with real Redis, read from the stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import docker.errors
import pytest

from gateway.audit import AuditLog
from gateway.controls import (
    CONTROL_STREAM,
    EVERYONE,
    PAUSED_ALL_KEY,
    Action,
    Control,
    new_request_id,
    send_control,
)
from gateway.envelope import Outbound
from gateway.supervisor import Outcome, container_name, control_group, notice, volume_name
from gateway.supervisor._control import (
    LOOKBACK_S,
    STOP_STALE_S,
    entry_age_s,
    group_start,
    still_due,
)
from tests.gateway.supervisor._harness import Stack, agent_stack
from tests.services import RedisProcess

NOTIFY = "console"
"""Notices go to another channel than the agents' replies, so each is counted apart."""


def control(action: Action, user: str, by: str = "uadmin0001") -> Control:
    return Control(
        action=action,
        user=user,
        by=by,
        request_id=new_request_id(),
        notify_channel=NOTIFY,
        notify_conversation="admin-chat",
    )


# -- pure rules ------------------------------------------------------------------------


def test_a_kill_reports_whether_an_agent_was_running() -> None:
    kill = control("kill", "u1234abcd")
    assert notice(kill, Outcome(removed=1)) == (
        "Stopped the agent of u1234abcd; it starts again on their next message."
    )
    assert notice(kill, Outcome()) == "u1234abcd has no agent running."


def test_a_reset_asked_by_the_user_speaks_to_them() -> None:
    own = control("reset", "u1234abcd", by="u1234abcd")
    assert notice(own, Outcome(removed=1)) == "Your assistant's memory and files are deleted."
    by_admin = notice(control("reset", "u1234abcd"), Outcome())
    assert "u1234abcd" in by_admin and "memory and files" in by_admin


def test_a_pause_of_everyone_counts_the_agents_stopped() -> None:
    everyone = control("pause", EVERYONE)
    assert notice(everyone, Outcome(removed=3)) == "Paused 3 agents."
    assert notice(everyone, Outcome(removed=1)) == "Paused 1 agent."
    assert notice(everyone, Outcome()) == "Paused all agents; none was running."
    assert "u1234abcd" in notice(control("pause", "u1234abcd"), Outcome())


def test_stop_and_resume_say_what_happened() -> None:
    assert notice(control("stop", "u1234abcd"), Outcome()) == "u1234abcd has no turn in progress."
    assert "Stopped the current turn" in notice(
        control("stop", "u1234abcd"), Outcome(turn_ended=True)
    )
    assert (
        notice(control("stop", "u1", by="u1"), Outcome(turn_ended=True)) == ""
    )  # the stopped turn answered itself
    assert "answered now" in notice(control("resume", EVERYONE), Outcome())
    assert "too late" in notice(control("stop", "u1234abcd"), Outcome(too_late=True))


def test_only_a_stop_goes_stale() -> None:
    assert still_due(control("stop", "u1234abcd"), STOP_STALE_S)
    assert not still_due(control("stop", "u1234abcd"), STOP_STALE_S + 1)
    assert still_due(control("kill", "u1234abcd"), 86_400)
    assert still_due(control("reset", "u1234abcd"), 86_400)


def test_a_new_group_starts_a_lookback_before_now() -> None:
    now_ms = 1_700_000_000_000
    assert group_start(now_ms) == f"{now_ms - LOOKBACK_S * 1000}-0"
    assert group_start(5) == "0-0"
    assert entry_age_s(f"{now_ms - 2500}-3", now_ms) == 2.5
    assert entry_age_s("garbage", now_ms) == 0.0
    assert control_group("ABCD:EF") == "control:ABCD:EF"


# -- on a real engine ------------------------------------------------------------------


@pytest.fixture
async def stack(
    redis_server: RedisProcess, agent_image: str, docker_engine: Any
) -> AsyncIterator[Stack]:
    async with agent_stack(redis_server.url, agent_image, docker_engine, run_loop=True) as built:
        yield built


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.05)


def container_id(docker_engine: Any, user: str) -> str | None:
    try:
        return str(docker_engine.api.inspect_container(container_name(user))["Id"])
    except docker.errors.NotFound:
        return None


async def running(docker_engine: Any, user: str) -> str:
    """The id of `user`'s container once it runs."""

    async def up() -> bool:
        try:
            attrs = docker_engine.api.inspect_container(container_name(user))
        except docker.errors.NotFound:
            return False
        return bool(attrs["State"]["Running"])

    await until(up)
    found = container_id(docker_engine, user)
    assert found is not None
    return found


async def gone(docker_engine: Any, user: str) -> None:
    async def check() -> bool:
        return container_id(docker_engine, user) is None

    await until(check)


async def notices(stack: Stack) -> list[Outbound]:
    return await stack.replies(NOTIFY)


async def notice_for(stack: Stack, sent: Control) -> Outbound:
    wanted = f"control:{sent.request_id}"

    async def check() -> bool:
        return any(n.outbound_id == wanted for n in await notices(stack))

    await until(check)
    return next(n for n in await notices(stack) if n.outbound_id == wanted)


async def test_kill_removes_the_container_and_the_next_message_starts_a_fresh_one(
    stack: Stack, docker_engine: Any
) -> None:
    user = await stack.new_user()
    await stack.say(user, "hello")
    first = await running(docker_engine, user)
    await stack.wait_for_replies(1)

    kill = control("kill", user)
    await send_control(stack.client, kill)
    await gone(docker_engine, user)
    reported = await notice_for(stack, kill)
    assert reported.text == f"Stopped the agent of {user}; it starts again on their next message."
    assert reported.conversation_id == "admin-chat"
    [done] = await AuditLog(stack.client).tail(1)
    assert (done.action, done.target, done.actor) == ("kill.done", user, kill.by)
    assert done.detail.startswith("1 removed")

    await stack.say(user, "again")
    assert await running(docker_engine, user) != first
    await stack.wait_for_replies(2)


async def test_reset_also_deletes_the_workspace(stack: Stack, docker_engine: Any) -> None:
    user = await stack.new_user()
    await stack.say(user, "hello")
    await running(docker_engine, user)
    await stack.wait_for_replies(1)
    workspaces = stack.runtime.workspaces
    assert os.path.ismount(workspaces.mount_point(user))
    # A volume left from before workspaces were capped goes too.
    docker_engine.volumes.create(volume_name(user))

    reset = control("reset", user, by=user)
    await send_control(stack.client, reset)
    reported = await notice_for(stack, reset)
    assert reported.text == "Your assistant's memory and files are deleted."
    assert container_id(docker_engine, user) is None
    assert not os.path.ismount(workspaces.mount_point(user))
    assert not workspaces.image(user).exists()
    with pytest.raises(docker.errors.NotFound):
        docker_engine.volumes.get(volume_name(user))


async def test_pause_all_stops_every_agent_until_resume_answers_the_waiting_message(
    stack: Stack, docker_engine: Any
) -> None:
    users = [await stack.new_user(), await stack.new_user()]
    for user in users:
        await stack.say(user, "hello")
    for user in users:
        await running(docker_engine, user)
    await stack.wait_for_replies(2)

    # The router sets the pause keys before it sends the control, so a pass may stop
    # the agents first; the report counts them all the same.
    await stack.client.set(PAUSED_ALL_KEY, "1")
    await stack.supervisor.reconcile()
    pause = control("pause", EVERYONE)
    await send_control(stack.client, pause)
    assert (await notice_for(stack, pause)).text == "Paused 2 agents."
    for user in users:
        assert container_id(docker_engine, user) is None

    await stack.say(users[0], "are you there?")
    await stack.supervisor.reconcile()  # a pass that sees the waiting message
    assert container_id(docker_engine, users[0]) is None

    await stack.client.delete(PAUSED_ALL_KEY)
    resume = control("resume", EVERYONE)
    await send_control(stack.client, resume)
    await notice_for(stack, resume)
    await running(docker_engine, users[0])
    replies = await stack.wait_for_replies(3)
    assert replies[-1].conversation_id == f"chat-{users[0]}"


async def test_a_control_sent_while_no_supervisor_runs_is_carried_out_when_one_starts(
    redis_server: RedisProcess, agent_image: str, docker_engine: Any
) -> None:
    async with agent_stack(redis_server.url, agent_image, docker_engine) as stack:
        user = await stack.new_user()
        await stack.say(user, "hello")

        @contextlib.asynccontextmanager
        async def supervising() -> AsyncIterator[None]:
            task = asyncio.create_task(stack.supervisor.run("s1"))
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        # Before any supervisor of this engine ever read the stream.
        first = control("kill", user)
        await send_control(stack.client, first)
        async with supervising():
            await notice_for(stack, first)
            await stack.say(user, "again")
            await running(docker_engine, user)

        # While it is down between two runs: the group remembers where it was.
        second = control("kill", user)
        await send_control(stack.client, second)
        assert container_id(docker_engine, user) is not None
        async with supervising():
            await notice_for(stack, second)
            await gone(docker_engine, user)
        assert [n.outbound_id for n in await notices(stack)] == [
            f"control:{first.request_id}",
            f"control:{second.request_id}",
        ]


async def test_a_malformed_control_is_acked_and_logged(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "stockade.supervisor")
    await stack.client.xadd(CONTROL_STREAM, {"control": "not json"})
    await stack.client.xadd(CONTROL_STREAM, {"control": "[1, 2]"})
    await stack.client.xadd(CONTROL_STREAM, {"other": "field"})
    await stack.client.xadd(
        CONTROL_STREAM,
        {"control": control("kill", "../../etc").fields()["control"]},
    )
    after = control("kill", "u0000beef")
    await send_control(stack.client, after)

    assert (await notice_for(stack, after)).text == "u0000beef has no agent running."
    group = control_group(await stack.runtime.engine_id())
    assert (await stack.client.xpending(CONTROL_STREAM, group))["pending"] == 0
    dropped = [r for r in caplog.records if "malformed control" in r.getMessage()]
    assert len(dropped) == 4


async def test_a_redelivered_control_reports_its_outcome_once(stack: Stack) -> None:
    user = await stack.new_user()
    stop = control("stop", user)
    await send_control(stack.client, stop)
    await notice_for(stack, stop)

    group = control_group(await stack.runtime.engine_id())
    await stack.client.xgroup_setid(CONTROL_STREAM, group, "0")  # every control comes again
    later = control("stop", user)
    await send_control(stack.client, later)
    await notice_for(stack, later)  # controls run in order: the first ran again before it

    ids = [n.outbound_id for n in await notices(stack)]
    assert ids == [f"control:{stop.request_id}", f"control:{later.request_id}"]
