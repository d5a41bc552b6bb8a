"""The agent's conversation memory: bounded, atomic, and robust to a damaged file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents._memory import MAX_CHARS, MAX_MESSAGES, Memory, MemoryStore, trimmed


def turn(n: int, size: int = 10) -> list[dict[str, Any]]:
    call = {"id": f"c{n}", "type": "function", "function": {"name": "shell", "arguments": "{}"}}
    return [
        {"role": "user", "content": f"question {n}"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{n}", "content": "x" * size},
        {"role": "assistant", "content": f"answer {n}"},
    ]


def test_trimming_keeps_the_newest_whole_turns() -> None:
    messages = [m for n in range(40) for m in turn(n)]
    kept = trimmed(messages)
    assert len(kept) <= MAX_MESSAGES
    assert kept[0] == {"role": "user", "content": "question 25"}
    assert kept[-1] == {"role": "assistant", "content": "answer 39"}


def test_trimming_bounds_the_characters() -> None:
    messages = [m for n in range(10) for m in turn(n, size=MAX_CHARS // 4)]
    kept = trimmed(messages)
    assert sum(len(str(m)) for m in kept) < MAX_CHARS * 1.1
    assert kept[0]["role"] == "user"
    assert kept[-1] == {"role": "assistant", "content": "answer 9"}


def test_save_and_load_round_trip_without_leftovers(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    store.save(Memory(turn(1), "1-0", "answer 1"))
    store.save(Memory(turn(1) + turn(2), "2-0", "answer 2"))

    loaded = store.load()

    assert loaded.messages == turn(1) + turn(2)
    assert (loaded.answered_id, loaded.answered_text) == ("2-0", "answer 2")
    assert sorted(p.name for p in store.directory.iterdir()) == ["memory.json"]


def test_a_damaged_file_is_moved_aside_and_memory_starts_fresh(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    store.directory.mkdir()
    for damaged in (b"{half", b"\xff", b"[]", b'{"version": 1, "messages": [1]}'):
        store.path.write_bytes(damaged)
        assert store.load() == Memory()
        assert store.path.with_name("memory.json.bad").read_bytes() == damaged
        assert not store.path.exists()


def test_no_file_is_an_empty_memory(tmp_path: Path) -> None:
    assert MemoryStore(tmp_path).load() == Memory()
