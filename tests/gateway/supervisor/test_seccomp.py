"""Stockade's seccomp profile, checked as a value: what it lets through and what it refuses.

`allows` below evaluates the profile the way libseccomp's filter would for one call on
its first argument, so the tests read as behaviour rather than as JSON shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import AgentLimits
from gateway.supervisor import container_spec
from gateway.supervisor._seccomp import ALLOWED, profile, security_opt

EPERM, ENOSYS = 1, 38

NEVER_ALLOWED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "userfaultfd",
    "unshare",
    "setns",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "iopl",
    "ioperm",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    "adjtimex",
    "clock_adjtime",
    "clock_adjtime64",
    "open_by_handle_at",
    "name_to_handle_at",
    "syslog",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "sethostname",
    "setdomainname",
    "fanotify_init",
    "vhangup",
    "modify_ldt",
    "vm86",
    "vm86old",
    "uselib",
    "_sysctl",
    "nfsservctl",
    # Would carry socket() past its family filter on 32-bit x86.
    "socketcall",
)

NEEDED = (
    # The agent runtime: python3, its threads and its shell tool's process groups.
    "execve",
    "clone",
    "fork",
    "vfork",
    "wait4",
    "futex",
    "prctl",
    "setsid",
    "kill",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "mmap",
    "mprotect",
    "munmap",
    "brk",
    "openat",
    "read",
    "write",
    "close",
    "close_range",
    "newfstatat",
    "statx",
    "faccessat2",
    "getdents64",
    "pipe2",
    "dup2",
    "ioctl",
    "fcntl",
    "poll",
    "epoll_wait",
    "epoll_pwait",
    "select",
    "connect",
    "sendto",
    "recvfrom",
    "getrandom",
    "rseq",
    "set_robust_list",
    "set_tid_address",
    "arch_prctl",
    "clock_gettime",
    "clock_nanosleep",
    "personality",
    "socket",
    "socketpair",
    "uname",
)

CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
SIGCHLD = 17
FORK_FLAGS = 0x01200000 | SIGCHLD  # CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID, as glibc forks
# CLONE_VM | FS | FILES | SIGHAND | THREAD | SYSVSEM | SETTLS | PARENT_SETTID | CHILD_CLEARTID
THREAD_FLAGS = 0x003D0F00
SPAWN_FLAGS = 0x00004100 | SIGCHLD  # CLONE_VM | CLONE_VFORK, as posix_spawn and vfork

ACCEPTED_FIELDS = {"index", "value", "valueTwo", "op"}


def _arg_matches(condition: dict[str, Any], arg0: int) -> bool:
    assert set(condition) == ACCEPTED_FIELDS
    assert condition["index"] == 0
    if condition["op"] == "SCMP_CMP_EQ":
        return bool(arg0 == condition["value"])
    if condition["op"] == "SCMP_CMP_MASKED_EQ":
        return bool(arg0 & condition["value"] == condition["valueTwo"])
    raise AssertionError(f"unexpected comparison {condition['op']}")


def _rules_for(name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile()["syscalls"] if name in rule["names"]]


def allows(name: str, arg0: int = 0) -> bool:
    """Whether the profile lets `name(arg0, ...)` through."""
    for rule in _rules_for(name):
        if rule["action"] != "SCMP_ACT_ALLOW":
            continue
        if all(_arg_matches(condition, arg0) for condition in rule.get("args", [])):
            return True
    return False


def errno_of(name: str) -> int:
    """The errno a refused call of `name` gets."""
    answers = [rule["errnoRet"] for rule in _rules_for(name) if rule["action"] == "SCMP_ACT_ERRNO"]
    return answers[0] if answers else int(profile()["defaultErrnoRet"])


def test_every_call_not_allowed_fails_with_eperm() -> None:
    built = profile()
    assert built["defaultAction"] == "SCMP_ACT_ERRNO"
    assert built["defaultErrnoRet"] == EPERM
    assert errno_of("ptrace") == EPERM


@pytest.mark.parametrize("name", NEVER_ALLOWED)
def test_escape_prone_calls_are_never_allowed(name: str) -> None:
    assert _rules_for(name) == []
    assert errno_of(name) == EPERM


@pytest.mark.parametrize("name", NEEDED)
def test_what_python_the_shell_and_the_runtime_need_is_allowed(name: str) -> None:
    assert allows(name, 0) or allows(name, 1), name


@pytest.mark.parametrize("flags", [FORK_FLAGS, THREAD_FLAGS, SPAWN_FLAGS, SIGCHLD])
def test_clone_without_a_namespace_flag_is_allowed(flags: int) -> None:
    assert allows("clone", flags)


@pytest.mark.parametrize("flag", CLONE_NAMESPACE_FLAGS.values(), ids=list(CLONE_NAMESPACE_FLAGS))
def test_clone_with_any_namespace_flag_is_refused(flag: int) -> None:
    assert not allows("clone", flag | SIGCHLD)
    assert not allows("clone", flag | FORK_FLAGS)


def test_clone3_answers_enosys_so_glibc_falls_back_to_clone() -> None:
    (rule,) = _rules_for("clone3")
    assert rule["action"] == "SCMP_ACT_ERRNO"
    assert rule["errnoRet"] == ENOSYS
    assert not allows("clone3")


@pytest.mark.parametrize(
    "persona",
    [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF, 0xFFFF_FFFF_FFFF_FFFF],
    ids=["linux", "linux32", "uname26", "linux32-uname26", "query", "query-as-long-minus-one"],
)
def test_plain_personalities_and_the_query_are_allowed(persona: int) -> None:
    assert allows("personality", persona)


@pytest.mark.parametrize(
    "persona",
    [0x0400000, 0x0040000, 0x0200000, 0x0100000, 0x0400008],
    ids=[
        "read-implies-exec",
        "addr-no-randomize",
        "addr-compat-layout",
        "mmap-page-zero",
        "linux32-read-implies-exec",
    ],
)
def test_personalities_that_weaken_memory_protection_are_refused(persona: int) -> None:
    assert not allows("personality", persona)


@pytest.mark.parametrize(
    ("family", "allowed"),
    [(1, True), (2, True), (10, True), (16, True), (17, False), (38, False), (40, False)],
    ids=["unix", "inet", "inet6", "netlink", "packet", "alg", "vsock"],
)
def test_socket_opens_only_local_families(family: int, allowed: bool) -> None:
    assert allows("socket", family) is allowed


def test_socketpair_is_unix_only() -> None:
    assert allows("socketpair", 1)
    assert not allows("socketpair", 2)


def test_arguments_are_filtered_only_where_the_profile_says() -> None:
    filtered = {name for rule in profile()["syscalls"] if "args" in rule for name in rule["names"]}
    assert filtered == {"clone", "personality", "socket", "socketpair"}
    assert not filtered & ALLOWED  # an unconditional allow would void the filter


def test_every_rule_names_known_looking_system_calls_once() -> None:
    names = [name for rule in profile()["syscalls"] for name in rule["names"]]
    assert all(re.fullmatch(r"_?[a-z][a-z0-9_]*", name) for name in names)
    (unconditional,) = [
        r for r in profile()["syscalls"] if "args" not in r and r["action"] == "SCMP_ACT_ALLOW"
    ]
    assert len(unconditional["names"]) == len(set(unconditional["names"]))


def test_both_architecture_families_are_covered() -> None:
    arch_map = {entry["architecture"]: entry["subArchitectures"] for entry in profile()["archMap"]}
    assert arch_map == {
        "SCMP_ARCH_X86_64": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "SCMP_ARCH_AARCH64": ["SCMP_ARCH_ARM"],
    }


def test_the_security_option_is_the_compact_json_of_the_profile() -> None:
    option = security_opt()
    prefix, _, text = option.partition("=")
    assert prefix == "seccomp"
    assert json.loads(text) == profile()
    assert " " not in text and "\n" not in text
    # Stored in every container's configuration and sent on every create: kept small.
    assert len(option) < 8192
    assert security_opt() == option  # the same text every time: a spec compares equal


def test_the_container_spec_carries_the_profile_and_no_new_privileges() -> None:
    spec = container_spec(
        "d", "u0123456789", "img", AgentLimits(), Path("/run/x"), "/ws/u0123456789"
    )
    assert spec["security_opt"] == ["no-new-privileges:true", security_opt()]
