"""The audit chain, pure: entries, their hashes, verification and the human rendering.

Each entry carries the SHA-256 of the one before it, so changing, removing or
reordering an entry breaks the chain at that point. The hash covers a canonical
JSON encoding of every field but the hash itself; any writer in any language can
recompute it.

This makes quiet edits evident, not impossible: someone who can write the store can
rewrite the whole chain. Keeping a copy of the head hash elsewhere now and then
(`stockade audit verify` prints it) pins everything before it: `verify --pinned HASH`
fails unless the chain still holds that entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, get_args

GENESIS: Final = "0" * 64
"""The `prev` of the first entry."""

Outcome = Literal["ok", "refused", "failed"]
OUTCOMES: Final = frozenset(get_args(Outcome))

# Caps keep one entry small and one rendered line readable; user-chosen values (a
# display name, command arguments) end up in target and detail.
ACTOR_MAX: Final = 100
ACTION_MAX: Final = 64
TARGET_MAX: Final = 200
DETAIL_MAX: Final = 500

_REPLACEMENT: Final = "\ufffd"
_ELLIPSIS: Final = "…"
# Line and paragraph separators end a line in many viewers; bidi controls reorder
# what a reader sees. Either could make one entry pass for another on screen.
_UNSAFE_FORMAT: Final = frozenset(
    "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def clean(text: str, limit: int) -> str:
    """`text` fit for one log line: control characters replaced, at most `limit` characters."""
    safe = "".join(
        _REPLACEMENT if unicodedata.category(ch) == "Cc" or ch in _UNSAFE_FORMAT else ch
        for ch in text
    )
    if len(safe) > limit:
        return safe[: limit - 1] + _ELLIPSIS
    return safe


def entry_hash(
    *,
    seq: int,
    at: float,
    actor: str,
    action: str,
    target: str,
    detail: str,
    outcome: str,
    prev: str,
) -> str:
    """The hex SHA-256 of the canonical encoding of an entry's fields, `hash` excepted."""
    body = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "target": target,
        "detail": detail,
        "outcome": outcome,
        "prev": prev,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded action; `hash` seals every other field and the previous entry's hash."""

    seq: int
    """1 for the first entry, then one more per entry, with no gaps."""
    at: float
    """Epoch seconds, from the writer's clock."""
    actor: str
    """An internal user id, "cli:<login>" for the command line, or "system"."""
    action: str
    """Dotted, e.g. "allow", "pair.approve", "budget.set", "kill", "command.denied"."""
    target: str
    detail: str
    outcome: str
    """One of OUTCOMES when written by Stockade; read back as found."""
    prev: str
    hash: str

    def computed_hash(self) -> str:
        return entry_hash(
            seq=self.seq,
            at=self.at,
            actor=self.actor,
            action=self.action,
            target=self.target,
            detail=self.detail,
            outcome=self.outcome,
            prev=self.prev,
        )


@dataclass(frozen=True, slots=True)
class Head:
    """The last entry's seq and hash; seq 0 and GENESIS before the first entry."""

    seq: int = 0
    hash: str = GENESIS


def seal(
    head: Head,
    *,
    at: float,
    actor: str,
    action: str,
    target: str = "",
    detail: str = "",
    outcome: Outcome = "ok",
) -> AuditEntry:
    """The entry that follows `head`: strings cleaned and capped, then hashed.

    Raises ValueError for an outcome outside OUTCOMES, an empty actor or action, or a
    clock that is not a finite number: those are mistakes of the caller.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    # Always a float: an int would encode as "5" here but read back from the store as 5.0.
    at = float(at)
    if not math.isfinite(at):
        raise ValueError("audit time is not a finite number")
    actor = clean(actor, ACTOR_MAX)
    action = clean(action, ACTION_MAX)
    if not actor or not action:
        raise ValueError("an audit entry needs an actor and an action")
    target = clean(target, TARGET_MAX)
    detail = clean(detail, DETAIL_MAX)
    seq = head.seq + 1
    digest = entry_hash(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        target=target,
        detail=detail,
        outcome=outcome,
        prev=head.hash,
    )
    return AuditEntry(seq, at, actor, action, target, detail, outcome, head.hash, digest)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What verifying a chain found.

    `checked` counts the entries that passed. On failure, `bad_seq` is the seq of the
    first entry at fault and `reason` says what is wrong in plain words; `head` is the
    hash of the last entry that passed (GENESIS if none did).
    """

    ok: bool
    checked: int
    head: str = GENESIS
    bad_seq: int | None = None
    reason: str = ""
    pinned_seq: int | None = None
    """The entry whose hash the operator pinned, when a pin was given and found."""


PIN_MIN: Final = 16
"""Hex digits of a pinned hash at the least: what `stockade audit verify` prints."""


def parse_pin(text: str) -> str:
    """A pinned head hash as the operator typed it, checked: 16 to 64 hex digits.

    Raises ValueError with the reason.
    """
    pin = text.strip().lower()
    if not PIN_MIN <= len(pin) <= len(GENESIS) or any(c not in "0123456789abcdef" for c in pin):
        raise ValueError(f"a pinned hash is {PIN_MIN} to {len(GENESIS)} hex digits")
    return pin


class Verifier:
    """Checks a chain one entry at a time, so a long log is never held whole.

    Feed entries in log order; after the first fault, further entries are ignored.
    """

    __slots__ = ("_checked", "_failure", "_last", "_pin", "_pinned_seq")

    def __init__(self, pinned: str | None = None) -> None:
        """`pinned`: a head hash (or its first digits, `parse_pin`) kept elsewhere
        earlier; the chain must hold that entry, so nothing before it was rewritten."""
        self._last = Head()
        self._checked = 0
        self._failure: tuple[int, str] | None = None
        self._pin = pinned
        self._pinned_seq: int | None = None

    def feed(self, entry: AuditEntry) -> bool:
        """Check the next entry; False once the chain is broken."""
        if self._failure is not None:
            return False
        fault = _fault(self._last, entry)
        if fault is not None:
            self._failure = fault
            return False
        self._last = Head(entry.seq, entry.hash)
        self._checked += 1
        if self._pin is not None and self._pinned_seq is None and entry.hash.startswith(self._pin):
            self._pinned_seq = entry.seq
        return True

    def malformed(self, where: str, problem: str) -> None:
        """The next item in the log is not an entry at all; `where` locates it in the store."""
        if self._failure is None:
            after = f"after entry {self._last.seq}" if self._last.seq else "at the start"
            self._failure = (
                self._last.seq + 1,
                f"the record {where} {after} is not a valid entry: {problem}",
            )

    def finish(self, head: Head | None) -> Verdict:
        """The verdict; `head` is what the store says the last entry is (None: not known)."""
        if self._failure is None and head is not None:
            self._failure = _head_fault(self._last, head)
        if self._failure is not None:
            bad_seq, reason = self._failure
            return Verdict(False, self._checked, self._last.hash, bad_seq, reason)
        if self._pin is not None and self._pinned_seq is None:
            # A chain that checks out but lacks the pinned entry was rebuilt from the
            # start (or the pin belongs to another log): nothing in it can be trusted.
            reason = f"no entry has the pinned hash {self._pin}: the log was rewritten"
            return Verdict(False, self._checked, self._last.hash, None, reason)
        return Verdict(True, self._checked, self._last.hash, pinned_seq=self._pinned_seq)


def _fault(last: Head, entry: AuditEntry) -> tuple[int, str] | None:
    if entry.computed_hash() != entry.hash:
        return entry.seq, f"entry {entry.seq} was changed: its hash does not match its content"
    expected = last.seq + 1
    if entry.seq > expected:
        if last.seq == 0:
            return expected, f"entry 1 is missing: the log starts at {entry.seq}"
        return expected, f"entry {expected} is missing: {last.seq} is followed by {entry.seq}"
    if entry.seq < expected:
        return entry.seq, f"entry {entry.seq} is out of place: it comes after {last.seq}"
    if entry.prev != last.hash:
        if last.seq == 0:
            return 1, "entry 1 does not start the chain: its prev is not 64 zeros"
        return (
            entry.seq,
            f"entry {entry.seq} does not follow {last.seq}: its prev is not {last.seq}'s hash",
        )
    return None


def _head_fault(last: Head, head: Head) -> tuple[int, str] | None:
    if last.seq < head.seq:
        where = "the log is empty" if last.seq == 0 else f"the log ends at {last.seq}"
        return (
            last.seq + 1,
            f"{where} but its head says {head.seq}: entries were cut from the end",
        )
    if last.seq > head.seq:
        return (
            head.seq + 1,
            f"the log goes on to {last.seq} but its head says {head.seq}: "
            "the head was moved back or deleted",
        )
    if last.hash != head.hash:
        return (
            last.seq,
            f"entry {last.seq} is not the one the head recorded: the log was rewritten",
        )
    return None


def verify(
    entries: Iterable[AuditEntry],
    head: tuple[int, str] | Head | None,
    pinned: str | None = None,
) -> Verdict:
    """Check a whole chain, in log order, against the head the store recorded (None: skip)
    and, when given, a hash pinned earlier (`Verifier`)."""
    verifier = Verifier(pinned)
    for entry in entries:
        if not verifier.feed(entry):
            break
    if head is not None and not isinstance(head, Head):
        head = Head(*head)
    return verifier.finish(head)


def render(entries: Iterable[AuditEntry]) -> str:
    """One line per entry, for people: "#12 2026-11-22 10:04:05 UTC u1… kill u5… ok — detail"."""
    return "\n".join(render_line(entry) for entry in entries)


def render_line(entry: AuditEntry) -> str:
    when = _when(entry.at)
    # Entries read back may have been edited in the store: clean again before showing.
    words = [
        f"#{entry.seq}",
        when,
        clean(entry.actor, ACTOR_MAX),
        clean(entry.action, ACTION_MAX),
        clean(entry.target, TARGET_MAX) or "-",
        clean(entry.outcome, ACTION_MAX),
    ]
    line = " ".join(words)
    if entry.detail:
        line += f" — {clean(entry.detail, DETAIL_MAX)}"
    return line


def _when(at: float) -> str:
    try:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"(time {at!r})"
