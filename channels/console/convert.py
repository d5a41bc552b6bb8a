"""Pure conversion between terminal lines and envelopes."""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from channels._shared.chunking import chunk
from channels.base import Capabilities
from gateway.envelope import Inbound, Outbound
from gateway.sanitize import sanitize

NAME: Final = "console"
# A terminal has no message limit; this only bounds what one pasted line may carry.
CAPABILITIES: Final = Capabilities(max_text=65_536)
MAX_LINE: Final = 16_384


def line_to_inbound(line: str, *, user: str, session: str, seq: int, now: float) -> Inbound:
    """One typed line as an envelope; the event id is unique per session and line."""
    text = sanitize(line.rstrip("\r\n"))[:MAX_LINE]
    return Inbound(
        channel=NAME,
        event_id=f"{session}-{seq}",
        sender_id=sanitize(user),
        sender_name=sanitize(user),
        conversation_id=session,
        text=text,
        received_at=now,
        is_direct=True,
    )


def render(outbound: Outbound) -> str:
    """A reply as terminal text: every line prefixed, so it stands apart from typing."""
    body = outbound.text.replace("\r\n", "\n") or "(empty reply)"
    return "\n".join(f"« {line}" for line in body.split("\n"))


def render_parts(outbound: Outbound) -> list[str]:
    """A reply as terminal text in parts of at most `max_text` characters each (before
    the prefixes): a runaway answer scrolls by in pieces, like on any other platform."""
    parts = chunk(outbound.text, CAPABILITIES.max_text) or [""]
    return [render(replace(outbound, text=part)) for part in parts]


def is_for(outbound: Outbound, session: str) -> bool:
    return outbound.conversation_id == session
