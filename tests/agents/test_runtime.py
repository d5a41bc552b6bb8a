"""The agent runtime end to end: a real `python -m agents` talking to the real mesh."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from agents._memory import MEMORY_DIR
from tests.agents.conftest import KEY, USER, Stack
from tests.fakes.model_server import Failure, Text, ToolCall, ToolCalls


def tool_results(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def process_gone(pid: int) -> bool:
    """Gone, or a zombie waiting for whatever reaps orphans here."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rsplit(")", 1)[1].split()[0] == "Z"


async def test_a_plain_answer_makes_the_round_trip(stack: Stack) -> None:
    stack.model.push(Text("Hello, Alice!"))
    await stack.start_runtime()
    sent = await stack.send("hi there")

    reply = await stack.reply()

    assert reply.text == "Hello, Alice!"
    assert reply.conversation_id == sent.conversation_id
    assert reply.thread_id == sent.thread_id
    assert reply.user_id == USER
    assert await stack.pending() == 0
    (received,) = stack.model.requests
    assert received.authorization == f"Bearer {KEY}"
    messages = received.body["messages"]
    assert messages[0]["role"] == "system"
    assert "workspace" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "hi there"}
    assert {t["function"]["name"] for t in received.body["tools"]} == {
        "shell",
        "read_file",
        "write_file",
    }


async def test_a_tool_round_trip_writes_a_file_and_reads_it_back(stack: Stack) -> None:
    stack.model.push(
        ToolCalls([ToolCall("write_file", {"path": "notes/a.txt", "content": "alpha beta\n"})]),
        ToolCalls([ToolCall("shell", {"command": "cat notes/a.txt; echo oops >&2; exit 3"})]),
        Text("The file says alpha beta."),
    )
    await stack.start_runtime()
    await stack.send("write a note and show it to me")

    reply = await stack.reply()

    assert reply.text == "The file says alpha beta."
    assert (stack.workspace / "notes" / "a.txt").read_text() == "alpha beta\n"
    assert len(stack.model.requests) == 3
    wrote, shown = tool_results(stack.last_request())
    assert wrote == "wrote 11 bytes to notes/a.txt"
    assert shown.startswith("exit code: 3")
    assert "alpha beta" in shown
    assert "oops" in shown


async def test_memory_persists_across_a_restart_of_the_runtime(stack: Stack) -> None:
    stack.model.push(Text("Noted: 42."))
    first = await stack.start_runtime()
    await stack.send("remember the number 42")
    assert (await stack.reply()).text == "Noted: 42."

    assert await stack.stop_runtime(first) == 0  # SIGTERM ends it cleanly
    assert (stack.workspace / ".stockade" / "memory.json").is_file()

    stack.model.push(Text("It was 42."))
    await stack.start_runtime()
    await stack.send("what number was it?")
    assert (await stack.reply()).text == "It was 42."

    contents = [m.get("content") for m in stack.last_request()["messages"]]
    assert contents[1:] == [
        "remember the number 42",
        "Noted: 42.",
        "what number was it?",
    ]


async def test_a_full_workspace_still_gets_the_answer_and_says_it_is_not_remembered(
    stack: Stack,
) -> None:
    memory_dir = stack.workspace / MEMORY_DIR
    memory_dir.mkdir()
    # A filesystem of its own, full to the last block, as a workspace at its size is.
    await _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(memory_dir))
    try:
        _fill(memory_dir / "hoard")
        stack.model.push(Text("Here is your answer."))
        await stack.start_runtime()
        await stack.send("a question")

        reply = await stack.reply()
    finally:
        await _run("umount", "-l", str(memory_dir))

    assert reply.text.startswith("Here is your answer.\n\n(My workspace is full")
    assert "will not remember" in reply.text
    assert await stack.pending() == 0


def _fill(path: Path) -> None:
    """Write `path` until its filesystem has no block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv)
    assert await proc.wait() == 0, argv


async def test_paths_out_of_the_workspace_are_refused_and_reported(
    stack: Stack, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the outside secret")
    (stack.workspace / "out").symlink_to(outside)
    (stack.workspace / "link.txt").symlink_to(outside / "secret.txt")
    stack.model.push(
        ToolCalls(
            [
                ToolCall("read_file", {"path": "../../etc/passwd"}),
                ToolCall("read_file", {"path": "/etc/passwd"}),
                ToolCall("read_file", {"path": "out/secret.txt"}),
                ToolCall("read_file", {"path": "link.txt"}),
                ToolCall("write_file", {"path": "out/pwned.txt", "content": "x"}),
                ToolCall("write_file", {"path": "../pwned.txt", "content": "x"}),
                ToolCall("write_file", {"path": ".stockade/memory.json", "content": "{}"}),
            ]
        ),
        Text("I may not go there."),
    )
    await stack.start_runtime()
    await stack.send("show me /etc/passwd")

    assert (await stack.reply()).text == "I may not go there."

    results = tool_results(stack.last_request())
    assert len(results) == 7
    for result in results[:6]:
        assert result.startswith("error:")
        assert "outside the workspace" in result
    assert "reserved" in results[6]
    assert not (outside / "pwned.txt").exists()
    assert not (stack.workspace.parent / "pwned.txt").exists()
    assert "the outside secret" not in json.dumps(stack.last_request())
    assert "root:" not in json.dumps(stack.last_request())


async def test_a_shell_command_past_its_timeout_is_killed_with_its_children(
    stack: Stack,
) -> None:
    command = "echo started; (sleep 60; echo late > late.txt) & echo $! > bg.pid; sleep 60"
    stack.model.push(
        ToolCalls([ToolCall("shell", {"command": command, "timeout": 1})]), Text("It hung.")
    )
    await stack.start_runtime()
    started = time.monotonic()
    await stack.send("run the slow thing")

    assert (await stack.reply()).text == "It hung."
    assert time.monotonic() - started < 10

    (result,) = tool_results(stack.last_request())
    assert result.startswith("timed out after 1 s")
    assert "started" in result
    background = int((stack.workspace / "bg.pid").read_text())
    assert process_gone(background)


async def test_a_provider_failure_becomes_a_readable_reply_and_the_loop_goes_on(
    stack: Stack,
) -> None:
    stack.model.push(Failure(500, f"internal error for key {KEY}"))
    await stack.start_runtime()
    await stack.send("hello?")

    failed = await stack.reply()
    assert failed.text.startswith("I can't reach the model right now")
    assert "status 500" in failed.text
    assert KEY not in failed.text
    assert await stack.pending() == 0

    stack.model.push(Text("I'm back."))
    await stack.send("hello again")
    assert (await stack.reply()).text == "I'm back."


async def test_the_runtime_waits_for_a_mesh_that_is_not_there_yet(stack: Stack) -> None:
    await stack.mesh.close(USER)
    stack.model.push(Text("Made it."))
    await stack.start_runtime()
    await asyncio.sleep(0.5)  # the runtime retries a missing socket meanwhile

    await stack.mesh.open(USER)
    await stack.send("are you there?")

    assert (await stack.reply()).text == "Made it."
    assert "unreachable" in stack.log_text()
