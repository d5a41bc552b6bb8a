"""The agent's tools: a shell and file access, confined to its workspace, with their schemas.

The container is the real sandbox. These limits keep the agent well-behaved
inside it: paths stay in the workspace (symlinks included), commands end within a
timeout together with everything they started, and what re-enters the prompt is
bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

SHELL: Final = "/bin/sh"
SHELL_TIMEOUT_S: Final = 30.0
SHELL_TIMEOUT_MAX_S: Final = 300.0
OUTPUT_HEAD: Final = 8 * 1024
OUTPUT_TAIL: Final = 8 * 1024
"""Bytes of command output kept: the start and the end, where errors usually are."""
_DRAIN_S: Final = 1.0
"""After a command ends, how long to keep reading output something else holds open."""
READ_MAX: Final = 64 * 1024
WRITE_MAX: Final = 1024 * 1024
PROTECTED: Final = ".stockade"
"""The runtime's own directory in the workspace (the memory); tools may not touch it."""


class ToolError(Exception):
    """A tool call that cannot be carried out; its message is shown to the model."""


SCHEMAS: Final[list[dict[str, Any]]] = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": (
                "Run a command with /bin/sh in the workspace and return its exit code and "
                "output (stdout and stderr together, shortened when long). There is no "
                "network. Background processes are stopped when the command returns."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The shell command line."},
                    "timeout": {
                        "type": "number",
                        "description": (
                            f"Seconds before the command is killed (default {SHELL_TIMEOUT_S:g}, "
                            f"at most {SHELL_TIMEOUT_MAX_S:g})."
                        ),
                    },
                },
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": (
                f"Read a text file from the workspace (the first {READ_MAX // 1024} KB)."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Path relative to the workspace."}
                },
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": (
                "Write a text file in the workspace, creating its directories; replaces the "
                f"file unless append is true. At most {WRITE_MAX // 1024} KB."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Path relative to the workspace."},
                    "content": {"type": "string"},
                    "append": {"type": "boolean", "description": "Add to the end of the file."},
                },
                "required": ["path", "content"],
            },
        },
    },
]


class _Capture:
    """The head and tail of a byte stream, and how long it was."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = OUTPUT_HEAD - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            del self.tail[:-OUTPUT_TAIL]

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        if self.total <= OUTPUT_HEAD + OUTPUT_TAIL:
            return head + self.tail.decode("utf-8", "replace")
        skipped = self.total - len(self.head) - len(self.tail)
        return (
            f"{head}\n[... {skipped} bytes of output left out ...]\n"
            f"{self.tail.decode('utf-8', 'replace')}"
        )


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, signal.SIGKILL)


def run_shell(command: str, cwd: Path, timeout_s: float) -> str:
    """Run `command`; its output and exit code, or a note that it was killed at the timeout."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [SHELL, "-c", command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Its own process group, so a timeout kills everything the command started.
        start_new_session=True,
    )
    capture = _Capture()
    kill_at = started + timeout_s
    timed_out = False
    stop_reading_at: float | None = None
    assert proc.stdout is not None
    with proc, selectors.DefaultSelector() as selector:
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                if stop_reading_at is None:
                    if proc.poll() is not None:
                        _kill_group(proc.pid)  # what it left running in the background
                        stop_reading_at = now + _DRAIN_S
                    elif now >= kill_at:
                        _kill_group(proc.pid)
                        timed_out = True
                        proc.wait()
                        stop_reading_at = now + _DRAIN_S
                elif now >= stop_reading_at:
                    break  # something outside the group holds the pipe open
                horizon = stop_reading_at if stop_reading_at is not None else kill_at
                if not selector.select(timeout=max(0.0, min(0.2, horizon - now))):
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                capture.add(chunk)
        finally:
            # Also on the way out of a signal (SIGTERM) and after a clean end: background
            # processes that closed their output would otherwise outlive the command.
            _kill_group(proc.pid)
    code = proc.wait()
    took = time.monotonic() - started
    output = capture.text() or "(no output)"
    if timed_out:
        return (
            f"timed out after {timeout_s:g} s: the command and everything it started were "
            f"killed\noutput so far:\n{output}"
        )
    return f"exit code: {code} ({took:.1f} s)\noutput:\n{output}"


class Tools:
    """The tools of one workspace, called by name with the model's JSON arguments."""

    def __init__(self, workspace: Path) -> None:
        self.root = Path(os.path.realpath(workspace))
        self._tools: dict[str, Callable[[dict[str, Any]], str]] = {
            "shell": self._shell,
            "read_file": self._read_file,
            "write_file": self._write_file,
        }

    def call(self, name: str, arguments: str) -> str:
        """The tool's result, or "error: ..." for the model to read; never raises ToolError."""
        tool = self._tools.get(name)
        if tool is None:
            return (
                f"error: there is no tool named {name[:80]!r}; use one of {', '.join(self._tools)}"
            )
        try:
            args = json.loads(arguments or "{}")
        except (ValueError, RecursionError):
            return "error: the arguments are not valid JSON"
        if not isinstance(args, dict):
            return "error: the arguments must be a JSON object"
        try:
            return tool(args)
        except ToolError as exc:
            return f"error: {exc}"

    def resolve(self, raw: str) -> Path:
        """The real path `raw` names inside the workspace; ToolError if it leads out of it."""
        if not raw or "\x00" in raw:
            raise ToolError("a path must be a non-empty string without NUL characters")
        # realpath follows every symlink, also a dangling last one, so a link whose
        # target lies outside resolves to that outside target and is refused.
        real = Path(os.path.realpath(self.root / raw))
        if real != self.root and self.root not in real.parents:
            raise ToolError(f"the path {raw[:200]!r} is outside the workspace")
        relative = real.relative_to(self.root)
        if relative.parts and relative.parts[0] == PROTECTED:
            raise ToolError(f"the path {raw[:200]!r} is reserved for the agent runtime")
        return real

    @staticmethod
    def _string(args: dict[str, Any], name: str) -> str:
        value = args.get(name)
        if not isinstance(value, str):
            raise ToolError(f"the argument {name!r} must be a string")
        return value

    def _shell(self, args: dict[str, Any]) -> str:
        command = self._string(args, "command")
        timeout = args.get("timeout", SHELL_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ToolError("the argument 'timeout' must be a positive number of seconds")
        try:
            return run_shell(command, self.root, min(float(timeout), SHELL_TIMEOUT_MAX_S))
        except OSError as exc:
            raise ToolError(f"the command could not be started: {exc.strerror}") from None

    def _read_file(self, args: dict[str, Any]) -> str:
        raw = self._string(args, "path")
        path = self.resolve(raw)
        try:
            # O_NOFOLLOW: the path was resolved; a link swapped in since is refused.
            # O_NONBLOCK: opening a FIFO must not hang the agent.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ToolError(f"there is no file {raw[:200]!r}") from None
        except OSError as exc:
            raise ToolError(f"cannot open {raw[:200]!r}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ToolError(f"{raw[:200]!r} is a directory; list it with the shell tool")
            if not stat.S_ISREG(info.st_mode):
                raise ToolError(f"{raw[:200]!r} is not a regular file")
            data = b""
            while len(data) <= READ_MAX:
                chunk = os.read(fd, READ_MAX + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        text = data[:READ_MAX].decode("utf-8", "replace")
        if len(data) > READ_MAX:
            text += f"\n[file shortened: only the first {READ_MAX} of {info.st_size} bytes]"
        return text

    def _write_file(self, args: dict[str, Any]) -> str:
        raw = self._string(args, "path")
        content = self._string(args, "content")
        append = args.get("append", False)
        if not isinstance(append, bool):
            raise ToolError("the argument 'append' must be true or false")
        data = content.encode("utf-8", "replace")
        if len(data) > WRITE_MAX:
            raise ToolError(f"the content is {len(data)} bytes; at most {WRITE_MAX} may be written")
        path = self.resolve(raw)
        if path == self.root:
            raise ToolError("the path names the workspace itself, not a file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise ToolError(f"cannot write {raw[:200]!r}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ToolError(f"{raw[:200]!r} is not a regular file")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise ToolError(f"cannot write {raw[:200]!r}: {exc.strerror}") from None
        finally:
            os.close(fd)
        verb = "appended" if append else "wrote"
        return f"{verb} {len(data)} bytes to {path.relative_to(self.root)}"
