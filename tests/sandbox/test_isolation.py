"""Two users' agents side by side: from inside one, the other's door, messages and workspace,
and the host's Redis, are out of reach; the one socket an agent has serves only its user."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import pytest
import pytest_asyncio

from gateway.bus import agent_stream
from gateway.mesh import AGENT_GROUP, SOCKET_NAME
from tests.sandbox import probes
from tests.sandbox._stack import Sandbox, sandbox_stack
from tests.services import RedisProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

MESH_SOCKET = "/run/stockade/mesh.sock"
POLL_CAP_S = 1.0
"""The stack's `next_wait_s`: a long poll of a paused agent ends within this."""


class Pair(NamedTuple):
    sandbox: Sandbox
    a: str
    b: str
    container_a: Any
    container_b: Any


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(
    redis_server: RedisProcess, agent_image: str, docker_engine: Any
) -> AsyncIterator[Pair]:
    async with sandbox_stack(redis_server.url, agent_image, docker_engine) as sandbox:
        a = await sandbox.stack.new_user()
        b = await sandbox.stack.new_user()
        container_a, container_b = await asyncio.gather(
            sandbox.start_agent(a), sandbox.start_agent(b)
        )
        yield Pair(sandbox, a, b, container_a, container_b)


async def test_an_agent_finds_no_socket_but_its_own_door_and_cannot_reach_redis(
    pair: Pair, redis_server: RedisProcess
) -> None:
    redis_socket = redis_server.url.removeprefix("unix://")
    other_door = str(pair.sandbox.socket_dir / pair.b / SOCKET_NAME)
    report = await probes.probe(
        pair.container_a, probes.SOCKETS, MESH_SOCKET, redis_socket, other_door
    )
    assert report["sockets"] == [MESH_SOCKET]
    assert report["connect"] == {MESH_SOCKET: None, redis_socket: "ENOENT", other_door: "ENOENT"}
    assert not any(redis_socket in name for name in report["proc_net_unix"])


async def test_an_agents_door_hands_out_only_its_own_users_messages(pair: Pair) -> None:
    """With B's message waiting, A's socket gives A's message and never B's, whatever it asks."""
    stack = pair.sandbox.stack
    # Both agents are paused, so the messages wait and the probe, not A's agent, takes A's.
    for container in (pair.container_a, pair.container_b):
        await probes.probe(container, probes.SIGNAL_AGENT, "SIGSTOP")
    try:
        await asyncio.sleep(POLL_CAP_S + 1.0)
        for_b = f"for B only {secrets.token_hex(4)}"
        await stack.say(pair.b, for_b)
        for_a = f"for A {secrets.token_hex(4)}"
        await stack.say(pair.a, for_a)
        report = await probes.probe(pair.container_a, probes.MESH_NEXT, pair.b)
        waiting = await stack.bus.lag(agent_stream(pair.b), AGENT_GROUP)
    finally:
        for container in (pair.container_a, pair.container_b):
            await probes.probe(container, probes.SIGNAL_AGENT, "SIGCONT")

    texts = {answer["body"]["text"] for answer in report["answers"] if answer["status"] == 200}
    assert texts == {for_a}  # A's message came through A's door; B's never did
    assert all(answer["status"] in (200, 204) for answer in report["answers"]), report
    assert waiting >= 1  # and B's is still there, waiting for B's agent


async def test_another_users_workspace_is_out_of_sight(pair: Pair) -> None:
    marker = f"stockade-marker-{secrets.token_hex(6)}"
    code, _ = await asyncio.to_thread(
        pair.container_b.exec_run,
        ["sh", "-c", f"echo {marker} > /workspace/{marker}"],
        user=probes.AGENT_USER,
    )
    assert code == 0
    in_b = await probes.probe(pair.container_b, probes.MOUNTS, marker)
    in_a = await probes.probe(pair.container_a, probes.MOUNTS, marker)

    assert in_b["named"] == [f"/workspace/{marker}"]  # the search does find it where it is
    assert in_a["named"] == []
    workspaces = pair.sandbox.stack.runtime.workspaces
    [workspace] = [
        line for line in in_a["mountinfo"].splitlines() if line.split()[4] == "/workspace"
    ]
    assert " - ext4 /dev/loop" in workspace  # a filesystem of its own, not a host directory
    assert pair.b not in in_a["mountinfo"]
    mounts = {m["Destination"]: m for m in pair.container_a.attrs["Mounts"]}
    assert mounts["/workspace"]["Source"] == str(workspaces.mount_point(pair.a))
    assert pair.b not in str(pair.container_a.attrs["Mounts"])
