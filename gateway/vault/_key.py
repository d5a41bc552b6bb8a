"""The master key: from settings, from its key file, or made on first use."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.errors import VaultKeyError
from gateway.settings import VaultSettings
from gateway.vault._crypto import decode_key, encode_key, new_key
from gateway.vault._files import create_once

_MAX_KEY_FILE_BYTES = 1024


def load_key(settings: VaultSettings, key_file: Path, *, create: bool) -> bytes:
    """The 32-byte master key: `settings.key` if set, else `key_file`.

    With `create`, a missing key file is made (0600, in a 0700 directory) with a new
    random key. Raises `VaultKeyError` when there is no key, a malformed one, or a key
    file that group or others may read.
    """
    if settings.key is not None:
        return decode_key(settings.key.get_secret_value(), "vault.key")
    try:
        return _read_key_file(key_file)
    except FileNotFoundError:
        if not create:
            raise VaultKeyError(
                f"no vault master key: {key_file} does not exist and vault.key is not set; "
                "`stockade vault set NAME` creates one"
            ) from None
    key = new_key()
    if create_once(key_file, (encode_key(key) + "\n").encode("ascii")):
        return key
    return _read_key_file(key_file)  # another process created it first: use theirs


def _read_key_file(key_file: Path) -> bytes:
    """Read and check a key file; FileNotFoundError passes through."""
    try:
        fd = os.open(key_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise VaultKeyError(f"cannot read {key_file}: {exc.strerror}") from None
    try:
        # Checked on the open file, not the path, so a swap between check and read is moot.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise VaultKeyError(f"{key_file}: not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            # As ssh does with private keys: a key others can read is already disclosed.
            raise VaultKeyError(
                f"{key_file}: permissions {mode:04o} are too open, the master key must be "
                f"readable by its owner only; run: chmod 600 {key_file}"
            )
        raw = os.read(fd, _MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise VaultKeyError(f"cannot read {key_file}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return decode_key(text, str(key_file))
