"""The durable spend ledger: every reserve, denial, settlement and expiry as a JSON line.

Redis holds the live counters; this ledger is what they are rebuilt from when Redis
loses them (a restart from a stale snapshot, a flush). Each process appends to files
of its own, one per month of the reservations it records:

    <ledger_dir>/<YYYY-MM>.<host>.<pid>.<random>.jsonl

Each record is written with ONE os.write on an O_APPEND descriptor, so a crash
can only cut the last line of a file, never leave half a line among others; a
reader skips a cut line. Descriptors are fsynced at most a second after a write
(as Redis's `appendfsync everysec`) and on close: a power cut loses at most the
last second, like the Redis it backs.

A record (one line, ASCII; fields left at their default are left out):

    {"v":1,"op":"reserve","id":…,"t":…,"user":…,"model":…,"day":"2026-11-22",
     "month":"2026-11","nano":<worst case>,"prompt_tokens":…,"max_tokens":…,"expires_at":…}
    {"op":"denied", … "reason":"user day"}           the reserve script refused it
    {"op":"settle", … "nano":<billed>,"reserved":…,"prompt_tokens":…,"completion_tokens":…}
    {"op":"expire", … "nano":<billed = reserved>,"reserved":…}

`replay` turns one month's records into the state the counters should hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from gateway._aio import raise_if_cancelling
from gateway.errors import BudgetUnavailable

log = logging.getLogger("stockade.budget")

VERSION: Final = 1
SYNC_INTERVAL_S: Final = 1.0

Op = Literal["reserve", "denied", "settle", "expire"]
_OPS: Final = frozenset(("reserve", "denied", "settle", "expire"))


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger record. Amounts are nano-dollars; times epoch seconds."""

    op: Op
    id: str
    t: float
    user: str
    model: str
    day: str
    month: str
    nano: int = 0
    """reserve: the worst case asked for; settle and expire: what was billed."""
    reserved: int = 0
    """settle and expire: what the reservation held."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_tokens: int = 0
    expires_at: float = 0.0
    reason: str = ""


_OPTIONAL: Final = (
    "reserved",
    "prompt_tokens",
    "completion_tokens",
    "max_tokens",
    "expires_at",
    "reason",
)
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))


def encode(entry: Entry) -> bytes:
    """One line: the version, the fields every record has, then those that are set."""
    record: dict[str, Any] = {
        "v": VERSION,
        "op": entry.op,
        "id": entry.id,
        "t": entry.t,
        "user": entry.user,
        "model": entry.model,
        "day": entry.day,
        "month": entry.month,
        "nano": entry.nano,
    }
    for name in _OPTIONAL:
        value = getattr(entry, name)
        if value:
            record[name] = value
    return (_ENCODER.encode(record) + "\n").encode()


def decode(line: bytes) -> Entry | None:
    """The entry of one line; None for a line a crash cut short or anything malformed."""
    try:
        record = json.loads(line)
        if not isinstance(record, dict) or record.pop("v", None) != VERSION:
            return None
        if record.get("op") not in _OPS:
            return None
        entry = Entry(**record)
    except (ValueError, TypeError):
        return None
    texts = (entry.id, entry.user, entry.model, entry.day, entry.month, entry.reason)
    numbers = (entry.nano, entry.reserved, entry.prompt_tokens, entry.completion_tokens)
    if not all(isinstance(v, str) for v in texts) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in numbers
    ):
        return None
    return entry


def read_month(directory: Path, month: str) -> list[Entry]:
    """Every record of `month` in every process's file, in no particular order."""
    entries: list[Entry] = []
    bad = 0
    for path in sorted(directory.glob(f"{month}.*.jsonl")):
        data = path.read_bytes()
        lines = data.split(b"\n")
        if data and not data.endswith(b"\n"):
            lines.pop()  # cut by a crash mid-write: the record never counted
        for line in lines:
            if not line:
                continue
            entry = decode(line)
            if entry is None or entry.month != month:
                bad += 1
            else:
                entries.append(entry)
    if bad:
        log.warning("ledger %s: skipped %d malformed lines of %s", directory, bad, month)
    return entries


class Ledger:
    """Appends records to this process's files in `directory`; use as `async with`.

    The context starts the once-a-second fsync and, on exit, syncs and closes.
    """

    def __init__(self, directory: Path, *, sync_interval_s: float = SYNC_INTERVAL_S) -> None:
        self.directory = directory
        self._interval = sync_interval_s
        self._stem = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
        self._fds: dict[str, int] = {}
        self._dirty: set[int] = set()
        self._syncer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._syncer = asyncio.create_task(self._sync_forever(), name="ledger-fsync")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
            self._syncer = None
        fds, self._fds = list(self._fds.values()), {}
        self._dirty.clear()
        for fd in fds:
            try:
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)

    def _fd(self, month: str) -> int:
        fd = self._fds.get(month)
        if fd is None:
            path = self.directory / f"{month}.{self._stem}.jsonl"
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            fd = self._fds[month] = os.open(path, flags, 0o600)
        return fd

    def append(self, entry: Entry) -> None:
        """Write one record now (page cache; on disk within a second).

        Raises BudgetUnavailable when the record cannot be written: nothing that the
        ledger cannot account for may happen.
        """
        data = encode(entry)
        try:
            fd = self._fd(entry.month)
            written = os.write(fd, data)
        except OSError as exc:
            raise BudgetUnavailable(f"the spend ledger cannot be written: {exc}") from None
        self._dirty.add(fd)
        if written != len(data):
            # A full disk: end the cut line so that the next record starts clean.
            with contextlib.suppress(OSError):
                os.write(fd, b"\n")
            raise BudgetUnavailable("the spend ledger cannot be written: short write")

    def append_all(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.append(entry)

    def read_month(self, month: str) -> list[Entry]:
        """All processes' records of `month` (blocking: call it in a thread)."""
        if not self.directory.exists():
            return []
        return read_month(self.directory, month)

    async def sync(self) -> None:
        """fsync every file written to since the last sync."""
        dirty, self._dirty = self._dirty, set()
        for fd in dirty:
            if fd in self._fds.values():
                await asyncio.to_thread(os.fsync, fd)

    async def _sync_forever(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self._interval)
            try:
                await self.sync()
            except OSError as exc:
                log.error("ledger fsync failed in %s: %s", self.directory, exc)


# -- replay: from records to the state Redis should hold -----------------------------------


WindowId = tuple[str, str, str, str]
"""(scope, period, day or month key, user id or "" for the total)."""


@dataclass(slots=True)
class Replay:
    """What one month's ledger says the budget state is."""

    windows: dict[WindowId, list[int]] = field(default_factory=dict)
    """[used, held] per window; used includes held."""
    models: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    """(user, month) → model → nano-dollars billed."""
    open: list[Entry] = field(default_factory=list)
    """Reservations with no settlement that have not expired: restored as outstanding."""
    expired: list[Entry] = field(default_factory=list)
    """Expire records to append: reservations never settled, past expiry, billed in full."""
    applied: int = 0
    """Records whose effect is in the state: the value of the marker once it is written."""


def _window_ids(entry: Entry) -> tuple[WindowId, ...]:
    return (
        ("user", "day", entry.day, entry.user),
        ("user", "month", entry.month, entry.user),
        ("total", "day", entry.day, ""),
        ("total", "month", entry.month, ""),
    )


def applied_count(entries: Iterable[Entry]) -> int:
    """How many records' effects Redis should hold: what its marker should say.

    The reserve script adds one for each reservation it makes and one for each
    settlement or expiry. A reserve record followed by a denial made nothing; a
    settlement or expiry proves its reserve was made, even when a denial was
    written for it (the script ran, but its answer was lost).
    """
    reserved: set[str] = set()
    denied: set[str] = set()
    finished: set[str] = set()
    for entry in entries:
        if entry.op == "reserve":
            reserved.add(entry.id)
        elif entry.op == "denied":
            denied.add(entry.id)
        else:
            finished.add(entry.id)
    return len((reserved - denied) | finished) + len(finished)


def replay(entries: Iterable[Entry], now: float) -> Replay:
    """The state of one month from its records.

    A settled or expired reservation counts what it was billed. A reservation with
    neither, and no denial, is still running if it has not expired (its worst case
    is held) and otherwise billed at that worst case, as the reaper would have done:
    a crash between the reserve record and the script, or between the script and
    the settle record, costs the user at most the worst case, never nothing.
    """
    entries = list(entries)
    reserves: dict[str, Entry] = {}
    finals: dict[str, Entry] = {}
    denied: set[str] = set()
    for entry in entries:
        if entry.op == "reserve":
            reserves[entry.id] = entry
        elif entry.op == "denied":
            denied.add(entry.id)
        elif entry.id not in finals:  # the scripts finish a reservation once
            finals[entry.id] = entry
    state = Replay()
    for final in finals.values():
        _bill(state, final, final.nano)
    for rid, entry in reserves.items():
        if rid in finals or rid in denied:
            continue
        if entry.expires_at > now:
            state.open.append(entry)
            for window in _window_ids(entry):
                counters = state.windows.setdefault(window, [0, 0])
                counters[0] += entry.nano
                counters[1] += entry.nano
        else:
            expired = replace(
                entry, op="expire", t=now, reserved=entry.nano, max_tokens=0, expires_at=0.0
            )
            state.expired.append(expired)
            _bill(state, expired, entry.nano)
    state.applied = applied_count([*entries, *state.expired])
    return state


def _bill(state: Replay, entry: Entry, nano: int) -> None:
    for window in _window_ids(entry):
        state.windows.setdefault(window, [0, 0])[0] += nano
    models = state.models.setdefault((entry.user, entry.month), {})
    models[entry.model] = models.get(entry.model, 0) + nano
