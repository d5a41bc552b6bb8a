"""`stockade audit tail|verify`: the operator's view of the audit log of a running Stockade."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from gateway.audit._chain import Verdict, render
from gateway.audit._log import AuditLog

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.settings import Settings

EXIT_INTACT: Final = 0
EXIT_BROKEN: Final = 1
"""`stockade audit verify` found the log changed, cut or malformed."""

TAIL_DEFAULT: Final = 20
HEAD_SHOWN: Final = 16
"""Hex digits of the head hash printed: enough to compare with a copy kept elsewhere."""


def verdict_text(verdict: Verdict) -> str:
    """One line saying whether the log is intact, for the terminal."""
    if verdict.ok:
        noun = "entry" if verdict.checked == 1 else "entries"
        line = f"audit log intact: {verdict.checked} {noun}, head {verdict.head[:HEAD_SHOWN]}"
        if verdict.pinned_seq is not None:
            line += f"; the pinned entry {verdict.pinned_seq} is in it"
        return line
    return f"audit log NOT intact: {verdict.reason} ({verdict.checked} entries before it check out)"


async def tail_text(client: aioredis.Redis, count: int) -> str:
    entries = await AuditLog(client).tail(count)
    return render(entries) if entries else "the audit log is empty"


async def verify_text(client: aioredis.Redis, pinned: str | None = None) -> tuple[int, str]:
    """The exit status and the line to print."""
    verdict = await AuditLog(client).verify(pinned)
    return (EXIT_INTACT if verdict.ok else EXIT_BROKEN), verdict_text(verdict)


def run_audit_command(
    settings: Settings, action: str, count: int = TAIL_DEFAULT, pinned: str | None = None
) -> int:
    """Run `stockade audit ACTION` against the running Stockade's Redis; the exit status."""

    async def run() -> tuple[int, str]:
        from gateway.app import redis_client

        async with redis_client(settings, start_embedded=False) as client:
            if action == "tail":
                return EXIT_INTACT, await tail_text(client, count)
            if action == "verify":
                return await verify_text(client, pinned)
        raise ValueError(f"unknown audit action {action!r}")

    status, text = asyncio.run(run())
    print(text)
    return status
