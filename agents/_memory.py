"""The agent's conversation memory: a bounded JSON file in its own workspace.

The file lives in the workspace volume, so it survives a restarted or reaped
container, and `/reset` (which deletes the volume) forgets it. It is written to a
temporary file and renamed over the old one, so a crash never leaves half a file.
It also records the last finished message and its answer, so a message delivered
again after a crash is answered the same way without calling the model twice.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeGuard

MEMORY_DIR: Final = ".stockade"
MEMORY_FILE: Final = "memory.json"
VERSION: Final = 1

MAX_MESSAGES: Final = 60
"""Messages kept (user, assistant and tool messages together)."""
MAX_CHARS: Final = 200_000
"""Characters kept across all kept messages: bounds the prompt the memory adds."""

log = logging.getLogger("agents.memory")


@dataclass
class Memory:
    messages: list[dict[str, Any]] = field(default_factory=list)
    answered_id: str = ""
    """Id of the last message whose final reply was worked out."""
    answered_text: str = ""


def _size(message: dict[str, Any]) -> int:
    return len(json.dumps(message, ensure_ascii=False))


def trimmed(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest messages within the bounds, starting at a user message.

    Starting at a user message keeps every tool result after the assistant message
    that asked for it, which providers insist on.
    """
    kept = messages[-MAX_MESSAGES:]
    total = sum(_size(m) for m in kept)
    start = 0
    while start < len(kept) - 1 and total > MAX_CHARS:
        total -= _size(kept[start])
        start += 1
    while start < len(kept) and kept[start].get("role") != "user":
        start += 1
    return kept[start:]


def _valid(messages: Any) -> TypeGuard[list[dict[str, Any]]]:
    return isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
    )


class MemoryStore:
    """Loads and saves the memory file under `<workspace>/.stockade/`."""

    def __init__(self, workspace: Path) -> None:
        self.directory = workspace / MEMORY_DIR
        self.path = self.directory / MEMORY_FILE

    def load(self) -> Memory:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Memory()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError("not a memory file of this version")
            messages = data.get("messages")
            answered = data.get("answered") or {}
            if not _valid(messages) or not isinstance(answered, dict):
                raise ValueError("the messages are malformed")
            answered_id = answered.get("id", "")
            answered_text = answered.get("text", "")
            if not isinstance(answered_id, str) or not isinstance(answered_text, str):
                raise ValueError("the last answer is malformed")
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            aside = self.path.with_name(MEMORY_FILE + ".bad")
            self.path.replace(aside)
            log.warning("the memory file was unreadable (%s); moved it to %s", exc, aside.name)
            return Memory()
        return Memory(messages, answered_id, answered_text)

    def save(self, memory: Memory) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        data = {
            "version": VERSION,
            "messages": trimmed(memory.messages),
            "answered": {"id": memory.answered_id, "text": memory.answered_text},
        }
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".memory-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            Path(temp).replace(self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
