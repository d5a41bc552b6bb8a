"""What a secret's name and value may be: pure checks shared by the vault and the CLI."""

from __future__ import annotations

import re
from typing import Final

from gateway.errors import VaultError

NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Names appear in settings (`models.*.secret`), file keys and command lines: keep them plain."""
NAME_RULE: Final = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"

MAX_VALUE_BYTES: Final = 16 * 1024
"""Provider keys are under 1 KiB; 16 KiB leaves room for a PEM key or a small JSON credential."""


def check_name(name: str) -> str:
    """Return `name` if it is a valid secret name, else raise `VaultError`.

    The message does not repeat the name: a value typed where the name belongs (a long
    key fails the length rule) must not be echoed back to the terminal or a log.
    """
    if NAME_PATTERN.fullmatch(name) is None:
        raise VaultError(f"invalid secret name: use {NAME_RULE}")
    return name


def clean_value(value: str) -> str:
    """Strip surrounding whitespace (the newline of `echo` or a file) and check the size.

    Raises `VaultError` naming the rule, never the value.
    """
    cleaned = value.strip()
    if not cleaned:
        raise VaultError("the secret value is empty")
    if len(cleaned.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        raise VaultError(f"the secret value is longer than {MAX_VALUE_BYTES // 1024} KiB")
    return cleaned
