"""The offline base image: debootstrap a minimal Debian with python3, strip it, import it.

No registry is involved: packages come from the Debian mirror apt already uses, and
the root filesystem is streamed into the engine with `docker import`. The work
directory under the data dir is removed afterwards, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import docker.errors

from gateway.errors import BinaryMissing, ImageBuildError
from gateway.supervisor._apt import debian_mirror
from gateway.supervisor._context import ROLE_AGENT_BASE, ROLE_LABEL

Progress = Callable[[str], None]
_T = TypeVar("_T")

# A bootstrap takes about a minute; this bounds one stuck on a dead mirror.
DEBOOTSTRAP_TIMEOUT_S: Final = 1800.0
_TAIL_LINES: Final = 15

# Emptied after the bootstrap: caches, package lists, logs and documentation the
# agent never reads (about half the size). Copyright files stay.
_EMPTIED: Final = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
# Copied from the host by debootstrap (its name, its resolver) or naming the mirror:
# the engine provides the first two in every container, and the agent has no use for apt.
_REMOVED: Final = ("etc/hostname", "etc/resolv.conf", "etc/apt/sources.list")

_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_changes(suite: str) -> list[str]:
    """Dockerfile instructions applied on import: an imported rootfs has no config at all."""
    return [
        f"ENV PATH={_PATH}",
        "ENV LANG=C.UTF-8",
        f"LABEL {ROLE_LABEL}={ROLE_AGENT_BASE}",
        f"LABEL org.stockade.debian-suite={suite}",
        'CMD ["python3"]',
    ]


async def build_base(
    client: Any,
    repository: str,
    suite: str,
    mirror: str | None,
    work_dir: Path,
    progress: Progress,
) -> None:
    """Bootstrap `suite` under `work_dir` and import it as `repository:suite`.

    `mirror` None takes the Debian mirror apt uses for `suite` on this machine.
    """
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise BinaryMissing("debootstrap", "debootstrap")
    tar = shutil.which("tar")
    if tar is None:
        raise BinaryMissing("tar", "tar")
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the offline base image needs root (debootstrap chroots): run the build "
            "once as root, or set image.base_image to a registry image with python3"
        )
    if mirror is None:
        mirror = debian_mirror(suite)
    work_dir.mkdir(parents=True, exist_ok=True)
    await remove_leftovers(work_dir)
    build_dir = Path(tempfile.mkdtemp(prefix="rootfs-", dir=work_dir))
    try:
        rootfs = build_dir / "rootfs"
        log_path = work_dir / "debootstrap.log"
        progress(f"bootstrapping Debian {suite} with python3 from {mirror} (about a minute)")
        await _debootstrap(debootstrap, suite, rootfs, mirror, log_path, progress)
        await _to_the_end(strip_rootfs, rootfs)
        progress(f"importing the root filesystem as {repository}:{suite}")
        size = await _to_the_end(_import, client, tar, rootfs, repository, suite)
        progress(f"imported {repository}:{suite} ({size / 1e6:.0f} MB)")
    finally:
        await _remove_tree(build_dir)


async def _to_the_end(fn: Callable[..., _T], *args: Any) -> _T:
    """Run `fn` in a thread; if cancelled, wait for the thread before passing the cancellation on.

    A thread cannot be stopped, and the caller's cleanup deletes the tree it is reading:
    deleting it under tar would import a truncated base image.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller hears of
        raise


async def _debootstrap(
    binary: str, suite: str, rootfs: Path, mirror: str, log_path: Path, progress: Progress
) -> None:
    argv = [binary, "--variant=minbase", "--include=python3", suite, str(rootfs), mirror]
    # A small environment: nothing of the caller's (tokens, keys) reaches the chroot's
    # maintainer scripts. Proxy settings pass, since the fetches may need them.
    env = {
        "PATH": os.environ.get("PATH", _PATH),
        "LC_ALL": "C",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    env |= {
        k: v
        for k, v in os.environ.items()
        if k.lower() in ("http_proxy", "https_proxy", "no_proxy")
    }
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        # Its own process group, so stopping it also stops the dpkg it is running.
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(DEBOOTSTRAP_TIMEOUT_S):
            with log_path.open("w", encoding="utf-8") as log:
                async for raw in proc.stdout:
                    line = raw.decode("utf-8", errors="replace").rstrip()
                    log.write(line + "\n")
                    tail.append(line)
                    if line.startswith(("I: ", "W: ", "E: ")):
                        progress(f"debootstrap {line}")
                code = await proc.wait()
    except TimeoutError:
        await _stop(proc)
        raise ImageBuildError(
            f"debootstrap did not finish in {DEBOOTSTRAP_TIMEOUT_S:.0f} s; full log: {log_path}",
            tuple(tail),
        ) from None
    except BaseException:
        await _stop(proc)
        raise
    if code != 0:
        # Failures inside the chroot (dpkg) are only in the target's own log.
        inner = rootfs / "debootstrap" / "debootstrap.log"
        if inner.is_file():
            text = inner.read_text(encoding="utf-8", errors="replace")
            with log_path.open("a", encoding="utf-8") as log:
                log.write("--- debootstrap/debootstrap.log ---\n" + text)
            tail.extend(line for line in text.splitlines()[-_TAIL_LINES:] if line.strip())
        raise ImageBuildError(
            f"debootstrap {suite} from {mirror} failed (exit {code}); full log: {log_path}",
            tuple(tail)[-_TAIL_LINES:],
        )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    # TERM lets debootstrap's exit trap unmount /proc and /sys in the target.
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
            return
        except TimeoutError:
            continue


def strip_rootfs(rootfs: Path) -> None:
    """Drop what an agent never needs and the host details debootstrap copied in; clear setuid.

    Nothing here follows a symlink: the tree is a foreign root whose absolute links
    point into the host.
    """
    for relative in _EMPTIED:
        folder = _within(rootfs, relative)
        if folder is not None and folder.is_dir() and not folder.is_symlink():
            for child in folder.iterdir():
                _remove(child)
    for relative in _REMOVED:
        path = _within(rootfs, relative)
        if path is not None:
            _remove(path)
    docs = _within(rootfs, "usr/share/doc")
    if docs is not None and docs.is_dir() and not docs.is_symlink():
        for package in docs.iterdir():
            if package.is_symlink() or not package.is_dir():
                continue
            for child in package.iterdir():
                if child.name != "copyright":
                    _remove(child)
    # No-new-privileges already neuters setuid in the container; without the bits,
    # su, mount and passwd are harmless even where that option is forgotten.
    for top, _dirs, names in os.walk(rootfs):
        for name in names:
            path = Path(top) / name
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


def _within(rootfs: Path, relative: str) -> Path | None:
    """`rootfs / relative` if no folder on the way is a symlink (which could lead to the host)."""
    path = rootfs
    parts = relative.split("/")
    for part in parts[:-1]:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path / parts[-1]


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _import(client: Any, tar: str, rootfs: Path, repository: str, tag: str) -> int:
    # tar streams the tree straight into the engine: no second copy on disk.
    # --one-file-system keeps a /proc or /sys left mounted in the tree out of the image.
    argv = [tar, "--numeric-owner", "--one-file-system", "-C", str(rootfs), "-c", "."]
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        ) as proc,
    ):
        try:
            # An open file, never a str: a string `src` the SDK cannot open is fetched as a URL.
            answer = client.api.import_image(
                src=proc.stdout,
                repository=repository,
                tag=tag,
                changes=base_changes(tag),
                stream_src=True,
            )
        except (docker.errors.DockerException, OSError) as exc:
            proc.kill()
            raise ImageBuildError(f"the engine refused to import the base image: {exc}") from None
        code = proc.wait()
        errors.seek(0)
        messages = errors.read().decode("utf-8", errors="replace").splitlines()
    if code != 0 or '"error' in str(answer):
        _forget(client, f"{repository}:{tag}")
        reason = f"tar exit {code}" if code != 0 else str(answer).strip()[:300]
        raise ImageBuildError(
            f"importing the base image failed ({reason})", tuple(messages[-_TAIL_LINES:])
        )
    return int(client.images.get(f"{repository}:{tag}").attrs["Size"])


def _forget(client: Any, reference: str) -> None:
    try:
        client.images.remove(reference, force=True)
    except docker.errors.ImageNotFound:
        return


def mounts_under(mountinfo: str, root: Path) -> list[str]:
    """Mount points at or below `root` in /proc/self/mountinfo text, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points: list[str] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # Field 5 is the mount point, with space, tab, newline and backslash in octal.
        point = (
            fields[4]
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
        )
        if point == prefix[:-1] or point.startswith(prefix):
            points.append(point)
    return sorted(points, key=len, reverse=True)


async def _remove_tree(path: Path) -> None:
    """Unmount anything left mounted inside `path`, then delete it.

    A /proc or /sys still mounted in the target (a killed debootstrap) must never be
    walked by rmtree; if it cannot be unmounted, the tree is left and the error says where.
    """
    for attempt in range(3):
        points = mounts_under(Path("/proc/self/mountinfo").read_text(), path)
        if not points:
            await asyncio.to_thread(shutil.rmtree, path)
            return
        if attempt == 2:
            break
        for point in points:
            umount = await asyncio.create_subprocess_exec(
                "umount", "--lazy", point, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
            await umount.wait()
    raise ImageBuildError(
        f"{path} still has mounts inside ({points[0]}); unmount them, then delete it"
    )


async def remove_leftovers(work_dir: Path) -> None:
    """Delete root filesystems left by a build that was killed before it could clean up."""
    for leftover in sorted(work_dir.glob("rootfs-*")):
        await _remove_tree(leftover)
