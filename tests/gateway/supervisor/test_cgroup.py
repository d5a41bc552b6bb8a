"""Memory read from the kernel's cgroup files: the paths parsed as plain text, then a
real agent container measured from the kernel and checked against the engine's figure."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.supervisor import DockerRuntime
from gateway.supervisor._cgroup import memory_dir, memory_stats, read_memory
from gateway.supervisor._runtime import engine_time, memory_in_use
from tests.gateway.supervisor._harness import Stack, wake_all

CID = "4f1c" * 16
ROOT = Path("/cg")


def test_the_v1_memory_hierarchy_is_found_on_a_host_that_mounts_both() -> None:
    text = (
        f"12:pids:/docker/{CID}\n"
        f"5:memory:/docker/{CID}\n"
        "1:name=systemd:/init.scope\n"
        f"0::/docker/{CID}\n"
    )
    assert memory_dir(text, CID, ROOT) == ROOT / "memory" / "docker" / CID


def test_the_unified_hierarchy_is_found_on_a_v2_host() -> None:
    text = f"0::/system.slice/docker-{CID}.scope\n"
    assert memory_dir(text, CID, ROOT) == ROOT / "system.slice" / f"docker-{CID}.scope"


def test_a_process_whose_cgroup_does_not_name_the_container_is_not_measured() -> None:
    # A process id handed to another process since the container's start.
    assert memory_dir("5:memory:/user.slice\n0::/user.slice\n", CID, ROOT) is None
    assert memory_dir(f"5:memory:/docker/{CID}\n", "", ROOT) is None
    assert read_memory(os.getpid(), CID) is None
    assert read_memory(0, CID) is None


def test_v2_files_read_in_the_engine_shape(tmp_path: Path) -> None:
    (tmp_path / "memory.current").write_text("1000\n")
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.stat").write_text("anon 600\ninactive_file 300\nbroken x\n")
    stats = memory_stats(tmp_path)
    assert stats == {"usage": 1000, "limit": None, "stats": {"anon": 600, "inactive_file": 300}}
    assert memory_in_use(stats) == 700


def test_a_directory_that_is_not_a_memory_cgroup_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        memory_stats(tmp_path)


def _in_use(memory: dict[str, Any]) -> int:
    in_use = memory_in_use(memory)
    assert in_use is not None and in_use > 0
    return in_use


async def settled_memory(pid: int, cid: str) -> dict[str, Any]:
    """The kernel's figures once the agent's memory stopped changing (it has just started)."""
    last = read_memory(pid, cid)
    assert last is not None, "this host's cgroup files should be in sight"
    for _ in range(40):
        await asyncio.sleep(0.25)
        now = read_memory(pid, cid)
        assert now is not None
        if abs(_in_use(now) - _in_use(last)) <= 0.02 * _in_use(last):
            return now
        last = now
    raise AssertionError("the agent's memory did not settle within 10 s")


async def test_a_running_agent_is_measured_from_the_kernel_as_the_engine_measures_it(
    stack: Stack, docker_engine: Any, tmp_path: Path
) -> None:
    user = await stack.new_user()
    await stack.say(user, "hello")
    await wake_all(stack)
    attrs = docker_engine.api.inspect_container(f"stockade-agent-{user}")
    cid, pid = attrs["Id"], attrs["State"]["Pid"]

    before = await settled_memory(pid, cid)
    engine = docker_engine.api.stats(cid, stream=False, one_shot=True)["memory_stats"]
    after = read_memory(pid, cid)
    assert after is not None
    assert before["limit"] == after["limit"] == engine["limit"] == 96 * 1024 * 1024
    # The engine's figure comes from its last collection, up to a second old: it lies
    # between the two kernel readings around it, give or take what a second changes.
    kernel = sorted(_in_use(reading) for reading in (before, after))
    assert kernel[0] * 0.8 <= _in_use(engine) <= kernel[1] * 1.2

    # The runtime reads the files of the container's own cgroup: planted figures in
    # a copy of that layout come back, with no engine call in between.
    directory = memory_dir((Path("/proc") / str(pid) / "cgroup").read_text(), cid, tmp_path)
    assert directory is not None
    directory.mkdir(parents=True)
    if "memory" in directory.relative_to(tmp_path).parts[:1]:
        (directory / "memory.usage_in_bytes").write_text("5000\n")
        (directory / "memory.limit_in_bytes").write_text("8000\n")
        (directory / "memory.stat").write_text("total_inactive_file 1000\n")
    else:
        (directory / "memory.current").write_text("5000\n")
        (directory / "memory.max").write_text("8000\n")
        (directory / "memory.stat").write_text("inactive_file 1000\n")
    planted = DockerRuntime(
        docker_engine,
        stack.runtime.deployment,
        workspaces=stack.runtime.workspaces,
        cgroups=tmp_path,
    )
    usage = await planted.usage(cid)
    assert usage is not None
    assert (usage.memory_bytes, usage.memory_limit_bytes) == (4000, 8000)

    # Restarted in place: the old main process is gone. That sample comes from the
    # engine, and the next one finds the new process and start time.
    docker_engine.api.restart(cid, timeout=1)
    restarted = docker_engine.api.inspect_container(cid)["State"]
    assert restarted["Pid"] != pid
    usage = await planted.usage(cid)
    assert usage is not None and usage.memory_limit_bytes == 96 * 1024 * 1024
    usage = await planted.usage(cid)
    assert usage is not None
    assert (usage.memory_bytes, usage.memory_limit_bytes) == (4000, 8000)
    assert usage.started_at == pytest.approx(engine_time(restarted["StartedAt"]))

    # Out of sight (another host's engine): the engine's stats call measures it.
    remote = DockerRuntime(
        docker_engine,
        stack.runtime.deployment,
        workspaces=stack.runtime.workspaces,
        proc=tmp_path / "no-proc",
    )
    usage = await remote.usage(cid)
    assert usage is not None and usage.memory_limit_bytes == 96 * 1024 * 1024
    assert usage.memory_bytes is not None and usage.memory_bytes > 0
