"""The vault's file operations: atomic replace, create-if-absent, an exclusive lock, stamps.

Every OSError becomes a `VaultError` naming the path and the system's reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import VaultError

Stamp = tuple[int, int, int]
"""(inode, mtime_ns, size): an atomic replace gives a new inode, an edit in place a new mtime.

Only a reused inode number, within one tick of the file system's coarse clock, at an
identical size could hide a change; vault writes are operator commands, far apart.
"""


def stamp(path: Path) -> Stamp:
    """The stamp of `path`; raises FileNotFoundError when it is absent."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise VaultError(f"cannot read {path}: {exc.strerror}") from None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def read_stamped(path: Path) -> tuple[Stamp, bytes]:
    """The bytes of `path` and the stamp of exactly those bytes (from the open file)."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            return (info.st_ino, info.st_mtime_ns, info.st_size), handle.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise VaultError(f"cannot read {path}: {exc.strerror}") from None


def _private_dir(path: Path) -> None:
    # mode applies only when the directory is made here; an existing one is left as it is.
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise VaultError(f"cannot create {path}: {exc.strerror}") from None


def _temp_copy(path: Path, data: bytes) -> Path:
    """Write `data` to a new 0600 file beside `path`, flushed to disk."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (mode 0600) so that a reader sees the old or the new file."""
    _private_dir(path.parent)
    try:
        temp = _temp_copy(path, data)
        try:
            temp.replace(path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _sync_dir(path.parent)
    except OSError as exc:
        raise VaultError(f"cannot write {path}: {exc.strerror}") from None


def create_once(path: Path, data: bytes) -> bool:
    """Create `path` (0600) holding `data` unless it exists; False if someone else made it.

    Linking a complete temporary file into place means a concurrent reader never sees
    a half-written file, and of two creators exactly one wins.
    """
    _private_dir(path.parent)
    try:
        temp = _temp_copy(path, data)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        _sync_dir(path.parent)
    except OSError as exc:
        raise VaultError(f"cannot create {path}: {exc.strerror}") from None
    return True


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created 0600, never deleted) for the block.

    The lock lives in its own file because the store itself is replaced by rename,
    and a lock on a replaced file guards nothing. flock locks belong to the open file,
    so two threads of one process exclude each other too.
    """
    _private_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise VaultError(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
