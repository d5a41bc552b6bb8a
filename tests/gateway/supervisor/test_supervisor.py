"""The supervisor on a real Docker engine: one hardened container per user, started, reused,
restarted after a crash (telling the user once), stopped when idle, capped, and adopted."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.bus import WAKE_STREAM, agent_stream
from gateway.mesh import AGENT_GROUP
from gateway.supervisor import container_name, volume_name
from gateway.supervisor._seccomp import security_opt
from tests.fakes.model_server import Text
from tests.gateway.supervisor._harness import SMALL, Stack, agent_stack, wake_all
from tests.services import RedisProcess


def inspect(docker_engine: Any, user: str) -> dict[str, Any]:
    attrs: dict[str, Any] = docker_engine.api.inspect_container(container_name(user))
    return attrs


async def test_the_first_message_starts_a_hardened_container(
    stack: Stack, docker_engine: Any
) -> None:
    user = await stack.new_user()
    await stack.say(user, "hello")
    await wake_all(stack)

    attrs = inspect(docker_engine, user)
    host = attrs["HostConfig"]
    assert attrs["State"]["Running"]
    assert attrs["Config"]["User"] == "65534:65534"
    assert host["CapDrop"] == ["ALL"]
    assert not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true", security_opt()]
    assert host["ReadonlyRootfs"] is True
    assert host["Privileged"] is False
    assert host["NetworkMode"] == "none"
    assert host["Memory"] == 96 * 1024 * 1024
    assert host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert "noexec" in host["Tmpfs"]["/tmp"] and "size=8m" in host["Tmpfs"]["/tmp"]
    assert host["IpcMode"] == "private"
    assert attrs["Config"]["Labels"]["org.stockade.user"] == user
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert set(mounts) == {"/workspace", "/run/stockade"}
    # The user's own fixed-size filesystem, mounted on the host: a bind of its mount point.
    assert mounts["/workspace"]["Type"] == "bind" and mounts["/workspace"]["RW"]
    assert mounts["/workspace"]["Source"] == str(stack.runtime.workspaces.mount_point(user))
    assert all("docker.sock" not in (m.get("Source") or "") for m in attrs["Mounts"])
    env = "\n".join(attrs["Config"]["Env"])
    assert "sk-canary-test" not in env


async def test_the_same_container_serves_later_messages(stack: Stack, docker_engine: Any) -> None:
    user = await stack.new_user()
    await stack.say(user, "one")
    await wake_all(stack)
    first = inspect(docker_engine, user)["Id"]
    await stack.say(user, "two")
    await wake_all(stack)
    assert inspect(docker_engine, user)["Id"] == first


async def test_a_user_whose_agent_cannot_start_holds_up_nobody_else(
    stack: Stack, docker_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stuck, other = await stack.new_user(), await stack.new_user()
    # A Docker volume from before workspaces had a size, too large for SMALL's 16 MB.
    volume = docker_engine.volumes.create(volume_name(stuck))
    (Path(volume.attrs["Mountpoint"]) / "big").write_bytes(os.urandom(20 << 20))
    try:
        with caplog.at_level(logging.WARNING, logger="stockade.supervisor"):
            await stack.say(stuck, "first in line")
            await stack.say(other, "second")
            for _ in range(3):  # the stuck one is tried again, and logged once
                await wake_all(stack)

            [answered] = await stack.wait_for_replies(1)
        assert answered.user_id == other
        assert not docker_engine.containers.list(all=True, filters={"name": container_name(stuck)})
        assert await stack.bus.lag(agent_stream(stuck), AGENT_GROUP) == 1  # it waits
        failures = [r for r in caplog.records if "cannot start" in r.getMessage()]
        assert len(failures) == 1 and stuck in failures[0].getMessage()
    finally:
        docker_engine.volumes.get(volume_name(stuck)).remove(force=True)


async def test_a_crashed_agent_is_restarted_and_the_user_told_once(
    stack: Stack, docker_engine: Any
) -> None:
    user = await stack.new_user()
    await stack.say(user, "hello")
    await wake_all(stack)
    docker_engine.containers.get(container_name(user)).kill()

    await stack.supervisor.reconcile()
    assert inspect(docker_engine, user)["State"]["Running"]
    await stack.supervisor.reconcile()
    notices = [r for r in await stack.replies() if "restarted" in r.text]
    assert len(notices) == 1
    assert notices[0].conversation_id == f"chat-{user}"


async def test_an_idle_agent_is_stopped_and_its_workspace_kept(
    stack: Stack, docker_engine: Any
) -> None:
    user = await stack.new_user()
    await stack.say(user, "hello")
    await wake_all(stack)
    # Let the agent take and answer the message, so no work is left.
    await stack.wait_for_replies(1)
    stack.clock.now += 10_000
    async with asyncio.timeout(30):
        while any(c.user_id == user for c in await stack.runtime.agents()):
            await stack.supervisor.reconcile()
            await asyncio.sleep(0.1)
    assert os.path.ismount(stack.runtime.workspaces.mount_point(user))
    assert not stack.mesh.is_open(user)


async def test_an_agent_with_work_left_is_not_stopped_for_idleness(
    stack: Stack, docker_engine: Any
) -> None:
    user = await stack.new_user()
    await stack.mesh.close(user)  # no door: the message stays unanswered
    await stack.say(user, "hello")
    await stack.bus.ensure_group(WAKE_STREAM, "supervisor")
    for delivery in await stack.bus.read(WAKE_STREAM, "supervisor", "s1", count=10, block_ms=10):
        await stack.supervisor.handle_wake(delivery)
    await stack.supervisor.reconcile()
    await stack.mesh.close(user)
    stack.clock.now += 10_000
    await stack.supervisor.reconcile()
    assert inspect(docker_engine, user)["State"]["Running"]


async def test_the_running_cap_queues_new_users_until_a_slot_frees(
    redis_server: RedisProcess, agent_image: str, docker_engine: Any
) -> None:
    async with agent_stack(redis_server.url, agent_image, docker_engine, max_running=1) as stack:
        first = await stack.new_user()
        second = await stack.new_user()
        await stack.say(first, "hello")
        await wake_all(stack)
        stack.clock.now += 1
        await stack.say(second, "hello")
        await wake_all(stack)
        running = {c.user_id for c in await stack.runtime.agents() if c.running}
        assert running == {first}

        await stack.wait_for_replies(1)
        stack.clock.now += 10_000  # the first goes idle; the second still has work
        async with asyncio.timeout(30):
            while {c.user_id for c in await stack.runtime.agents() if c.running} != {second}:
                await stack.supervisor.reconcile()
                await asyncio.sleep(0.1)


async def test_a_new_supervisor_adopts_wanted_agents_and_removes_the_rest(
    stack: Stack, docker_engine: Any
) -> None:
    kept = await stack.new_user()
    dropped = await stack.new_user()
    for user in (kept, dropped):
        await stack.say(user, "hello")
    await wake_all(stack)
    kept_id = inspect(docker_engine, kept)["Id"]
    await stack.client.hdel("stockade:supervisor:wanted", dropped)

    from gateway.supervisor import Supervisor

    restarted = Supervisor(
        stack.client,
        stack.bus,
        stack.runtime,
        stack.mesh,
        inspect(docker_engine, kept)["Config"]["Image"],
        stack.supervisor._settings,
        clock=stack.clock,
    )
    await restarted.reconcile()
    present = {c.user_id for c in await stack.runtime.agents()}
    assert kept in present and dropped not in present
    assert inspect(docker_engine, kept)["Id"] == kept_id


async def test_containers_of_another_deployment_on_the_same_engine_are_left_alone(
    stack: Stack, docker_engine: Any, agent_image: str, tmp_path: Any
) -> None:
    from gateway.supervisor import DockerRuntime, container_spec

    other = DockerRuntime(docker_engine, "another-deployment", workspaces=stack.runtime.workspaces)
    stranger = await stack.new_user()
    mesh_dir = tmp_path / "mesh"
    mesh_dir.mkdir()
    workspace = await other.workspace(stranger, SMALL.workspace_mb)
    spec = container_spec(other.deployment, stranger, agent_image, SMALL, mesh_dir, workspace)
    try:
        await other.start(stranger, spec)
        await stack.supervisor.reconcile()  # this deployment wants nobody
        assert inspect(docker_engine, stranger)["State"]["Running"]
        assert stranger not in {c.user_id for c in await stack.runtime.agents()}
    finally:
        await other.remove(stranger)


async def test_a_running_agent_gets_its_door_back_after_the_mesh_restarts(
    stack: Stack, docker_engine: Any
) -> None:
    user = await stack.new_user()
    await stack.say(user, "one")
    await wake_all(stack)
    await stack.wait_for_replies(1)
    container_id = inspect(docker_engine, user)["Id"]

    await stack.mesh.aclose()  # what a gateway restart does to the doors
    assert not stack.mesh.is_open(user)
    await stack.supervisor.reconcile()
    assert stack.mesh.is_open(user)
    assert inspect(docker_engine, user)["Id"] == container_id

    await stack.say(user, "two")
    replies = await stack.wait_for_replies(2)
    assert replies[-1].conversation_id == f"chat-{user}"


async def test_an_agent_made_from_older_settings_is_replaced_between_turns(
    stack: Stack, docker_engine: Any
) -> None:
    """New limits (or a new image or profile) reach a running agent at its next pause,
    never in the middle of a turn; its workspace stays."""
    from gateway.settings import SupervisorSettings
    from gateway.supervisor import Supervisor

    user = await stack.new_user()
    stack.model.push(Text("first"))
    await stack.say(user, "hello")
    await wake_all(stack)
    await stack.wait_for_replies(1)
    before = inspect(docker_engine, user)
    settings = SupervisorSettings(
        limits=SMALL.model_copy(update={"pids": SMALL.pids + 1}), check_interval_s=0.2
    )
    newer = Supervisor(
        stack.client, stack.bus, stack.runtime, stack.mesh, before["Config"]["Image"],
        settings, clock=stack.clock,
    )  # fmt: skip

    await stack.mesh.close(user)  # no door: the next message stays unanswered
    await stack.say(user, "are you there?")
    await newer.reconcile()
    assert inspect(docker_engine, user)["Id"] == before["Id"]  # a turn is waiting

    await stack.mesh.open(user)
    await stack.wait_for_replies(2)
    async with asyncio.timeout(30):
        while (
            await stack.client.xpending(f"stockade:agent:{user}", "agent") != 0
            and ((await stack.client.xpending(f"stockade:agent:{user}", "agent"))["pending"])
        ):
            await asyncio.sleep(0.05)
    await newer.reconcile()
    after = inspect(docker_engine, user)
    assert after["Id"] != before["Id"]
    assert after["HostConfig"]["PidsLimit"] == SMALL.pids + 1
    workspace = {m["Source"] for m in after["Mounts"] if m["Destination"] == "/workspace"}
    assert workspace == {m["Source"] for m in before["Mounts"] if m["Destination"] == "/workspace"}
    await newer.reconcile()
    assert inspect(docker_engine, user)["Id"] == after["Id"]  # replaced once
