"""Stockade's seccomp profile for agent containers: every system call not named here fails.

An agent runs Python 3, /bin/sh, coreutils and whatever commands its shell tool starts,
all unprivileged and with no network. What those need is allowed; the kernel interfaces
an escape would use (tracing, namespaces, mounts, keyrings, BPF, io_uring, modules,
the clock) are not, even where a missing capability would also refuse them, so one
mistake elsewhere is not enough.

The profile is in the form the Docker engine reads (it translates it for runc, which
hands it to libseccomp). runc skips a name its libseccomp does not know, and libseccomp
leaves a call out of the filter of an architecture that lacks it, so one list serves
every architecture below. A call newer than the host's libseccomp cannot be named, and
so fails with EPERM until libseccomp learns it.
"""

from __future__ import annotations

import json
from typing import Any, Final

EPERM: Final = 1
ENOSYS: Final = 38

# The engine picks the entry of the host's own architecture; the sub-architectures are
# the other system call tables a process on that host can use (int 0x80, x32, AArch32).
_ARCHITECTURES: Final = (
    ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
)

# -- allowed with any arguments, by purpose ----------------------------------------------
#
# Names of 32-bit and legacy variants (`*64`, `*32`, `*_time64`, `_llseek`, ...) sit next
# to their 64-bit call: they are the same operation in another table.

_MEMORY: Final = (
    "brk",
    "mmap",
    "mmap2",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mincore",
    "msync",
    "mlock",
    "mlock2",
    "munlock",
    "mlockall",
    "munlockall",
    "membarrier",
    "memfd_create",
)

# fork, threads and exec. `clone` is allowed further down, without namespace flags only.
_PROCESSES: Final = (
    "fork",
    "vfork",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "waitpid",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "setpgid",
    "getpgrp",
    "getsid",
    "setsid",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "futex",
    "futex_time64",
    "futex_waitv",
    # prctl: the runtime makes itself undumpable with it; what else it can do needs a
    # capability the container does not have.
    "prctl",
    # Thread-local storage set up by the dynamic loader and libc, per architecture.
    "arch_prctl",
    "set_thread_area",
    "get_thread_area",
    "set_tls",
    "cacheflush",
    # glibc allocates a thread's shadow stack with it where the CPU enforces one.
    "map_shadow_stack",
    "pidfd_open",
    "pidfd_send_signal",
    # A process may only narrow its own system calls further (no-new-privileges is set),
    # and prctl(PR_SET_SECCOMP) would do the same; some tools sandbox themselves so.
    "seccomp",
)

_SCHEDULING_AND_LIMITS: Final = (
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_getattr",
    "sched_setattr",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "getpriority",
    "setpriority",
    "nice",
    "ioprio_get",
    "ioprio_set",
    "getcpu",
    "getrlimit",
    "ugetrlimit",
    "setrlimit",
    # Limits of a process of the same user only; raising a hard limit needs a capability.
    "prlimit64",
    "getrusage",
    "times",
)

# Changing to another id needs CAP_SETUID/CAP_SETGID, which no process here has; the
# calls stay allowed for programs that set the ids they already hold, or read them.
_CREDENTIALS: Final = (
    "getuid",
    "getuid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getegid",
    "getegid32",
    "getresuid",
    "getresuid32",
    "getresgid",
    "getresgid32",
    "getgroups",
    "getgroups32",
    "setuid",
    "setuid32",
    "setgid",
    "setgid32",
    "setreuid",
    "setreuid32",
    "setregid",
    "setregid32",
    "setresuid",
    "setresuid32",
    "setresgid",
    "setresgid32",
    "setgroups",
    "setgroups32",
    "setfsuid",
    "setfsuid32",
    "setfsgid",
    "setfsgid32",
    "capget",
    "capset",
)

_SIGNALS: Final = (
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigpending",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "sigaction",
    "sigprocmask",
    "sigreturn",
    "sigsuspend",
    "sigpending",
    "signal",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "kill",
    "tkill",
    "tgkill",
    "pause",
    "restart_syscall",
)

# Reading clocks and sleeping; setting the clock (settimeofday, clock_settime,
# adjtimex, clock_adjtime) is left out.
_TIME: Final = (
    "clock_gettime",
    "clock_gettime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "gettimeofday",
    "time",
    "nanosleep",
    "alarm",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_settime",
    "timer_settime64",
    "timer_gettime",
    "timer_gettime64",
    "timer_getoverrun",
    "timer_delete",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_settime64",
    "timerfd_gettime",
    "timerfd_gettime64",
)

_FILE_DESCRIPTORS: Final = (
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "lseek",
    "_llseek",
    "close",
    "close_range",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "fcntl64",
    "ioctl",
    "flock",
    "pipe",
    "pipe2",
    "sendfile",
    "sendfile64",
    "copy_file_range",
    "splice",
    "tee",
    "eventfd",
    "eventfd2",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "arm_sync_file_range",
    "syncfs",
    "sync",
    "fallocate",
    "fadvise64",
    "fadvise64_64",
    "arm_fadvise64_64",
    "readahead",
)

# Paths: opening, metadata, directories, links, permissions, extended attributes.
_FILES: Final = (
    "open",
    "openat",
    "openat2",
    "creat",
    "stat",
    "stat64",
    "lstat",
    "lstat64",
    "fstat",
    "fstat64",
    "newfstatat",
    "fstatat64",
    "statx",
    "statfs",
    "statfs64",
    "fstatfs",
    "fstatfs64",
    "access",
    "faccessat",
    # glibc calls faccessat2 for every access() and falls back only on ENOSYS.
    "faccessat2",
    "readlink",
    "readlinkat",
    "getcwd",
    "chdir",
    "fchdir",
    "getdents",
    "getdents64",
    "mkdir",
    "mkdirat",
    "rmdir",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    # Without CAP_MKNOD only FIFOs and socket files can be made (mkfifo).
    "mknod",
    "mknodat",
    "truncate",
    "truncate64",
    "ftruncate",
    "ftruncate64",
    "umask",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "chown32",
    "fchown",
    "fchown32",
    "lchown",
    "lchown32",
    "fchownat",
    "utime",
    "utimes",
    "futimesat",
    "utimensat",
    "utimensat_time64",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
)

_WAITING: Final = (
    "select",
    "_newselect",
    "pselect6",
    "pselect6_time64",
    "poll",
    "ppoll",
    "ppoll_time64",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
)

# `socket` and `socketpair` are allowed further down, for a few address families only.
# `socketcall` (32-bit x86 multiplexes every socket call through it) is left out: its
# arguments sit in memory a filter cannot read, so it would pass any family.
_SOCKETS: Final = (
    "bind",
    "connect",
    "listen",
    "accept",
    "accept4",
    "getsockname",
    "getpeername",
    "sendto",
    "send",
    "recvfrom",
    "recv",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "recvmmsg_time64",
    "shutdown",
    "setsockopt",
    "getsockopt",
)

# SysV and POSIX message-queue IPC: the container has an IPC namespace of its own.
_IPC: Final = (
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "semctl",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "ipc",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_notify",
    "mq_getsetattr",
)

_SYSTEM_INFORMATION: Final = (
    "uname",
    "sysinfo",
    "getrandom",
)

ALLOWED: Final[frozenset[str]] = frozenset(
    _MEMORY
    + _PROCESSES
    + _SCHEDULING_AND_LIMITS
    + _CREDENTIALS
    + _SIGNALS
    + _TIME
    + _FILE_DESCRIPTORS
    + _FILES
    + _WAITING
    + _SOCKETS
    + _IPC
    + _SYSTEM_INFORMATION
)
"""System calls allowed with any arguments."""

# -- allowed with some arguments only ----------------------------------------------------

CLONE_NAMESPACE_FLAGS: Final = (
    0x00000080  # CLONE_NEWTIME
    | 0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
"""clone's flags that make a namespace. Bit 0x80 is also inside clone's exit-signal byte,
but no signal number reaches 128, so a plain fork never sets it."""

PERSONALITIES: Final = (
    0x00000000,  # PER_LINUX
    0x00000008,  # PER_LINUX32
    0x00020000,  # UNAME26
    0x00020008,  # PER_LINUX32 | UNAME26
    0xFFFFFFFF,  # a query: changes nothing
)
"""The personalities a process may set. READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE and the
other flags weaken memory protections or layout randomization, so they are refused."""

SOCKET_FAMILIES: Final = (
    1,  # AF_UNIX: the mesh socket, socketpair(), local services
    2,  # AF_INET: the container's own loopback
    10,  # AF_INET6: the container's own loopback
    16,  # AF_NETLINK: glibc reads interface addresses with it (getaddrinfo)
)
"""The address families `socket` may open. The container has loopback only; the many
other families (packet, vsock, crypto, bluetooth, ...) are kernel code no agent needs."""

_AF_UNIX: Final = 1
_LOW_32_BITS: Final = 0xFFFFFFFF


def _allow_if(name: str, value: int, mask: int | None = None) -> dict[str, Any]:
    """Allow `name` when its argument 0 equals `value` (after `& mask`, if one is given)."""
    if mask is None:
        condition = {"index": 0, "value": value, "valueTwo": 0, "op": "SCMP_CMP_EQ"}
    else:
        condition = {"index": 0, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}
    return {"names": [name], "action": "SCMP_ACT_ALLOW", "args": [condition]}


def _conditional_rules() -> list[dict[str, Any]]:
    rules = [
        # (flags & CLONE_NAMESPACE_FLAGS) == 0. The flags are argument 0 on every
        # architecture listed above (s390 would differ, and is not listed).
        _allow_if("clone", 0, mask=CLONE_NAMESPACE_FLAGS),
        {
            # clone3 passes its flags in memory a filter cannot read. ENOSYS, unlike
            # EPERM, makes glibc fall back to clone, whose flags are checked above.
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        },
    ]
    # Separate rules are alternatives; the arguments inside one rule must all match.
    # The kernel reads personality's argument as 32 bits; glibc passes all 64 of a
    # caller's -1 (the usual way to ask for the current persona), so only 32 are compared.
    rules += [_allow_if("personality", value, mask=_LOW_32_BITS) for value in PERSONALITIES]
    rules += [_allow_if("socket", family) for family in SOCKET_FAMILIES]
    rules.append(_allow_if("socketpair", _AF_UNIX))
    return rules


def profile() -> dict[str, Any]:
    """The seccomp profile, as the Docker engine reads it."""
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": native, "subArchitectures": list(others)}
            for native, others in _ARCHITECTURES
        ],
        "syscalls": [
            {"names": sorted(ALLOWED), "action": "SCMP_ACT_ALLOW"},
            *_conditional_rules(),
        ],
    }


def security_opt() -> str:
    """The `security_opt` entry that gives a container this profile: the JSON itself."""
    return "seccomp=" + json.dumps(profile(), separators=(",", ":"))
