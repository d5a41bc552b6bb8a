"""Probe programs run inside a real agent container, and the helpers that run them.

Each probe is a small python3 program, because the agent image has python3 and a
minimal Debian userland and nothing may be installed into it. A probe runs with
`docker exec` as the agent's own user (65534) and prints one JSON object as its last
line of output. Probes try what a hostile agent would try; they never send a packet
anywhere but the container's own loopback.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

AGENT_USER: Final = "65534:65534"
ALARM_S: Final = 60
"""Every probe ends itself after this long, so no exec can hang a test."""

_PROLOGUE: Final = f"""\
import signal
signal.alarm({ALARM_S})
"""

_HELPERS: Final = r'''
import ctypes, errno, json, os, platform

def errname(number):
    return errno.errorcode.get(number, str(number))

def attempt(fn):
    """None when fn() succeeds, else the name of the errno it failed with."""
    try:
        fn()
    except OSError as exc:
        return errname(exc.errno)
    return None

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def raw_call(name, *args):
    """A raw system call by name: its result, and its errno's name when it failed."""
    numbers = SYSCALLS[platform.machine()]
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(numbers[name]), *(ctypes.c_long(a) for a in args))
    return result, (None if result >= 0 else errname(ctypes.get_errno()))

def raw_syscall(name, *args):
    """A raw system call by name: None when it returned >= 0, else its errno's name."""
    return raw_call(name, *args)[1]

def raw_fd_call(name, *args):
    """A raw system call that makes a file descriptor, closed again if it was made."""
    fd, failure = raw_call(name, *args)
    if failure is None:
        os.close(fd)
    return failure

SYSCALLS = {
    "x86_64": {
        "ptrace": 101, "add_key": 248, "keyctl": 250, "bpf": 321, "userfaultfd": 323,
        "clone": 56, "clone3": 435, "unshare": 272, "setns": 308, "personality": 135,
        "umount2": 166, "fsopen": 430, "perf_event_open": 298, "io_uring_setup": 425,
        "process_vm_readv": 310,
    },
    "aarch64": {
        "ptrace": 117, "add_key": 217, "keyctl": 219, "bpf": 280, "userfaultfd": 282,
        "clone": 220, "clone3": 435, "unshare": 97, "setns": 268, "personality": 92,
        "umount2": 39, "fsopen": 430, "perf_event_open": 241, "io_uring_setup": 425,
        "process_vm_readv": 270,
    },
}

def address(data):
    """A NUL-terminated copy of `data` that stays alive, and its address."""
    buffer = ctypes.create_string_buffer(data)
    KEEP.append(buffer)
    return ctypes.addressof(buffer)

KEEP = []

def agent_pid():
    """The pid of the agent runtime (`python3 -m agents`) in this container."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read().split(b"\0")[:3] == [b"python3", b"-m", b"agents"]:
                        return int(entry)
            except OSError:
                continue
    raise SystemExit("no agent runtime process found")

def walk(top="/"):
    """Every path under top, /proc and /sys left out, symlinks not followed."""
    for root, dirs, files in os.walk(top, onerror=lambda exc: None):
        if root == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
        for name in dirs + files:
            yield os.path.join(root, name)

def report(**values):
    print(json.dumps(values), flush=True)
'''

IDENTITY: Final = r"""
def status_of(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields

report(
    uid=os.getuid(),
    euid=os.geteuid(),
    gid=os.getgid(),
    groups=os.getgroups(),
    status={"probe": status_of("self"), "agent": status_of(agent_pid()), "init": status_of(1)},
)
"""

PRIVILEGE: Final = r"""
import stat, subprocess
special = []
for path in walk():
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        continue
    if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
        special.append(path)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
def unshare(flags):
    ctypes.set_errno(0)
    return None if libc.unshare(flags) == 0 else errname(ctypes.get_errno())
tool = subprocess.run(["unshare", "-r", "id", "-u"], capture_output=True, text=True, timeout=20)
report(
    setuid_files=special,
    setuid_0=attempt(lambda: os.setuid(0)),
    setgid_0=attempt(lambda: os.setgid(0)),
    unshare_user=unshare(CLONE_NEWUSER),
    unshare_mount=unshare(CLONE_NEWNS),
    unshare_tool=[tool.returncode, tool.stdout.strip(), tool.stderr.strip()],
)
"""

FILESYSTEM: Final = r"""
import mmap, shutil, subprocess

def create_in(directory):
    def create():
        fd = os.open(os.path.join(directory, ".probe"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(os.path.join(directory, ".probe"))
    return attempt(create)

def executes(path):
    try:
        subprocess.run([path], timeout=10, capture_output=True)
    except OSError as exc:
        return errname(exc.errno)
    return None

system = ("/", "/usr", "/usr/bin", "/etc", "/var", "/opt/stockade/agents")
read_only = {d: create_in(d) for d in system}
flags = {d: bool(os.statvfs(d).f_flag & os.ST_RDONLY) for d in ("/", "/usr", "/etc")}

exec_from = {}
for place in ("/tmp", "/dev/shm"):
    binary = os.path.join(place, "true-copy")
    shutil.copy("/bin/true", binary)
    os.chmod(binary, 0o755)
    script = os.path.join(place, "script.sh")
    with open(script, "w") as handle:
        handle.write("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o755)
    def map_exec(path=binary):
        with open(path, "rb") as handle:
            mmap.mmap(handle.fileno(), 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC).close()
    exec_from[place] = {
        "binary": executes(binary),
        "script": executes(script),
        "mmap_exec": attempt(map_exec),
    }
    os.unlink(binary)
    os.unlink(script)

written, failure = 0, None
chunk = b"\xa5" * (1 << 20)
try:
    with open("/tmp/fill", "wb") as handle:
        while written < (1 << 30):
            written += handle.write(chunk)
            handle.flush()
except OSError as exc:
    failure = errname(exc.errno)
finally:
    if os.path.exists("/tmp/fill"):
        os.unlink("/tmp/fill")
tmp = os.statvfs("/tmp")
report(
    read_only=read_only,
    statvfs_read_only=flags,
    tmp_writable=create_in("/tmp") is None,
    exec_from=exec_from,
    fill_written=written,
    fill_failure=failure,
    tmp_size=tmp.f_blocks * tmp.f_frsize,
)
"""

SYSCALLS: Final = r"""
import socket, struct, subprocess, time
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
sibling = subprocess.Popen(["sleep", "30"])
time.sleep(0.2)
attached = raw_syscall("ptrace", PTRACE_ATTACH, sibling.pid, 0, 0)
if attached is None:
    os.waitpid(sibling.pid, 0)  # it stops on attach; let it go before killing it
    raw_syscall("ptrace", PTRACE_DETACH, sibling.pid, 0, 0)
sibling.kill()
sibling.wait()
runtime = agent_pid()
agent_attached = raw_syscall("ptrace", PTRACE_ATTACH, runtime, 0, 0)
if agent_attached is None:
    raw_syscall("ptrace", PTRACE_DETACH, runtime, 0, 0)
try:
    with open(f"/proc/{runtime}/mem", "rb") as handle:
        handle.read(1)
    agent_mem = None
except OSError as exc:
    agent_mem = errno.errorcode.get(exc.errno, str(exc.errno))
ctypes.set_errno(0)
mounted = libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None)
mount = None if mounted == 0 else errname(ctypes.get_errno())
KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_SESSION_KEYRING, KEYCTL_GET_KEYRING_ID = -2, -3, 0
BPF_PROG_LOAD = 5
# The user-mode-only kind needs no privilege at all (kernel >= 5.11).
UFFD_USER_MODE_ONLY = 1
key_type, description, payload = b"user\0", b"stockade-probe\0", b"x"

SIGCHLD, CLONE_NEWUSER = 17, 0x10000000

def clone(flags):
    # A fork by raw clone(2) with `flags`: None if it was let through, else the errno.
    child, failure = raw_call("clone", flags | SIGCHLD, 0, 0, 0, 0)
    if child == 0:
        os._exit(0)  # the child, when the call was let through
    if failure is None:
        os.waitpid(child, 0)
    return failure

READ_IMPLIES_EXEC, PERSONALITY_QUERY = 0x0400000, 0xFFFFFFFF
read_implies_exec = raw_syscall("personality", READ_IMPLIES_EXEC)
if read_implies_exec is None:
    raw_syscall("personality", 0)

class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]

# Its own memory, which ptrace's rules always let a process read: so only a filter on
# the call itself can refuse it.
source, target = ctypes.create_string_buffer(b"stockade"), ctypes.create_string_buffer(9)
local, remote = IoVec(ctypes.addressof(target), 8), IoVec(ctypes.addressof(source), 8)
process_vm_readv = raw_syscall(
    "process_vm_readv", os.getpid(), ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0
)

# A software clock counting this process in user mode only: allowed at the usual
# perf_event_paranoid of 2 without the filter.
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, ATTR_SIZE = 1, 0, 128
DISABLED, EXCLUDE_KERNEL, EXCLUDE_HV = 1 << 0, 1 << 5, 1 << 6
perf_attr = ctypes.create_string_buffer(ATTR_SIZE)
struct.pack_into("IIQ", perf_attr, 0, PERF_TYPE_SOFTWARE, ATTR_SIZE, PERF_COUNT_SW_CPU_CLOCK)
struct.pack_into("Q", perf_attr, 40, DISABLED | EXCLUDE_KERNEL | EXCLUDE_HV)
uring_params = ctypes.create_string_buffer(120)

def new_socket(family, kind):
    return attempt(lambda: socket.socket(family, kind).close())

report(
    mount=mount,
    umount2=raw_syscall("umount2", address(b"/tmp"), 0),
    fsopen=raw_fd_call("fsopen", address(b"tmpfs"), 0),
    ptrace_attach=attached,
    ptrace_agent=agent_attached,
    agent_mem=agent_mem,
    keyctl=raw_syscall("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1),
    add_key=raw_syscall(
        "add_key",
        ctypes.cast(ctypes.c_char_p(key_type), ctypes.c_void_p).value,
        ctypes.cast(ctypes.c_char_p(description), ctypes.c_void_p).value,
        ctypes.cast(ctypes.c_char_p(payload), ctypes.c_void_p).value,
        1,
        KEY_SPEC_PROCESS_KEYRING,
    ),
    bpf=raw_syscall("bpf", BPF_PROG_LOAD, 0, 0),
    userfaultfd=raw_fd_call("userfaultfd", UFFD_USER_MODE_ONLY),
    # Without a filter: EBADF for the fd, success for no flags at all.
    setns_bad_fd=raw_syscall("setns", -1, 0),
    unshare_nothing=raw_syscall("unshare", 0),
    clone_plain=clone(0),
    clone_newuser=clone(CLONE_NEWUSER),
    # Without a filter clone3 with no arguments says EINVAL.
    clone3=raw_syscall("clone3", 0, 0),
    personality_read_implies_exec=read_implies_exec,
    personality_query=raw_syscall("personality", PERSONALITY_QUERY),
    process_vm_readv=process_vm_readv,
    perf_event_open=raw_fd_call("perf_event_open", ctypes.addressof(perf_attr), 0, -1, -1, 0),
    io_uring_setup=raw_fd_call("io_uring_setup", 1, ctypes.addressof(uring_params)),
    socket_alg=new_socket(socket.AF_ALG, socket.SOCK_SEQPACKET),
    socket_vsock=new_socket(socket.AF_VSOCK, socket.SOCK_STREAM),
    socket_packet=new_socket(socket.AF_PACKET, socket.SOCK_DGRAM),
)
"""

ORDINARY_WORK: Final = r"""
import asyncio, concurrent.futures, fcntl, mmap, selectors, shutil, signal, socket
import subprocess, tempfile, threading, time
# What an agent's commands do all day, each a step that must work: threads, fork,
# subprocesses, a shell pipeline, coreutils and python in the workspace, pipes, polling,
# signals and timers, local sockets, mapped files and randomness.
steps = {}

def step(name):
    def run(fn):
        try:
            steps[name] = ["ok", fn()]
        except Exception as exc:
            steps[name] = ["failed", f"{type(exc).__name__}: {exc}"]
    return run

def sh(command):
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()

@step("threads")
def _():
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return sum(pool.map(lambda n: sum(range(n)), range(1000, 1008)))

@step("fork")
def _():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, b"from the child")
        os._exit(7)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return [os.waitstatus_to_exitcode(status), pipe.read().decode()]

@step("python_subprocess")
def _():
    return subprocess.run(
        ["python3", "-c", "print(6 * 7)"], capture_output=True, text=True, check=True
    ).stdout.strip()

@step("shell_pipeline")
def _():
    return sh("printf 'b\na\nc\n' | sort | head -n 2 | tr a-z A-Z | paste -sd, -")

@step("coreutils_in_workspace")
def _():
    return sh(
        "set -e; d=$(mktemp -d ./probe.XXXXXX); cd $d; echo hello > f; cp f g; mv g h;"
        " ln -s h link; chmod 600 h; touch -d @0 f; mkfifo fifo; ls | wc -l;"
        " sha256sum h | cut -c1-8; stat -c %a h; find . -type f | sort | head -1;"
        " timeout 5 sleep 0.1; date +%Y >/dev/null; cd ..; rm -r $d"
    ).split()

@step("file_io_in_workspace")
def _():
    directory = tempfile.mkdtemp(dir=os.getcwd())
    path = os.path.join(directory, "data")
    with open(path, "wb") as handle:
        handle.write(b"x" * 65536)
        handle.flush()
        os.fsync(handle.fileno())
        fcntl.flock(handle, fcntl.LOCK_EX)
    os.truncate(path, 4096)
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), 4096) as mapped:
        mapped[:5] = b"hello"
    os.rename(path, path + ".moved")
    os.symlink(path + ".moved", path)
    os.chmod(path + ".moved", 0o640)
    os.utime(path + ".moved", (0, 0))
    with open(path, "rb") as handle:
        head = handle.read(5).decode()
    info = os.stat(path)
    listed = sorted(os.listdir(directory))
    shutil.copyfile(path, path + ".copy")
    shutil.rmtree(directory)
    return [head, info.st_size, oct(info.st_mode & 0o777), listed, os.path.exists(directory)]

@step("polling")
def _():
    read_end, write_end = os.pipe()
    os.write(write_end, b"!")
    ready = []
    for selector in (selectors.SelectSelector(), selectors.PollSelector(),
                     selectors.EpollSelector()):
        with selector:
            selector.register(read_end, selectors.EVENT_READ)
            ready.append(len(selector.select(timeout=1)))
    os.close(read_end)
    os.close(write_end)
    return ready

@step("signals_and_timers")
def _():
    fired = []
    signal.signal(signal.SIGALRM, lambda *_: fired.append("itimer"))
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    time.sleep(0.5)
    signal.signal(signal.SIGUSR1, lambda *_: fired.append("usr1"))
    os.kill(os.getpid(), signal.SIGUSR1)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(60)
    return fired

@step("local_sockets")
def _():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"pair")
        paired = right.recv(4).decode()
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "s")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)
        peer, _ = server.accept()
        with peer:
            client.sendall(b"unix")
            unix = peer.recv(4).decode()
    shutil.rmtree(directory)  # other probes list every socket file in the container
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"loop")
                loop = peer.recv(4).decode()
    return [paired, unix, loop]

@step("asyncio_subprocess")
def _():
    async def main():
        process = await asyncio.create_subprocess_exec(
            "sh", "-c", "echo async", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        await asyncio.sleep(0.01)
        return out.decode().strip()
    return asyncio.run(main())

@step("randomness_and_limits")
def _():
    import resource
    return [
        len(os.urandom(16)), len(os.getrandom(16)), len(os.sched_getaffinity(0)) > 0,
        resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 0, os.uname().sysname,
    ]

report(steps=steps)
"""

KERNEL_SURFACES: Final = r"""
import socket, stat

def readable(path):
    def read():
        with open(path, "rb") as handle:
            if not handle.read(16):
                raise OSError(errno.ENODATA, "empty")
    return attempt(read)

def writable(path, data=b"1"):
    def write():
        with open(path, "wb", buffering=0) as handle:
            handle.write(data)
    return attempt(write)

devices = {}
for path in walk("/dev"):
    try:
        info = os.lstat(path)
    except OSError:
        continue
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        kind = "c" if stat.S_ISCHR(info.st_mode) else "b"
        devices[path] = [kind, os.major(info.st_rdev), os.minor(info.st_rdev)]
try:
    firmware = os.listdir("/sys/firmware")
except OSError as exc:
    firmware = errname(exc.errno)
report(
    read={p: readable(p) for p in ("/proc/kcore", "/dev/mem", "/dev/kmem", "/dev/port")},
    firmware=firmware,
    devices=devices,
    write={
        p: writable(p)
        for p in (
            "/proc/sys/kernel/hostname",
            "/proc/sys/vm/drop_caches",
            "/proc/sys/kernel/core_pattern",
            "/proc/sysrq-trigger",
        )
    },
    hostname=socket.gethostname(),
)
"""

NETWORK: Final = r"""
import socket

def lines(path):
    with open(path) as handle:
        return handle.read().splitlines()

def connect(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        return attempt(lambda: probe.connect(("127.0.0.1", port)))

nameservers = [
    line.split()[1]
    for line in lines("/etc/resolv.conf")
    if line.startswith("nameserver") and len(line.split()) > 1
]
report(
    sys_class_net=sorted(os.listdir("/sys/class/net")),
    proc_net_dev=sorted(line.split(":")[0].strip() for line in lines("/proc/net/dev")[2:]),
    ipv4_routes=lines("/proc/net/route")[1:],
    ipv6_routes=lines("/proc/net/ipv6_route"),
    ipv6_addresses=lines("/proc/net/if_inet6"),
    nameservers=nameservers,
    connect={port: connect(port) for port in (2375, 2376, 6379)},
)
"""

SOCKETS: Final = r"""
import socket, stat, sys
found = []
for path in walk():
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            found.append(path)
    except OSError:
        continue

def connect(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        return attempt(lambda: probe.connect(path))

with open("/proc/net/unix") as handle:
    bound = [line.split()[-1] for line in handle.read().splitlines()[1:] if len(line.split()) > 7]
report(sockets=sorted(found), connect={p: connect(p) for p in sys.argv[1:]}, proc_net_unix=bound)
"""

MOUNTS: Final = r"""
import sys
with open("/proc/self/mountinfo") as handle:
    mountinfo = handle.read()
VIRTUAL = ("proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue")
writable = {}
for line in mountinfo.splitlines():
    fields = line.split()
    point, options = fields[4], fields[5]
    fstype = fields[fields.index("-") + 1]
    if "rw" not in options.split(",") or fstype in VIRTUAL:
        continue
    if not os.access(point, os.W_OK):
        continue
    info = os.statvfs(point)
    writable[point] = info.f_blocks * info.f_frsize
named = []
for path in walk():
    if any(marker in os.path.basename(path) for marker in sys.argv[1:]):
        named.append(path)
report(mountinfo=mountinfo, writable=writable, named=named)
"""

DISK_FILL: Final = r"""
import shutil, sys
# Writes one file until the filesystem refuses, then makes empty files until it
# refuses again (inodes are the other way to fill a disk), then deletes it all. Each
# stops at `most` as well, so a missing cap fails the test without filling the host.
directory, most = sys.argv[1], int(sys.argv[2]) << 20
os.makedirs(directory)
chunk = b"\xa5" * (1 << 20)
written, write_failure = 0, None
fd = os.open(directory + "/fill", os.O_WRONLY | os.O_CREAT, 0o600)
try:
    while written < most:
        written += os.write(fd, chunk)
    os.fsync(fd)
except OSError as exc:
    write_failure = errname(exc.errno)
finally:
    os.close(fd)
files, files_failure = 0, None
try:
    while files < 1_000_000:
        os.close(os.open(f"{directory}/{files}", os.O_WRONLY | os.O_CREAT, 0o600))
        files += 1
except OSError as exc:
    files_failure = errname(exc.errno)
shutil.rmtree(directory)
report(written=written, write_failure=write_failure, files=files, files_failure=files_failure)
"""

FORK_BOMB: Final = r"""
import signal, time
children, failure = [], None
for _ in range(2000):
    try:
        pid = os.fork()
    except OSError as exc:
        failure = errname(exc.errno)
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
left = [entry for entry in os.listdir("/proc") if entry.isdigit()]
report(forked=len(children), failure=failure, processes_left=len(left))
"""

MEMORY_HOG: Final = r"""
import sys
megabytes = int(sys.argv[1])
held = [bytearray(1 << 20) for _ in range(megabytes)]  # zero-filled: every page is touched
report(survived=len(held))
"""

OOM_THE_AGENT: Final = r"""
import sys
# Raising a process's oom_score_adj needs no capability; lowering it does. The runtime
# is undumpable, so its /proc files belong to root: this probe runs as the container's
# root (no capabilities), standing in for anything that grows the runtime's memory.
# With 1000 the agent's badness outweighs any process's, so the OOM killer picks it.
pid = agent_pid()
with open(f"/proc/{pid}/oom_score_adj", "w") as handle:
    handle.write("1000")
with open(f"/proc/{pid}/oom_score_adj") as handle:
    print(json.dumps({"agent_pid": pid, "oom_score_adj": int(handle.read())}), flush=True)
megabytes = int(sys.argv[1])
held = [bytearray(1 << 20) for _ in range(megabytes)]
report(survived=len(held))
"""

SIGNAL_AGENT: Final = r"""
import signal, sys
pid = agent_pid()
os.kill(pid, getattr(signal, sys.argv[1]))
report(agent_pid=pid)
"""

MESH_NEXT: Final = r"""
import http.client, socket, sys

class Door(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("localhost", timeout=20)
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect("/run/stockade/mesh.sock")

def get(target, headers):
    door = Door()
    try:
        door.request("GET", target, headers=headers)
        response = door.getresponse()
        body = response.read()
    finally:
        door.close()
    return response.status, json.loads(body) if body else None

other_user = sys.argv[1]
attempts = [
    ("/v1/next?wait=2", {}),
    (f"/v1/next?wait=2&user={other_user}&user_id={other_user}", {}),
    (f"/v1/next?wait=2&stream=stockade:agent:{other_user}", {}),
    ("/v1/next?wait=2", {"X-User-Id": other_user, "X-Stockade-User": other_user}),
]
answers = []
for target, headers in attempts:
    status, body = get(target, headers)
    answers.append({"status": status, "body": body})
report(answers=answers)
"""

PROCESS_TABLE: Final = r"""
import base64
table = {}
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    row = {}
    for name in ("environ", "cmdline"):
        try:
            with open(f"/proc/{entry}/{name}", "rb") as handle:
                row[name] = base64.b64encode(handle.read()).decode()
        except OSError as exc:
            row[name] = "error: " + errname(exc.errno)
    table[entry] = row
report(processes=table)
"""

MISBEHAVE: Final = r"""
import sys, time
# For `seconds`: one process keeps starting memory hogs that allocate `megabytes` (the
# OOM killer takes each; they raise their own oom_score_adj, so the agent is spared),
# while sleeping children hold every other PID the container may have.
megabytes, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds

def hog():
    with open("/proc/self/oom_score_adj", "w") as handle:
        handle.write("1000")
    held = [bytearray(1 << 20) for _ in range(megabytes)]
    time.sleep(max(0.0, end - time.monotonic()))  # never reached with twice the limit
    os._exit(0 if held else 1)

def respawn_hogs():
    while time.monotonic() < end:
        try:
            pid = os.fork()
        except OSError:
            time.sleep(0.01)
            continue
        if pid == 0:
            hog()
        os.waitpid(pid, 0)
    os._exit(0)

if os.fork() == 0:
    respawn_hogs()
children = 0
while time.monotonic() < end:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(max(0.0, end - time.monotonic()))
        os._exit(0)
    children += 1
print(json.dumps({"sleepers": children}), flush=True)
time.sleep(max(0.0, end - time.monotonic()))
"""


DOOR_WRITES: Final = r"""
door = "/run/stockade"
sock = door + "/mesh.sock"

def create():
    os.close(os.open(door + "/planted", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

report(
    create=attempt(create),
    symlink=attempt(lambda: os.symlink("/etc/shadow", door + "/planted-link")),
    hard_link=attempt(lambda: os.link(sock, door + "/planted-hard-link")),
    rename_over_socket=attempt(lambda: os.rename(door + "/planted", sock)),
    unlink_socket=attempt(lambda: os.unlink(sock)),
)
"""

DOOR_RACER: Final = r"""
import select, struct, sys, time
# Whenever the mesh binds this door's socket anew, swap a symlink to `target` in its
# place at once, before the mesh sets the socket's mode by its path. inotify wakes the
# racer the moment the socket appears, without burning the container's CPU quota.
target, seconds = sys.argv[1], float(sys.argv[2])
door = "/run/stockade"
sock, link = door + "/mesh.sock", door + "/.swap"
IN_CREATE = 0x100
watch = libc.inotify_init()
libc.inotify_add_watch(watch, door.encode(), IN_CREATE)
swaps, refused = 0, set()

def plant():
    try:
        os.symlink(target, link)
    except FileExistsError:
        pass
    except OSError as exc:
        refused.add("symlink: " + errname(exc.errno))

plant()
end = time.monotonic() + seconds
while time.monotonic() < end:
    if not select.select([watch], [], [], 0.2)[0]:
        continue
    data = os.read(watch, 4096)
    offset = 0
    while offset < len(data):
        _, _, _, length = struct.unpack_from("iIII", data, offset)
        name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
        offset += 16 + length
        if name == b"mesh.sock":
            try:
                os.rename(link, sock)
                swaps += 1
            except OSError as exc:
                refused.add("rename: " + errname(exc.errno))
            plant()
report(swaps=swaps, refused=sorted(refused))
"""


def _program(source: str) -> str:
    return _PROLOGUE + _HELPERS + source


def command(source: str, *args: str) -> list[str]:
    """The argv that runs a probe (or any program of this module's shape) in a container."""
    return ["python3", "-c", _program(source), *args]


class ProbeFailed(AssertionError):
    """A probe ended without its JSON report."""


def run_probe(container: Any, source: str, *args: str, user: str = AGENT_USER) -> dict[str, Any]:
    """Run a probe in `container` and return its report (blocking: call from a thread)."""
    exit_code, (out, err) = container.exec_run(command(source, *args), user=user, demux=True)
    stdout = (out or b"").decode("utf-8", "replace").strip()
    last = stdout.splitlines()[-1] if stdout else ""
    try:
        report = json.loads(last)
    except ValueError:
        report = None
    if exit_code != 0 or not isinstance(report, dict):
        stderr = (err or b"").decode("utf-8", "replace")[-2000:]
        raise ProbeFailed(f"probe exited {exit_code}\nstdout: {stdout[-2000:]}\nstderr: {stderr}")
    return report


async def probe(container: Any, source: str, *args: str, user: str = AGENT_USER) -> dict[str, Any]:
    """`run_probe` in a worker thread, so the mesh on this event loop keeps serving meanwhile."""
    return await asyncio.to_thread(run_probe, container, source, *args, user=user)


async def exec_status(
    container: Any, source: str, *args: str, user: str = AGENT_USER
) -> tuple[int, str]:
    """Run a program that may be killed; its exit code and whatever it printed."""

    def run() -> tuple[int, str]:
        exit_code, output = container.exec_run(command(source, *args), user=user)
        return exit_code, (output or b"").decode("utf-8", "replace")

    return await asyncio.to_thread(run)
