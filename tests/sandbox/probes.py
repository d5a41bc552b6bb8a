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

def raw_syscall(name, *args):
    """A raw system call by name: None when it returned >= 0, else its errno's name."""
    numbers = SYSCALLS[platform.machine()]
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(numbers[name]), *(ctypes.c_long(a) for a in args))
    return None if result >= 0 else errname(ctypes.get_errno())

SYSCALLS = {
    "x86_64": {"ptrace": 101, "add_key": 248, "keyctl": 250, "bpf": 321, "userfaultfd": 323},
    "aarch64": {"ptrace": 117, "add_key": 217, "keyctl": 219, "bpf": 280, "userfaultfd": 282},
}

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
import subprocess, time
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
key_type, description, payload = b"user\0", b"stockade-probe\0", b"x"
report(
    mount=mount,
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
    userfaultfd=raw_syscall("userfaultfd", 0),
)
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
