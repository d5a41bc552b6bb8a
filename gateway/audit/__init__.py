"""The tamper-evident audit trail: every admin action and state-changing access decision.

`AuditLog(client).append(actor, action, target, detail, outcome)` records one entry in
Redis; each entry carries the SHA-256 of the one before, so `verify` finds an entry
that was changed, removed or cut from the end. `render` turns entries into lines
for people; `stockade audit tail|verify` are the operator's view.
"""

from gateway.audit._chain import (
    GENESIS,
    OUTCOMES,
    AuditEntry,
    Head,
    Outcome,
    Verdict,
    Verifier,
    entry_hash,
    parse_pin,
    render,
    seal,
    verify,
)
from gateway.audit._commands import EXIT_BROKEN, run_audit_command
from gateway.audit._log import HEAD_KEY, STREAM, AuditLog

__all__ = [
    "EXIT_BROKEN",
    "GENESIS",
    "HEAD_KEY",
    "OUTCOMES",
    "STREAM",
    "AuditEntry",
    "AuditLog",
    "Head",
    "Outcome",
    "Verdict",
    "Verifier",
    "entry_hash",
    "parse_pin",
    "render",
    "run_audit_command",
    "seal",
    "verify",
]
