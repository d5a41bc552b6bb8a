"""Every log record at DEBUG, rendered as a handler writes it, searched for credentials.

An operator who troubleshoots runs `stockade -v`: the root logger at DEBUG, so every
library's debug records reach the log. `debug_log()` sets that up for a block and
keeps each record's whole text (message with its arguments, exception and stack) as
it was when it was logged, since a library may change an object after logging it.
Credentials are made by `canary()`, so a match cannot be a coincidence, and are looked
for as they are and in the encodings a request carries them in.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

FORMAT = "%(levelname)s %(name)s: %(message)s"


def canary(prefix: str) -> str:
    """A credential no library or fake makes by chance: `prefix`, "canary", 24 hex digits."""
    return f"{prefix}canary{secrets.token_hex(12)}"


def encodings(secret: str) -> frozenset[str]:
    """`secret` as it is, percent-encoded, in base64 (either alphabet) and in hex."""
    raw = secret.encode()
    return frozenset(
        (
            secret,
            quote(secret, safe=""),
            quote_plus(secret),
            base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            raw.hex(),
        )
    )


@dataclass(frozen=True, slots=True)
class Line:
    logger: str
    level: int
    text: str


class DebugLog(logging.Handler):
    """The lines the root logger's handlers would write, kept in order."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(FORMAT))
        self.lines: list[Line] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(Line(record.name, record.levelno, self.format(record)))

    def holding(self, *credentials: str) -> list[str]:
        """Lines that hold any of `credentials`, in any of its encodings."""
        forms = frozenset().union(*(encodings(c) for c in credentials))
        return [line.text for line in self.lines if any(form in line.text for form in forms)]

    def of(self, logger: str, level: int | None = None) -> list[Line]:
        """Lines of `logger` and its descendants; with `level`, only those at that level."""
        return [
            line
            for line in self.lines
            if (line.logger == logger or line.logger.startswith(logger + "."))
            and (level is None or line.level == level)
        ]


@contextmanager
def debug_log() -> Iterator[DebugLog]:
    """The root logger at DEBUG for the block, as `stockade -v` sets it, every line kept."""
    root = logging.getLogger()
    handler = DebugLog()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
