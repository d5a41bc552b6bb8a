"""Fixed-size workspaces made, mounted, grown, moved into and removed on this host (root)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from gateway.errors import DependencyError
from gateway.settings import AgentLimits
from gateway.supervisor import (
    AGENT_UID,
    AgentContainer,
    DockerRuntime,
    Workspaces,
    container_name,
    container_spec,
    volume_name,
)
from tests.gateway.supervisor._harness import SMALL

USER = "u0123456789abcdef"
OTHER = "ufedcba9876543210"


@pytest.fixture
async def workspaces() -> AsyncIterator[Workspaces]:
    # Short and on /tmp, as the supervisor's own; unmounted before the directory goes.
    with tempfile.TemporaryDirectory(prefix="stk-ws-", dir="/tmp") as root:
        made = Workspaces(Path(root) / "workspaces")
        try:
            yield made
        finally:
            for user in made.users():
                await made.remove(user)


def _mounts_at(point: Path) -> list[str]:
    """Lines of this process's mount table whose mount point is `point`."""
    table = Path("/proc/self/mountinfo").read_text()
    return [line for line in table.splitlines() if line.split()[4] == str(point)]


async def _umount(point: Path) -> None:
    """What a host restart does to a mount."""
    proc = await asyncio.create_subprocess_exec("umount", str(point))
    assert await proc.wait() == 0


def _size(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_blocks * info.f_frsize


async def test_a_new_workspace_is_a_mounted_filesystem_of_its_size_owned_by_the_agent(
    workspaces: Workspaces,
) -> None:
    point, made = await workspaces.ensure(USER, 32)

    assert made and point == workspaces.mount_point(USER)
    assert os.path.ismount(point)
    info = point.stat()
    assert (info.st_uid, info.st_gid) == (AGENT_UID, AGENT_UID)
    assert list(point.iterdir()) == []  # no lost+found
    # ext4 keeps a little for its tables and journal; the agent gets the rest, no more.
    assert 24 << 20 < _size(point) <= 32 << 20
    image = workspaces.image(USER).stat()
    assert image.st_size == 32 << 20
    assert image.st_blocks * 512 < 4 << 20  # sparse: the host gives what is written
    assert stat.S_IMODE(image.st_mode) == 0o600
    assert stat.S_IMODE(workspaces.root.stat().st_mode) == 0o700
    [line] = _mounts_at(point)
    assert {"nosuid", "nodev"} <= set(line.split()[5].split(","))


async def test_ensuring_again_keeps_the_files_and_mounts_again_after_a_restart(
    workspaces: Workspaces,
) -> None:
    point, _ = await workspaces.ensure(USER, 16)
    (point / "memory.json").write_text("kept")
    assert await workspaces.ensure(USER, 16) == (point, False)

    # A host restart: nothing is mounted, the image is still there.
    await _umount(point)
    assert not os.path.ismount(point)
    point, made = await workspaces.ensure(USER, 16)

    assert not made and os.path.ismount(point)
    assert (point / "memory.json").read_text() == "kept"


async def test_an_unmounted_mount_point_takes_no_write_from_the_agent(
    workspaces: Workspaces,
) -> None:
    point, _ = await workspaces.ensure(USER, 16)
    await _umount(point)
    info = point.stat()
    # Mounted by mistake while empty, it gives the agent nothing to write to the host disk.
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o755)


async def test_a_larger_size_grows_the_mounted_workspace_and_a_smaller_one_is_not_applied(
    workspaces: Workspaces, caplog: pytest.LogCaptureFixture
) -> None:
    point, _ = await workspaces.ensure(USER, 16)
    (point / "notes").write_text("before")

    await workspaces.ensure(USER, 48)
    assert 40 << 20 < _size(point) <= 48 << 20
    assert (point / "notes").read_text() == "before"

    with caplog.at_level(logging.WARNING, logger="stockade.supervisor"):
        await workspaces.ensure(USER, 16)
    assert 40 << 20 < _size(point) <= 48 << 20
    assert "keeps its size" in caplog.text


async def test_a_workspace_in_use_grows_in_place_or_else_at_its_next_start(
    workspaces: Workspaces, caplog: pytest.LogCaptureFixture
) -> None:
    point, _ = await workspaces.ensure(USER, 16)
    with (point / "open").open("w") as held:  # a running agent holds its workspace
        with caplog.at_level(logging.WARNING, logger="stockade.supervisor"):
            await workspaces.ensure(USER, 48)
        held.write("still writable")

    assert os.path.ismount(point)
    if _may_resize_online():
        assert 40 << 20 < _size(point) <= 48 << 20
    else:
        # Online growth takes CAP_SYS_RESOURCE, which some hosts (this CI's VM) withhold.
        assert "grows at its next start" in caplog.text
        assert _size(point) <= 16 << 20
        await workspaces.ensure(USER, 48)  # nobody holds it now
        assert 40 << 20 < _size(point) <= 48 << 20
    assert (point / "open").read_text() == "still writable"


def _may_resize_online() -> bool:
    status = Path("/proc/self/status").read_text()
    [effective] = [line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")]
    cap_sys_resource = 24
    return bool(int(effective, 16) >> cap_sys_resource & 1)


async def test_remove_unmounts_and_deletes_and_twice_is_nothing(workspaces: Workspaces) -> None:
    point, _ = await workspaces.ensure(USER, 16)
    await workspaces.ensure(OTHER, 16)

    await workspaces.remove(USER)
    await workspaces.remove(USER)

    assert not os.path.ismount(point) and not point.exists()
    assert not workspaces.image(USER).exists()
    assert workspaces.users() == [OTHER]
    assert _mounts_at(point) == []


async def test_a_half_made_image_is_made_again(workspaces: Workspaces) -> None:
    workspaces.root.mkdir(mode=0o700)
    (workspaces.root / f"{USER}.partial").write_bytes(b"\0" * 4096)

    point, made = await workspaces.ensure(USER, 16)

    assert made and os.path.ismount(point)
    assert not (workspaces.root / f"{USER}.partial").exists()


async def test_concurrent_ensures_make_one_workspace(workspaces: Workspaces) -> None:
    results = await asyncio.gather(*(workspaces.ensure(USER, 16) for _ in range(4)))

    assert sorted(made for _, made in results) == [False, False, False, True]
    assert len(_mounts_at(workspaces.mount_point(USER))) == 1


async def test_a_user_id_that_is_not_ours_never_reaches_a_path(workspaces: Workspaces) -> None:
    with pytest.raises(ValueError, match="not an internal user id"):
        await workspaces.ensure("../../etc", 16)


def test_the_size_is_zero_or_large_enough_for_a_filesystem() -> None:
    assert AgentLimits(workspace_mb=0).workspace_mb == 0
    assert AgentLimits().workspace_mb == 1024
    with pytest.raises(ValueError, match="at least 16"):
        AgentLimits(workspace_mb=8)


# -- through the runtime, with the engine's volumes -----------------------------------------


@pytest.fixture
def runtime(workspaces: Workspaces, docker_engine: Any) -> Iterator[DockerRuntime]:
    made = DockerRuntime(docker_engine, "test-workspaces", workspaces=workspaces)
    yield made
    for user in (USER, OTHER):
        with contextlib.suppress(docker.errors.NotFound):
            docker_engine.containers.get(container_name(user)).remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_engine.volumes.get(volume_name(user)).remove(force=True)


async def _start(
    runtime: DockerRuntime, image: str, tmp_path: Path, user: str, size_mb: int
) -> AgentContainer:
    """Start the user's agent container as the supervisor would, on a workspace of `size_mb`."""
    mesh_dir = tmp_path / "mesh"
    mesh_dir.mkdir(exist_ok=True)
    workspace = await runtime.workspace(user, size_mb)
    limits = SMALL.model_copy(update={"workspace_mb": size_mb})
    spec = container_spec(runtime.deployment, user, image, limits, mesh_dir, workspace)
    return await runtime.start(user, spec)


async def _in_workspace(docker_engine: Any, user: str, command: str) -> str:
    container = docker_engine.containers.get(container_name(user))
    code, out = await asyncio.to_thread(
        container.exec_run, ["sh", "-c", command], user=f"{AGENT_UID}:{AGENT_UID}"
    )
    assert code == 0, out
    return str(out.decode())


async def test_an_agent_on_an_uncapped_volume_finds_its_files_in_its_capped_workspace(
    runtime: DockerRuntime, docker_engine: Any, agent_image: str, tmp_path: Path
) -> None:
    # As before workspaces had a size: a Docker volume the agent has written to.
    await _start(runtime, agent_image, tmp_path, USER, 0)
    await _in_workspace(docker_engine, USER, "mkdir -p .stockade && echo 3 > .stockade/turns")

    await _start(runtime, agent_image, tmp_path, USER, 16)  # replaces the container

    assert await _in_workspace(docker_engine, USER, "cat .stockade/turns; df -k .") != ""
    moved = runtime.workspaces.mount_point(USER) / ".stockade" / "turns"
    assert moved.read_text() == "3\n" and moved.stat().st_uid == AGENT_UID
    assert volume_name(USER) not in {v.name for v in docker_engine.volumes.list()}


async def test_a_volume_too_large_for_the_workspace_stays_and_the_error_says_what_to_raise(
    runtime: DockerRuntime, docker_engine: Any, agent_image: str, tmp_path: Path
) -> None:
    await _start(runtime, agent_image, tmp_path, USER, 0)
    await _in_workspace(docker_engine, USER, "head -c 20971520 /dev/urandom > big")

    with pytest.raises(DependencyError, match=r"16 MB workspace .* raise workspace_mb"):
        await _start(runtime, agent_image, tmp_path, USER, 16)

    assert docker_engine.volumes.get(volume_name(USER))
    assert runtime.workspaces.users() == []
    await _start(runtime, agent_image, tmp_path, USER, 64)  # raised: it moves
    assert await _in_workspace(docker_engine, USER, "wc -c < big") == "20971520\n"


async def test_zero_is_an_uncapped_volume_and_reset_removes_both_kinds(
    runtime: DockerRuntime, docker_engine: Any
) -> None:
    assert await runtime.workspace(USER, 0) == volume_name(USER)
    docker_engine.volumes.create(volume_name(USER))
    await runtime.workspace(OTHER, 16)
    docker_engine.volumes.create(volume_name(OTHER))  # made later beside it: reset takes both

    await runtime.remove_workspace(USER)
    await runtime.remove_workspace(OTHER)

    names = {v.name for v in docker_engine.volumes.list()}
    assert volume_name(USER) not in names and volume_name(OTHER) not in names
    assert runtime.workspaces.users() == []
