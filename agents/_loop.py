"""The agent's main loop: take the next message, think with tools, answer, remember.

One message at a time: long-poll the mesh for the user's next message, copy the
files that came with it into `inbox/` of the workspace, run the model with the
tools for a bounded number of steps, post the final reply. A model call the mesh
refuses becomes a sentence to the user, a file that cannot be fetched becomes a
line in the prompt, and a failure in one turn never stops the loop. A turn the
operator stopped ends at its next model call (the mesh refuses it as "stopped")
and its reply is dropped by the mesh; the loop goes on with the next message.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from agents._client import Attachment, MeshClient, MeshError, MeshRefused, Message
from agents._memory import Memory, MemoryStore
from agents._tools import SCHEMAS, Tools

SOCKET_ENV: Final = "AGENT_MESH_SOCKET"
WORKSPACE_ENV: Final = "AGENT_WORKSPACE"
DEFAULT_SOCKET: Final = "/run/stockade/mesh.sock"
DEFAULT_WORKSPACE: Final = "/workspace"

NEXT_WAIT_S: Final = 20.0
MAX_STEPS: Final = 8
"""Model calls per message; a tool loop that goes on longer is stopped with a note."""
MAX_CALLS_PER_STEP: Final = 8
"""Tool calls run from one model answer; further ones are answered with an error."""
TOOL_RESULT_MAX: Final = 16_000
"""Characters of one tool result that re-enter the prompt."""
_ERROR_PAUSE_S: Final = 1.0

INBOX_DIR: Final = "inbox"
MAX_ATTACHMENT_BYTES: Final = 100_000_000
"""Largest file copied into the workspace; the channels' own limits are far lower."""
MAX_FILE_NAME_BYTES: Final = 120
"""UTF-8 bytes of a saved file's name before any `-N`: well under the 255 filesystems allow."""
MAX_SAME_NAME: Final = 1_000
"""Numbered variants (`name-2.ext` ...) tried before a file is reported as not saved."""
_SUFFIX: Final = re.compile(r"\.[A-Za-z0-9_+-]{1,15}")
_CONTENT_TYPE: Final = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]{0,63}/[A-Za-z0-9][\w!#$&^.+-]{0,63}")
_DEFAULT_NAMES: Final = {"image": "image", "voice": "voice-note"}
_KINDS: Final = {"image": "image", "voice": "voice note"}
_LABELS: Final = {**_KINDS, "voice": "voice note, not transcribed"}

SYSTEM_PROMPT: Final = (
    "You are a helpful assistant. You have a private workspace directory, which is "
    "your current directory and persists between conversations; you can read and "
    "write files there and run shell commands with your tools. You have no network "
    "access. Answer concisely."
)

log = logging.getLogger("agents")


def bounded(text: str, limit: int = TOOL_RESULT_MAX) -> str:
    if len(text) <= limit:
        return text
    note = f"\n[shortened: {len(text) - limit} more characters left out]"
    return text[:limit] + note


def refusal_text(exc: MeshRefused) -> str:
    """The sentence a user reads when the model could not be used."""
    if exc.kind == "budget_exceeded":
        # The gateway wrote this one for the user: which budget, and when it resets.
        return exc.message
    if exc.kind == "stopped":
        # The turn was stopped: the mesh answered it already and drops this reply.
        return "Stopped."
    if exc.kind == "paused":
        return "The operator has paused this assistant."
    if exc.status >= 500:
        return f"I can't reach the model right now: {exc.message}. Please try again later."
    return f"I can't use the model for this: {exc.message}."


# -- attachments -----------------------------------------------------------------------


def _split(name: str) -> tuple[str, str]:
    """(stem, extension with its dot); the extension is empty when there is no plain one."""
    stem, dot, extension = name.rpartition(".")
    suffix = dot + extension
    if stem and _SUFFIX.fullmatch(suffix):
        return stem, suffix
    return name, ""


def _cut(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, never inside a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def safe_file_name(raw: str, kind: str = "file") -> str:
    """A plain name for a file of the workspace made from a sender's file name.

    The gateway sanitized the name already; it is still not trusted as a path. Any
    directory part goes, as do characters that are not printable, leading dots and
    spaces (no hidden files, no `..`) and runs of dots; the result is bounded in
    length and keeps a plain extension. An empty result becomes a name for `kind`.
    """
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(char for char in base if char.isprintable())
    base = re.sub(r"\.{2,}", ".", base).lstrip(". ").rstrip()
    if not base:
        return _DEFAULT_NAMES.get(kind, "file")
    stem, suffix = _split(base)
    stem = _cut(stem, MAX_FILE_NAME_BYTES - len(suffix)).rstrip()
    return (stem or _DEFAULT_NAMES.get(kind, "file")) + suffix


def human_size(size: int) -> str:
    if size < 1_000:
        return "1 byte" if size == 1 else f"{size} bytes"
    if size < 999_500:
        return f"{size / 1_000:.0f} kB"
    return f"{size / 1_000_000:.1f} MB"


def attachment_note(attachment: Attachment, saved_as: str | None, problem: str = "") -> str:
    """The line the model reads about one file: where it is in the workspace, or why not."""
    if saved_as is None:
        name = safe_file_name(attachment.name, attachment.kind)
        kind = _KINDS.get(attachment.kind, "file")
        return f"[attached {kind} {name!r} could not be fetched: {problem}]"
    label = _LABELS.get(attachment.kind, "file")
    content_type = attachment.type.split(";", 1)[0].strip()
    if _CONTENT_TYPE.fullmatch(content_type) is None:
        content_type = "unknown type"
    return f"[attached {label}: {saved_as} ({content_type}, {human_size(attachment.size)})]"


def with_notes(text: str, notes: list[str]) -> str:
    """The user message the model reads: the text, then a line per attached file."""
    if not notes:
        return text
    return "\n\n".join(part for part in (text, "\n".join(notes)) if part)


class Inbox:
    """Files that came with messages, saved under `<workspace>/inbox/` and never over anything.

    Everything in the workspace may have been put there by the model's tools, so no
    path is followed: the directory is opened without following a symlink, and each
    file is created new (`O_EXCL | O_NOFOLLOW`) under a name not yet taken.
    """

    def __init__(self, workspace: Path) -> None:
        self.path = workspace / INBOX_DIR

    def save(self, name: str, data: bytes) -> str:
        """Write `data` under `name`, or `stem-2.ext`, `stem-3.ext` ...; the name used."""
        with contextlib.suppress(FileExistsError):
            self.path.mkdir(mode=0o700)
        directory = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return self._create(directory, name, data)
        finally:
            os.close(directory)

    @staticmethod
    def _create(directory: int, name: str, data: bytes) -> str:
        stem, suffix = _split(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for number in range(1, MAX_SAME_NAME + 1):
            candidate = name if number == 1 else f"{stem}-{number}{suffix}"
            try:
                fd = os.open(candidate, flags, 0o600, dir_fd=directory)
            except FileExistsError:
                continue  # a file, a directory or a planted symlink: none is written through
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            except BaseException:
                os.unlink(candidate, dir_fd=directory)
                raise
            return candidate
        raise FileExistsError(f"{MAX_SAME_NAME} files named like this exist already")


# -- the model's answers ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Step:
    """The assistant message of one model answer, ready to keep in memory."""

    message: dict[str, Any]
    calls: list[dict[str, Any]]
    text: str


def _step(answer: dict[str, Any]) -> _Step:
    """The first choice of an OpenAI chat answer; ValueError when it has no usable shape."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("the answer has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("the answer's choice has no message")
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    calls: list[dict[str, Any]] = []
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise ValueError("a tool call is malformed")
        function = call["function"]
        if not isinstance(call.get("id"), str) or not isinstance(function.get("name"), str):
            raise ValueError("a tool call lacks its id or name")
        arguments = function.get("arguments")
        calls.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": arguments if isinstance(arguments, str) else "{}",
                },
            }
        )
    kept: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        kept["tool_calls"] = calls
    elif not text:
        kept["content"] = ""
    return _Step(kept, calls, text)


class Agent:
    """One user's agent: the loop, its tools and its memory."""

    def __init__(self, client: MeshClient, workspace: Path) -> None:
        self._client = client
        self._tools = Tools(workspace)
        self._memory = MemoryStore(workspace)
        self._inbox = Inbox(workspace)

    def think(self, message: Message) -> str:
        """The final answer to `message`, after up to MAX_STEPS model calls; saves the memory."""
        memory = self._memory.load()
        if memory.answered_id == message.id and memory.answered_text:
            log.info("message %s was answered before a restart; sending that answer", message.id)
            return memory.answered_text
        text = with_notes(message.text, [self._receive(a) for a in message.attachments])
        history = [*memory.messages, {"role": "user", "content": text}]
        answer = ""
        for step in range(MAX_STEPS):
            try:
                reply = self._client.chat(
                    {
                        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, *history],
                        "tools": SCHEMAS,
                    }
                )
            except MeshRefused as exc:
                log.warning("model call %d for %s refused: %s", step + 1, message.id, exc.kind)
                answer = refusal_text(exc)
                break
            except MeshError as exc:
                log.warning("model call %d for %s failed: %s", step + 1, message.id, exc)
                answer = "I can't reach the model right now. Please try again later."
                break
            try:
                result = _step(reply)
            except ValueError as exc:
                log.warning("the model's answer for %s was unusable: %s", message.id, exc)
                answer = "The model gave an answer I could not read. Please try again."
                break
            history.append(result.message)
            if not result.calls:
                answer = result.text or "(The model returned an empty answer.)"
                break
            history.extend(self._run(result.calls))
        else:
            answer = (
                f"I stopped after {MAX_STEPS} steps without a final answer. "
                "Ask me to go on if you want me to continue."
            )
        try:
            self._memory.save(Memory(history, message.id, answer))
        except OSError as exc:
            # The answer was paid for: it goes out, with why it will be forgotten.
            log.warning("the conversation was not saved: %s", errno.errorcode.get(exc.errno or 0))
            answer += "\n\n" + unsaved_note(exc)
        return answer

    def _receive(self, attachment: Attachment) -> str:
        """Fetch one file into the inbox; the note about it for the model, also on failure."""
        if attachment.size > MAX_ATTACHMENT_BYTES:
            limit = human_size(MAX_ATTACHMENT_BYTES)
            return attachment_note(attachment, None, f"it is larger than {limit}")
        try:
            data = self._client.file(attachment)
        except MeshRefused as exc:
            log.warning("attachment %s... refused: %d %s", attachment.id[:12], exc.status, exc.kind)
            problem = "it expired" if exc.status == 410 else exc.message
            return attachment_note(attachment, None, problem)
        except MeshError as exc:
            log.warning("attachment %s... not fetched: %s", attachment.id[:12], exc)
            return attachment_note(attachment, None, str(exc))
        try:
            name = self._inbox.save(safe_file_name(attachment.name, attachment.kind), data)
        except OSError as exc:
            log.warning("attachment %s... not saved: %s", attachment.id[:12], type(exc).__name__)
            problem = f"it could not be saved in {INBOX_DIR}/ ({type(exc).__name__})"
            return attachment_note(attachment, None, problem)
        log.info("saved attachment %s... (%d bytes)", attachment.id[:12], len(data))
        return attachment_note(attachment, f"{INBOX_DIR}/{name}")

    def _run(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One tool message per call, in order; each result is bounded."""
        results = []
        for index, call in enumerate(calls):
            name = call["function"]["name"]
            if index >= MAX_CALLS_PER_STEP:
                output = f"error: at most {MAX_CALLS_PER_STEP} tool calls run at once"
            else:
                started = time.monotonic()
                output = self._tools.call(name, call["function"]["arguments"])
                log.info("tool %s took %.2f s", name[:40], time.monotonic() - started)
            results.append({"role": "tool", "tool_call_id": call["id"], "content": bounded(output)})
        return results

    def handle(self, message: Message) -> None:
        """Answer one message; any failure becomes a short final reply, so the turn ends."""
        started = time.monotonic()
        try:
            answer = self.think(message)
        except Exception as exc:  # the per-message boundary: answer, log, go on
            log.error("turn %s failed: %s", message.id, type(exc).__name__, exc_info=True)
            answer = (
                f"Something went wrong in my workspace ({type(exc).__name__}). Please try again."
            )
        delivered = self._client.reply(message.id, answer, final=True)
        log.info(
            "answered %s in %.2f s%s",
            message.id,
            time.monotonic() - started,
            "" if delivered else " (the mesh had already finished it)",
        )

    def serve(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Take and answer messages until `should_stop` says so."""
        while not should_stop():
            try:
                message = self._client.next(NEXT_WAIT_S)
                if message is not None:
                    self.handle(message)
            except MeshError as exc:
                log.warning("the mesh failed: %s", exc)
                time.sleep(_ERROR_PAUSE_S)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # As PID 1 in a container, SIGTERM is ignored unless handled.
    raise SystemExit(0)


_PR_SET_DUMPABLE = 4


def unsaved_note(error: OSError) -> str:
    """What the user is told when their conversation could not be saved."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            "(My workspace is full, so I will not remember this conversation. Delete "
            "files there, or ask an operator for more room.)"
        )
    name = errno.errorcode.get(error.errno or 0, type(error).__name__)
    return f"(I could not save this conversation ({name}), so I will not remember it.)"


def _undumpable() -> None:
    """Keep the other processes of this container (the tools' commands, which run as the
    same user) from ptrace-attaching to the runtime or reading its /proc/<pid>/mem."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_DUMPABLE) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        log.warning("cannot make the runtime undumpable: %s", exc)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    signal.signal(signal.SIGTERM, _terminate)
    _undumpable()
    socket_path = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    workspace = Path(os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE)
    if not workspace.is_dir():
        log.error("the workspace %s is not a directory", workspace)
        return 2
    log.info("agent runtime started; mesh at %s, workspace %s", socket_path, workspace)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        Agent(MeshClient(socket_path), workspace).serve()
    log.info("agent runtime stopped")
    return 0
