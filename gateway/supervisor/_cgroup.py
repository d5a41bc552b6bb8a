"""A local container's memory use, read from the kernel's cgroup files.

The engine's stats call makes the engine and the container's shim collect every
figure they have: tens of ms of CPU per container, which with fifty agents stalled
the gateway for a few hundred ms at each sampling. The kernel's files hold the same
memory figures and cost microseconds to read. They are readable only when the engine
runs on this host and this process sees the host's processes and cgroups; otherwise
`read_memory` answers None and the caller asks the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
PROC_ROOT: Final = Path("/proc")

_NO_LIMIT_V2: Final = "max"


def memory_dir(proc_cgroup: str, container_id: str, root: Path = CGROUP_ROOT) -> Path | None:
    """The memory cgroup directory named in a process's `/proc/<pid>/cgroup` text.

    Only a path naming `container_id` counts: a process id the kernel gave to another
    process since must not be measured as the container. The v1 memory hierarchy wins
    over the v2 one on hosts that mount both (v2 then holds no memory controller).
    """
    if not container_id:
        return None
    unified: Path | None = None
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if container_id not in path:
            continue
        relative = path.lstrip("/")
        if "memory" in controllers.split(","):
            return root / "memory" / relative
        if hierarchy == "0" and not controllers:
            unified = root / relative
    return unified


def _number(path: Path) -> int | None:
    text = path.read_text().strip()
    return None if text == _NO_LIMIT_V2 else int(text)


def _stat(path: Path) -> dict[str, int]:
    stats: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if value.isdigit():
            stats[name] = int(value)
    return stats


def memory_stats(directory: Path) -> dict[str, Any]:
    """The files of one memory cgroup in the shape of the engine's `memory_stats`.

    Raises OSError or ValueError when the directory is gone or not a memory cgroup.
    """
    if (directory / "memory.current").exists():  # cgroup v2
        usage = _number(directory / "memory.current")
        limit = _number(directory / "memory.max")
    else:  # cgroup v1
        usage = _number(directory / "memory.usage_in_bytes")
        limit = _number(directory / "memory.limit_in_bytes")
    return {"usage": usage, "limit": limit, "stats": _stat(directory / "memory.stat")}


def read_memory(
    pid: int, container_id: str, proc: Path = PROC_ROOT, root: Path = CGROUP_ROOT
) -> dict[str, Any] | None:
    """The memory figures of the container whose main process is `pid`, from the
    kernel; None when this process cannot see them."""
    if pid <= 0:
        return None
    try:
        directory = memory_dir((proc / str(pid) / "cgroup").read_text(), container_id, root)
        return None if directory is None else memory_stats(directory)
    except (OSError, ValueError):
        return None
