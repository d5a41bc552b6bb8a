"""The agents' status for operators: built and parsed as plain values, then written by a
supervisor on a real Docker engine, with a memory figure, and dropped when the agent goes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.supervisor import STATUS_KEY, AgentContainer, AgentStatus, alive_key, parse_status
from gateway.supervisor._runtime import ContainerUsage, engine_time, memory_in_use
from gateway.supervisor._status import stale_fields, statuses
from tests.gateway.supervisor._harness import Stack, wake_all


def container(user: str, running: bool = True) -> AgentContainer:
    return AgentContainer(user, f"{user}-0123456789abcdef", running, 0, False, "")


USAGE = ContainerUsage(started_at=100.0, memory_bytes=5_000_000, memory_limit_bytes=96 << 20)


def test_statuses_cover_containers_and_wanted_users_without_one() -> None:
    found = statuses(
        [container("ua"), container("ub", running=False)],
        wanted=["ua", "ub", "uc", "ud"],
        paused=frozenset({"ud"}),
        usage={"ua-0123456789abcdef": USAGE},
        host="engine-1",
        now=500.0,
    )
    by_user = {s.user_id: s for s in found}
    assert by_user["ua"] == AgentStatus(
        "ua", "running", "ua-012345678", 100.0, 5_000_000, 96 << 20, "engine-1", 500.0
    )
    assert by_user["ub"].state == "exited" and by_user["ub"].memory_bytes is None
    assert by_user["uc"].state == "waiting" and by_user["uc"].container == ""
    assert by_user["ud"].state == "paused"


def test_everyone_paused_marks_every_agent_paused() -> None:
    found = statuses([], ["ua", "ub"], None, {}, "engine-1", 1.0)
    assert {s.state for s in found} == {"paused"}


def test_parse_status_reads_what_is_written_and_skips_garbage() -> None:
    written = statuses([container("ua")], ["ua"], frozenset(), {}, "h", 2.0)[0]
    raw = {
        b"ua": written.to_json().encode(),
        b"ub": b"not json",
        b"uc": json.dumps({"state": "flying"}).encode(),
        b"\xff": written.to_json().encode(),
        b"ud": json.dumps({"state": "waiting", "memory_bytes": "lots"}).encode(),
    }
    parsed = parse_status(raw)
    assert [s.user_id for s in parsed] == ["ua", "ud"]
    assert parsed[0] == written
    assert parsed[1].memory_bytes is None and parsed[1].updated == 0.0
    assert parse_status({"ua": written.to_json()}) == [written]


def test_a_host_removes_only_its_own_stale_fields() -> None:
    mine = statuses([container("ua")], [], frozenset(), {}, "me", 1.0)[0].to_json()
    theirs = statuses([container("ub")], [], frozenset(), {}, "other", 1.0)[0].to_json()
    raw = {b"ua": mine.encode(), b"ub": theirs.encode(), b"uc": b"?", b"ue": mine.encode()}
    assert sorted(stale_fields(raw, "me", ["ue"])) == [b"ua", b"uc"]


def test_memory_in_use_leaves_out_reclaimable_file_pages() -> None:
    assert memory_in_use({"usage": 1000, "stats": {"total_inactive_file": 300}}) == 700
    assert memory_in_use({"usage": 1000, "stats": {"inactive_file": 200}}) == 800
    assert memory_in_use({"usage": 1000, "stats": {}}) == 1000
    assert memory_in_use({"usage": 100, "stats": {"inactive_file": 500}}) == 100
    assert memory_in_use({}) is None


def test_engine_time_reads_nanosecond_timestamps_and_never() -> None:
    assert engine_time("2024-05-01T10:00:00.123456789Z") == pytest.approx(1714557600.123456)
    assert engine_time("0001-01-01T00:00:00Z") is None
    assert engine_time("") is None


async def test_the_status_shows_a_running_agent_with_its_memory_until_it_is_gone(
    stack: Stack, docker_engine: Any
) -> None:
    user = await stack.new_user()
    await stack.say(user, "hello")
    await wake_all(stack)
    engine = await stack.runtime.engine_id()
    assert engine == docker_engine.info()["ID"]

    (listed,) = parse_status(await stack.client.hgetall(STATUS_KEY))
    assert (listed.user_id, listed.state, listed.host) == (user, "running", engine)
    assert listed.memory_bytes is None  # measured apart from the pass

    await stack.supervisor.sample()
    (measured,) = parse_status(await stack.client.hgetall(STATUS_KEY))
    attrs = docker_engine.api.inspect_container(f"stockade-agent-{user}")
    assert measured.container == attrs["Id"][:12]
    assert measured.memory_bytes is not None and measured.memory_bytes > 0
    assert measured.memory_limit_bytes == 96 * 1024 * 1024
    assert measured.started_at == pytest.approx(engine_time(attrs["State"]["StartedAt"]))
    alive = alive_key(engine)
    assert float(await stack.client.get(alive) or 0) == stack.clock()
    assert 0 < await stack.client.ttl(alive) <= 15

    await stack.client.hdel("stockade:supervisor:wanted", user)
    await stack.supervisor.reconcile()
    assert await stack.client.hgetall(STATUS_KEY) == {}
