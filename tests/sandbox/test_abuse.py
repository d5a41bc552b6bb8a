"""Resource abuse from inside real agent containers: a fork bomb and memory hogs are stopped
by the container's limits, the supervisor restarts an agent the OOM killer took and tells
its user once, and other users' agents go on answering meanwhile."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from tests.fakes.model_server import Text
from tests.gateway.supervisor._harness import SMALL
from tests.sandbox import probes
from tests.sandbox._stack import Sandbox, eventually, oom_kills, pids_current

KILLED = 137
"""128 + SIGKILL: how an OOM-killed process (or the container it ran) exits."""
TWICE_THE_LIMIT = str(2 * SMALL.memory_mb)
SIBLING_REPLY_S = 5.0
"""How long another user's agent may take to answer while one agent misbehaves."""
MISBEHAVE_S = 20.0
"""Long enough to cover the other user's turn; the container's removal ends it sooner."""


async def test_a_fork_bomb_stops_at_the_pid_limit_and_the_agent_still_answers(
    sandbox: Sandbox,
) -> None:
    user = await sandbox.stack.new_user()
    container = await sandbox.start_agent(user)

    report = await probes.probe(container, probes.FORK_BOMB)

    assert report["failure"] == "EAGAIN"
    assert 0 < report["forked"] < SMALL.pids
    assert report["processes_left"] <= 3  # init, the agent, the probe: the children are gone
    assert pids_current(container) <= 4
    code, _ = await asyncio.to_thread(container.exec_run, ["true"], user=probes.AGENT_USER)
    assert code == 0
    sandbox.stack.model.push(Text("still here"))
    assert (await sandbox.ask(user, "are you there?")).text == "still here"


async def test_a_memory_hog_is_oom_killed_and_the_agent_keeps_answering(
    sandbox: Sandbox,
) -> None:
    user = await sandbox.stack.new_user()
    container = await sandbox.start_agent(user)
    kills = oom_kills(container)

    code, output = await probes.exec_status(container, probes.MEMORY_HOG, TWICE_THE_LIMIT)

    assert code == KILLED, output
    assert "survived" not in output
    assert oom_kills(container) == kills + 1
    assert (await sandbox.container(user)).id == container.id  # the agent itself lived on
    sandbox.stack.model.push(Text("still here"))
    assert (await sandbox.ask(user, "are you there?")).text == "still here"


async def test_an_agent_the_oom_killer_takes_is_restarted_and_its_user_told_once(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stockade.supervisor")
    user = await sandbox.stack.new_user()
    container = await sandbox.start_agent(user)

    code, output = await probes.exec_status(
        container, probes.OOM_THE_AGENT, TWICE_THE_LIMIT, user="0:0"
    )
    died = time.monotonic()
    assert '"oom_score_adj": 1000' in output, output
    assert code == KILLED, output

    async def replacement() -> Any | None:
        found = await sandbox.container(user)
        return found if found.id != container.id else None

    restarted = await eventually(replacement, 30, "the supervisor to restart the agent")
    took = time.monotonic() - died
    assert restarted.attrs["State"]["Running"]
    # The old container is gone once replaced; the supervisor's log line is what it read
    # from the engine: State.ExitCode and State.OOMKilled of the container that died.
    assert f"the agent of {user} exited (code {KILLED}, oom True)" in caplog.text
    assert took < 5.0, f"the supervisor took {took:.1f} s to restart the agent"

    sandbox.stack.model.push(Text("back again"))
    assert (await sandbox.ask(user, "are you back?")).text == "back again"
    notices = [
        reply
        for reply in await sandbox.stack.replies()
        if reply.conversation_id == f"chat-{user}" and "memory" in reply.text
    ]
    assert len(notices) == 1, [n.text for n in notices]
    assert "restarted" in notices[0].text


async def test_another_users_agent_answers_promptly_while_one_agent_misbehaves(
    sandbox: Sandbox,
) -> None:
    rogue, other = await sandbox.stack.new_user(), await sandbox.stack.new_user()
    rogue_container, _ = await asyncio.gather(
        sandbox.start_agent(rogue), sandbox.start_agent(other)
    )
    await asyncio.to_thread(
        rogue_container.exec_run,
        probes.command(probes.MISBEHAVE, TWICE_THE_LIMIT, str(MISBEHAVE_S)),
        user=probes.AGENT_USER,
        detach=True,
    )

    async def rogue_at_its_limits() -> int | None:
        # Killed more than once: the hogs keep coming back; every PID taken.
        kills = oom_kills(rogue_container)
        return kills if kills >= 2 and pids_current(rogue_container) >= SMALL.pids - 2 else None

    kills_before = await eventually(rogue_at_its_limits, 20, "the rogue agent to hit its limits")
    started = time.monotonic()
    reply = await sandbox.ask(other, "hello while the neighbour misbehaves")
    took = time.monotonic() - started

    assert reply.text
    assert took < SIBLING_REPLY_S, f"the other user's agent took {took:.1f} s to answer"
    # The rogue was at its limits before the other's turn, and still is after it.
    assert pids_current(rogue_container) >= SMALL.pids - 2

    async def killed_again() -> int | None:
        kills = oom_kills(rogue_container)
        return kills if kills > kills_before else None

    await eventually(killed_again, 10, "the rogue's memory hogs to be OOM-killed again")
