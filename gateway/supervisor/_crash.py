"""What a user is told when their agent crashed: one notice per crash, where they last wrote."""

from __future__ import annotations

import json
from typing import Final

import redis.asyncio as aioredis

from gateway.bus import Bus, out_stream
from gateway.envelope import Outbound
from gateway.supervisor._runtime import AgentContainer

CONTACT_KEY: Final = "stockade:supervisor:contact"
"""Where each user last wrote from (channel, conversation, thread), kept on every wake."""


def crash_notice(container: AgentContainer) -> str:
    reason = "it ran out of memory" if container.oom_killed else f"exit {container.exit_code}"
    return f"Your agent stopped unexpectedly ({reason}) and has been restarted."


async def notify_crash(client: aioredis.Redis, bus: Bus, container: AgentContainer) -> None:
    """Tell the user, where they last wrote, that their agent crashed and was restarted."""
    raw = await client.hget(CONTACT_KEY, container.user_id)
    if raw is None:
        return
    contact = json.loads(raw)
    crash_id = f"crash:{container.container_id[:12]}:{container.finished_at}"
    notice = Outbound(
        channel=contact["channel"],
        conversation_id=contact["conversation_id"],
        thread_id=contact.get("thread_id", ""),
        text=crash_notice(container),
        outbound_id=crash_id,
        user_id=container.user_id,
    )
    # Deduplicated by the crash's identity: one crash, one notice, even across restarts.
    await bus.publish(out_stream(notice.channel), notice, dedupe=crash_id)
