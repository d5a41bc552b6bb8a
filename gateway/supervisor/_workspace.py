"""Fixed-size workspaces: each user's is an ext4 image file, loop-mounted on this host.

A Docker volume has no size limit, so an agent could fill the disk that holds Docker's
volumes. Here each workspace is a filesystem of its own, `workspace_mb` large and no
larger, and the container gets its mount point. The image file is sparse: on the host
disk it takes what the agent has written (and about 1 % for the filesystem's tables).

Under the root directory (root's, mode 0700):

    <user>.ext4   the image; it is the workspace, and survives the host's restarts
    <user>/       its mount point, root's and mode 0755: when nothing is mounted
                  there the agent (another user) can write nothing into the host disk

Mounting takes root (CAP_SYS_ADMIN) and util-linux's `mount`; making one takes
`mkfs.ext4` (e2fsprogs) and growing one `e2fsck` and `resize2fs`. The mount stays until /reset
removes the workspace or the host restarts; the next start mounts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Final

from gateway.errors import BinaryMissing, ConfigError, DependencyError
from gateway.settings import MIN_WORKSPACE_MB
from gateway.supervisor._context import AGENT_UID
from gateway.supervisor._spec import check_user_id

log = logging.getLogger("stockade.supervisor")

MOUNT_OPTIONS: Final = "loop,nosuid,nodev"

_MKFS: Final = (
    "mkfs.ext4",
    "-q",
    "-F",
    # No blocks kept back for root: the agent gets all of its size.
    "-m",
    "0",
    "-L",
    "stockade-ws",
    # The agent's user owns the filesystem's root; lazy init keeps the image sparse.
    "-E",
    f"root_owner={AGENT_UID}:{AGENT_UID},lazy_itable_init=1,lazy_journal_init=1",
)
# Subprocesses get this environment only: nothing of the supervisor's reaches them.
_ENV: Final = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
_TOOLS: Final = {
    "mkfs.ext4": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "mount": "mount",
    "umount": "mount",
    "losetup": "mount",
}


class Workspaces:
    """The fixed-size workspaces of one host, made, mounted, grown and removed here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Kept for good: one small lock per user this host ever served; dropping one
        # that a caller still waits on would let two callers in at once.
        self._locks: dict[str, asyncio.Lock] = {}

    def image(self, user_id: str) -> Path:
        return self.root / f"{check_user_id(user_id)}.ext4"

    def mount_point(self, user_id: str) -> Path:
        return self.root / check_user_id(user_id)

    def users(self) -> list[str]:
        """Every user with an image here."""
        if not self.root.is_dir():
            return []
        return sorted(path.stem for path in self.root.glob("u*.ext4"))

    def check(self) -> None:
        """Raise unless this process can make and mount workspaces.

        `ConfigError` without root, `BinaryMissing` without a tool.
        """
        if os.geteuid() != 0:
            raise ConfigError(
                "settings",
                "supervisor.limits.workspace_mb",
                "capped workspaces are loop-mounted, which takes root: run the supervisor "
                "as root, or set workspace_mb = 0 for uncapped Docker volumes",
            )
        for tool, package in _TOOLS.items():
            if shutil.which(tool, path=_ENV["PATH"]) is None:
                raise BinaryMissing(tool, package)

    async def ensure(self, user_id: str, size_mb: int) -> tuple[Path, bool]:
        """The mounted workspace of `user_id`, made now if it did not exist (then True).

        One smaller than `size_mb` is grown to it; one larger keeps its size (shrinking
        could lose what the agent wrote), with a warning.
        """
        if size_mb < MIN_WORKSPACE_MB:
            raise ValueError(f"a workspace image is at least {MIN_WORKSPACE_MB} MB")
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            image, point = self.image(user_id), self.mount_point(user_id)
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            made = not image.exists()
            if made:
                await self._make(user_id, image, size_mb)
            point.mkdir(mode=0o755, exist_ok=True)
            grow = self._sized(user_id, image, size_mb)
            if grow and os.path.ismount(point):
                await self._grow_mounted(user_id, image, point, size_mb)
                grow = not os.path.ismount(point)  # unmounted for an offline grow
            if not os.path.ismount(point):
                if grow:
                    await self._grow(user_id, image, size_mb)
                await _run(
                    user_id, "mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(point)
                )
                log.info("mounted the workspace of %s", user_id)
            if made:
                # e2fsck makes it again when it needs it; the agent has no use for it.
                (point / "lost+found").rmdir()
            return point, made

    async def _make(self, user_id: str, image: Path, size_mb: int) -> None:
        # Made aside and renamed: a half-made image is never taken for a workspace.
        partial = image.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        try:
            with partial.open("xb") as file:
                os.fchmod(file.fileno(), 0o600)
                file.truncate(size_mb << 20)
            await _run(user_id, *_MKFS, str(partial))
            partial.rename(image)
        finally:
            partial.unlink(missing_ok=True)
        log.info("made the workspace of %s: %d MB", user_id, size_mb)

    def _sized(self, user_id: str, image: Path, size_mb: int) -> bool:
        """Whether the image is to grow to `size_mb`; warns when it is larger."""
        have = image.stat().st_size
        if have > size_mb << 20:
            log.warning(
                "the workspace of %s is %d MB, more than the %d MB now set; it keeps its "
                "size (/reset makes it anew)",
                user_id,
                have >> 20,
                size_mb,
            )
        return have < size_mb << 20

    async def _grow_mounted(self, user_id: str, image: Path, point: Path, size_mb: int) -> None:
        """Grow it in place: the loop device is told the file's new size, then the
        filesystem takes the room. That takes CAP_SYS_RESOURCE; without it the workspace
        is unmounted for `_grow`, unless an agent has it open (then at its next start)."""
        found = await _run(user_id, "losetup", "--noheadings", "-O", "NAME", "-j", str(image))
        loop = found.split()[0] if found.split() else ""
        if not loop:
            raise DependencyError(f"the workspace of {user_id} is mounted without a loop device")
        have = image.stat().st_size
        os.truncate(image, size_mb << 20)
        await _run(user_id, "losetup", "-c", loop)
        try:
            await _run(user_id, "resize2fs", loop)
        except DependencyError as exc:
            os.truncate(image, have)  # the filesystem still ends there
            await _run(user_id, "losetup", "-c", loop)
            try:
                await _run(user_id, "umount", str(point))
            except DependencyError:
                log.warning("the workspace of %s grows at its next start: %s", user_id, exc)
            return
        log.info("grew the workspace of %s to %d MB", user_id, size_mb)

    async def _grow(self, user_id: str, image: Path, size_mb: int) -> None:
        """Grow the unmounted image; resize2fs wants it checked first."""
        await _run(user_id, "e2fsck", "-f", "-p", str(image), ok=(0, 1))
        os.truncate(image, size_mb << 20)
        await _run(user_id, "resize2fs", str(image))
        log.info("grew the workspace of %s to %d MB", user_id, size_mb)

    async def fill(self, user_id: str, source: Path) -> None:
        """Copy everything under `source` into the mounted workspace, owners and modes kept."""
        await _run(user_id, "cp", "-a", "--", f"{source}/.", f"{self.mount_point(user_id)}/")

    async def remove(self, user_id: str) -> None:
        """Unmount the workspace and delete it; nothing happens when there is none."""
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            point = self.mount_point(user_id)
            if os.path.ismount(point):
                # The loop device goes with it: mount set it up to clear itself.
                await _run(user_id, "umount", str(point))
            with contextlib.suppress(FileNotFoundError):
                point.rmdir()
            self.image(user_id).unlink(missing_ok=True)


async def _run(user_id: str, *argv: str, ok: tuple[int, ...] = (0,)) -> str:
    """Run a tool to its end; its output, or `DependencyError` with its last error line
    when its exit status is not in `ok`."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_ENV,
        )
    except FileNotFoundError:
        raise BinaryMissing(argv[0], _TOOLS.get(argv[0], "coreutils")) from None
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # cancelled: the tool does not outlive the call
            proc.kill()
            await proc.wait()
    if proc.returncode not in ok:
        lines = err.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"]
        raise DependencyError(f"{argv[0]} failed on the workspace of {user_id}: {lines[-1]}")
    return out.decode(errors="replace")
