"""Escape probes run from inside one real agent container that the supervisor started.

Identity and privileges, the filesystem, system calls, kernel surfaces, devices and the
network are each tried the way a hostile agent would try them, and each must be shut.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import pytest
import pytest_asyncio

from gateway.supervisor._spec import LABEL_USER
from tests.fakes.model_server import Text, ToolCall, ToolCalls
from tests.gateway.supervisor._harness import SMALL
from tests.sandbox import probes
from tests.sandbox._stack import Sandbox, sandbox_stack
from tests.services import RedisProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

MESH_SOCKET = "/run/stockade/mesh.sock"
DENIED = {"EPERM", "EACCES"}
"""What a refused privileged call answers: seccomp and missing capabilities say EPERM."""
UNAVAILABLE = {*DENIED, "ENOSYS"}
"""For system calls an agent has no use for at all, "not implemented" is as good a no."""
DOCKER_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
)
DEFAULT_DEVICES = {
    (1, 3),  # null
    (1, 5),  # zero
    (1, 7),  # full
    (1, 8),  # random
    (1, 9),  # urandom
    (5, 0),  # tty
    (5, 1),  # console
    (5, 2),  # ptmx
}
PTS_MAJOR = 136
RTF_REJECT = 0x0200


class Confined(NamedTuple):
    sandbox: Sandbox
    container: Any


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(
    redis_server: RedisProcess, agent_image: str, docker_engine: Any
) -> AsyncIterator[Confined]:
    """One user's agent, started by the supervisor's loop for a message, and answering."""
    async with sandbox_stack(redis_server.url, agent_image, docker_engine) as sandbox:
        user = await sandbox.stack.new_user()
        yield Confined(sandbox, await sandbox.start_agent(user))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def filesystem(agent: Confined) -> dict[str, Any]:
    return await probes.probe(agent.container, probes.FILESYSTEM)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def syscalls(agent: Confined) -> dict[str, Any]:
    return await probes.probe(agent.container, probes.SYSCALLS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kernel(agent: Confined) -> dict[str, Any]:
    return await probes.probe(agent.container, probes.KERNEL_SURFACES)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def network(agent: Confined) -> dict[str, Any]:
    return await probes.probe(agent.container, probes.NETWORK)


# -- identity and privileges -------------------------------------------------------------


async def test_every_process_runs_as_an_unprivileged_user_with_no_capability(
    agent: Confined,
) -> None:
    report = await probes.probe(agent.container, probes.IDENTITY)
    assert report["uid"] != 0 and report["euid"] != 0 and report["gid"] != 0
    assert 0 not in report["groups"]
    for process, status in report["status"].items():
        assert status["Uid"].split() == ["65534"] * 4, process
        for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[field], 16) == 0, f"{process}: {field} = {status[field]}"


async def test_no_new_privileges_and_a_seccomp_filter_bind_every_process(
    agent: Confined,
) -> None:
    report = await probes.probe(agent.container, probes.IDENTITY)
    for process, status in report["status"].items():
        assert status["NoNewPrivs"] == "1", process
        assert status["Seccomp"] == "2", f"{process}: seccomp mode {status['Seccomp']}"


async def test_the_image_has_no_setuid_or_setgid_program(agent: Confined) -> None:
    report = await probes.probe(agent.container, probes.PRIVILEGE)
    assert report["setuid_files"] == []


async def test_becoming_root_or_entering_a_new_user_namespace_is_refused(
    agent: Confined,
) -> None:
    report = await probes.probe(agent.container, probes.PRIVILEGE)
    assert report["setuid_0"] == "EPERM"
    assert report["setgid_0"] == "EPERM"
    assert report["unshare_user"] in DENIED
    assert report["unshare_mount"] in DENIED
    code, uid, _ = report["unshare_tool"]
    assert code != 0 and uid != "0", "`unshare -r` gave a user namespace"


# -- filesystem --------------------------------------------------------------------------


async def test_the_root_filesystem_usr_and_etc_are_read_only(filesystem: dict[str, Any]) -> None:
    assert filesystem["read_only"] == dict.fromkeys(filesystem["read_only"], "EROFS")
    assert all(filesystem["statvfs_read_only"].values()), filesystem["statvfs_read_only"]


async def test_tmp_is_writable_but_nothing_in_it_can_be_executed(
    filesystem: dict[str, Any],
) -> None:
    assert filesystem["tmp_writable"]
    for place, attempts in filesystem["exec_from"].items():
        assert attempts["binary"] in DENIED, f"a copied binary ran from {place}"
        assert attempts["script"] in DENIED, f"a script ran from {place}"
        assert attempts["mmap_exec"] in DENIED, f"a file in {place} was mapped executable"


async def test_filling_tmp_stops_at_its_size_cap(filesystem: dict[str, Any]) -> None:
    cap = SMALL.tmpfs_mb << 20
    assert filesystem["tmp_size"] == cap
    assert filesystem["fill_failure"] == "ENOSPC"
    assert 0 < filesystem["fill_written"] <= cap


async def test_no_writable_place_in_the_container_can_fill_the_host_disk(
    agent: Confined, docker_engine: Any
) -> None:
    """Every place the agent can write is capped below the host filesystems it could fill.

    The host's disk is where Docker keeps volumes and where the mesh keeps its socket
    directories; a writable place as large as one of those is that disk, uncapped.
    """
    report = await probes.probe(agent.container, probes.MOUNTS)
    writable: dict[str, int] = report["writable"]
    assert writable.get("/tmp") == SMALL.tmpfs_mb << 20  # the probe sees writable places
    host = min(
        _capacity(docker_engine.info()["DockerRootDir"]),
        _capacity(str(agent.sandbox.socket_dir)),
    )
    uncapped = {point: size for point, size in writable.items() if size >= host}
    assert uncapped == {}, f"writable as large as the host disk ({host >> 20} MiB): " + ", ".join(
        f"{point} ({size >> 20} MiB)" for point, size in uncapped.items()
    )


async def test_filling_the_workspace_stops_at_its_size_and_spares_the_host(
    agent: Confined,
) -> None:
    workspaces = agent.sandbox.stack.runtime.workspaces
    user = agent.container.labels[LABEL_USER]
    image = workspaces.image(user)

    report = await probes.probe(
        agent.container, probes.DISK_FILL, "/workspace/hoard", str(8 * SMALL.workspace_mb)
    )

    assert report["write_failure"] == "ENOSPC"
    assert report["written"] <= SMALL.workspace_mb << 20
    assert report["files_failure"] == "ENOSPC"
    # All the host disk gave is the image's blocks: no more than the workspace's size.
    assert image.stat().st_blocks * 512 <= SMALL.workspace_mb << 20
    # The agent serves on once the hoard is gone.
    reply = await agent.sandbox.ask(user, "still there?")
    assert reply.text


def _capacity(path: str) -> int:
    info = os.statvfs(path)
    return info.f_blocks * info.f_frsize


# -- system calls ------------------------------------------------------------------------


async def test_mounting_by_either_mount_api_is_refused(syscalls: dict[str, Any]) -> None:
    for call in ("mount", "umount2", "fsopen"):
        assert syscalls[call] in DENIED, f"{call}: {syscalls[call] or 'succeeded'}"


async def test_the_agent_runtime_cannot_be_traced_or_read_by_other_processes(
    syscalls: dict[str, Any],
) -> None:
    assert syscalls["ptrace_agent"] in DENIED, "PTRACE_ATTACH to the agent runtime succeeded"
    assert syscalls["agent_mem"] in DENIED, "the agent runtime's memory was readable"


async def test_ptrace_attach_to_another_process_in_the_container_is_refused(
    syscalls: dict[str, Any],
) -> None:
    assert syscalls["ptrace_attach"] in DENIED, "PTRACE_ATTACH to a sibling process succeeded"


async def test_no_process_can_read_another_s_memory_by_process_vm_readv(
    syscalls: dict[str, Any],
) -> None:
    assert syscalls["process_vm_readv"] in DENIED


async def test_keyrings_bpf_and_userfaultfd_are_refused(syscalls: dict[str, Any]) -> None:
    for call in ("keyctl", "add_key", "bpf", "userfaultfd"):
        assert syscalls[call] in UNAVAILABLE, f"{call}: {syscalls[call] or 'succeeded'}"


async def test_perf_events_and_io_uring_are_refused(syscalls: dict[str, Any]) -> None:
    for call in ("perf_event_open", "io_uring_setup"):
        assert syscalls[call] in UNAVAILABLE, f"{call}: {syscalls[call] or 'succeeded'}"


async def test_no_namespace_can_be_made_or_entered(syscalls: dict[str, Any]) -> None:
    for call in ("unshare_nothing", "setns_bad_fd", "clone_newuser"):
        assert syscalls[call] in DENIED, f"{call}: {syscalls[call] or 'succeeded'}"
    assert syscalls["clone_plain"] is None, "a plain fork by clone(2) was refused"


async def test_clone3_says_not_implemented_so_libc_falls_back_to_clone(
    syscalls: dict[str, Any],
) -> None:
    assert syscalls["clone3"] == "ENOSYS"


async def test_a_personality_that_makes_data_executable_is_refused(
    syscalls: dict[str, Any],
) -> None:
    assert syscalls["personality_read_implies_exec"] in DENIED
    assert syscalls["personality_query"] is None


async def test_only_local_socket_families_can_be_opened(syscalls: dict[str, Any]) -> None:
    for family in ("socket_alg", "socket_vsock", "socket_packet"):
        assert syscalls[family] in DENIED, f"{family}: {syscalls[family] or 'opened'}"


async def test_the_filter_refuses_calls_the_kernel_alone_would_let_an_agent_make(
    syscalls: dict[str, Any],
) -> None:
    """Without a seccomp filter an unprivileged process gets these (on a kernel with user
    namespaces, user-mode userfaultfd and perf_event_paranoid <= 2), or another error
    than EPERM (EBADF for setns on a bad fd, EINVAL for clone3 with no arguments). So
    EPERM here is the filter's answer, not a missing capability's."""
    for call in (
        "ptrace_attach",
        "process_vm_readv",
        "keyctl",
        "add_key",
        "userfaultfd",
        "setns_bad_fd",
        "unshare_nothing",
        "clone_newuser",
        "personality_read_implies_exec",
        "perf_event_open",
        "io_uring_setup",
        "socket_vsock",
    ):
        assert syscalls[call] == "EPERM", f"{call}: {syscalls[call] or 'succeeded'}"
    assert syscalls["clone3"] == "ENOSYS"


async def test_ordinary_work_runs_under_the_filter(agent: Confined) -> None:
    """Threads, fork, subprocesses, a shell pipeline, coreutils and file I/O in the
    workspace, polling, signals, timers and local sockets all still work."""
    report = await probes.probe(agent.container, probes.ORDINARY_WORK)
    steps = report["steps"]
    failed = {name: result for name, (status, result) in steps.items() if status != "ok"}
    assert failed == {}
    assert steps["fork"][1] == [7, "from the child"]
    assert steps["python_subprocess"][1] == "42"
    assert steps["shell_pipeline"][1] == "A,B"
    assert steps["coreutils_in_workspace"][1] == ["4", "5891b5b5", "600", "./f"]
    assert steps["file_io_in_workspace"][1] == [
        "hello",
        4096,
        "0o640",
        ["data", "data.moved"],
        False,
    ]
    assert steps["polling"][1] == [1, 1, 1]
    assert steps["signals_and_timers"][1] == ["itimer", "usr1", "usr1"]
    assert steps["local_sockets"][1] == ["pair", "unix", "loop"]
    assert steps["asyncio_subprocess"][1] == "async"


async def test_the_shell_tool_runs_pipelines_threads_and_subprocesses(agent: Confined) -> None:
    command = (
        "printf 'b\\na\\n' | sort | tr a-z A-Z | paste -sd, -;"
        " python3 -c 'import threading, subprocess;"
        ' t = threading.Thread(target=print, args=("thread",)); t.start(); t.join();'
        ' subprocess.run(["echo", "child"], check=True)\''
    )
    model = agent.sandbox.stack.model
    model.push(ToolCalls([ToolCall("shell", {"command": command})]), Text("ran it"))
    user = agent.container.labels[LABEL_USER]
    assert (await agent.sandbox.ask(user, "run this")).text == "ran it"
    tool_result = model.requests[-1].body["messages"][-1]
    assert tool_result["role"] == "tool"
    for line in ("A,B", "thread", "child"):
        assert line in tool_result["content"].splitlines(), tool_result["content"]


# -- kernel surfaces and devices ---------------------------------------------------------


async def test_kernel_memory_and_firmware_are_masked(kernel: dict[str, Any]) -> None:
    for path, failure in kernel["read"].items():
        assert failure is not None, f"{path} is readable"
    assert kernel["firmware"] in ([], *DENIED), kernel["firmware"]


async def test_dev_holds_only_the_default_devices(kernel: dict[str, Any]) -> None:
    for path, (kind, major, minor) in kernel["devices"].items():
        assert kind == "c", f"block device {path}"
        assert (major, minor) in DEFAULT_DEVICES or major == PTS_MAJOR, f"host device {path}"


async def test_proc_sys_and_sysrq_cannot_be_written(kernel: dict[str, Any]) -> None:
    for path, failure in kernel["write"].items():
        assert failure is not None, f"{path} was written"


async def test_the_container_has_a_hostname_of_its_own(kernel: dict[str, Any]) -> None:
    assert kernel["hostname"] != socket.gethostname()


# -- network and sockets -----------------------------------------------------------------


async def test_loopback_is_the_only_network_interface(network: dict[str, Any]) -> None:
    assert network["sys_class_net"] == ["lo"]
    assert network["proc_net_dev"] == ["lo"]
    assert all(line.split()[-1] == "lo" for line in network["ipv6_addresses"])


async def test_no_route_leads_out_and_no_nameserver_is_usable(network: dict[str, Any]) -> None:
    """Proved by the routing tables alone: not one packet is sent to find out."""
    assert network["ipv4_routes"] == []
    ipv6_ways_out = [
        line
        for line in network["ipv6_routes"]
        if not int(line.split()[8], 16) & RTF_REJECT and line.split()[9] != "lo"
    ]
    assert ipv6_ways_out == []
    for nameserver in network["nameservers"]:
        address = ipaddress.ip_address(nameserver)
        # The container's own loopback leads nowhere; anything else needs a route.
        assert address.is_loopback or not _routed(address, network["ipv4_routes"]), nameserver


def _routed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, routes: list[str]) -> bool:
    for line in routes:
        fields = line.split()
        destination = socket.inet_ntoa(struct.pack("<L", int(fields[1], 16)))
        mask = socket.inet_ntoa(struct.pack("<L", int(fields[7], 16)))
        if address in ipaddress.ip_network(f"{destination}/{mask}", strict=False):
            return True
    return False


async def test_no_docker_socket_or_daemon_port_is_reachable(
    agent: Confined, network: dict[str, Any]
) -> None:
    report = await probes.probe(agent.container, probes.SOCKETS, *DOCKER_SOCKETS)
    assert report["sockets"] == [MESH_SOCKET]  # found the door, and nothing else
    assert report["connect"] == dict.fromkeys(DOCKER_SOCKETS, "ENOENT")
    assert network["connect"]["2375"] == "ECONNREFUSED"
    assert network["connect"]["2376"] == "ECONNREFUSED"
