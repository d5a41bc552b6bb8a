"""The agent's tools in-process: workspace confinement, size limits, the shell's timeout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agents._loop import bounded
from agents._tools import OUTPUT_HEAD, OUTPUT_TAIL, READ_MAX, WRITE_MAX, ToolError, Tools, run_shell


@pytest.fixture
def tools(tmp_path: Path) -> Tools:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return Tools(workspace)


def call(tools: Tools, name: str, **args: object) -> str:
    return tools.call(name, json.dumps(args))


@pytest.mark.parametrize(
    "path", ["../x", "../../etc/passwd", "/etc/passwd", "a/../../x", "", "a\x00b"]
)
def test_paths_that_leave_the_workspace_are_refused(tools: Tools, path: str) -> None:
    with pytest.raises(ToolError):
        tools.resolve(path)


def test_symlinks_are_followed_before_the_check(tools: Tools, tmp_path: Path) -> None:
    (tools.root / "inside.txt").write_text("fine")
    (tools.root / "ok").symlink_to(tools.root / "inside.txt")
    (tools.root / "escape").symlink_to(tmp_path)
    (tools.root / "dangling").symlink_to(tmp_path / "nothing-yet")

    assert tools.resolve("ok") == tools.root / "inside.txt"
    assert tools.resolve("escape/ws/inside.txt") == tools.root / "inside.txt"  # back inside
    for path in ("escape", "escape/other.txt", "dangling"):
        with pytest.raises(ToolError, match="outside the workspace"):
            tools.resolve(path)
    assert call(tools, "write_file", path="dangling", content="x").startswith("error:")
    assert not (tmp_path / "nothing-yet").exists()


def test_the_runtimes_own_directory_is_off_limits(tools: Tools) -> None:
    for path in (".stockade/memory.json", ".stockade", "a/../.stockade/x"):
        with pytest.raises(ToolError, match="reserved"):
            tools.resolve(path)


def test_write_then_read(tools: Tools) -> None:
    assert (
        call(tools, "write_file", path="d/e/f.txt", content="héllo") == "wrote 6 bytes to d/e/f.txt"
    )
    assert call(tools, "write_file", path="d/e/f.txt", content="!", append=True).startswith(
        "appended 1 bytes"
    )
    assert call(tools, "read_file", path="d/e/f.txt") == "héllo!"


def test_reads_and_writes_are_size_limited(tools: Tools) -> None:
    (tools.root / "big").write_bytes(b"a" * (READ_MAX + 10))
    text = call(tools, "read_file", path="big")
    assert text.startswith("a" * 100)
    assert f"only the first {READ_MAX}" in text
    assert "at most" in call(tools, "write_file", path="x", content="a" * (WRITE_MAX + 1))
    assert not (tools.root / "x").exists()


def test_reading_something_that_is_not_a_regular_file_fails_fast(tools: Tools) -> None:
    os.mkfifo(tools.root / "fifo")
    (tools.root / "dir").mkdir()
    started = time.monotonic()
    assert "not a regular file" in call(tools, "read_file", path="fifo")
    assert "directory" in call(tools, "read_file", path="dir")
    assert "no file" in call(tools, "read_file", path="missing")
    assert time.monotonic() - started < 1


def test_bad_calls_become_errors_for_the_model(tools: Tools) -> None:
    assert tools.call("rm_rf", "{}").startswith("error: there is no tool")
    assert tools.call("shell", "{not json").startswith("error:")
    assert tools.call("shell", "[1]").startswith("error:")
    assert "'command'" in call(tools, "shell", command=5)
    assert "timeout" in call(tools, "shell", command="true", timeout=-1)
    assert "append" in call(tools, "write_file", path="a", content="b", append="yes")


def test_shell_reports_exit_code_and_both_streams(tools: Tools) -> None:
    result = call(tools, "shell", command="echo out; echo err >&2; pwd; exit 4")
    assert result.startswith("exit code: 4")
    assert "out" in result
    assert "err" in result
    assert str(tools.root) in result


def test_shell_output_keeps_head_and_tail(tmp_path: Path) -> None:
    result = run_shell(
        "printf 'HEAD'; head -c 100000 /dev/zero | tr '\\0' x; printf 'TAIL'", tmp_path, 10
    )
    assert "HEAD" in result
    assert "TAIL" in result
    assert "bytes of output left out" in result
    assert len(result) < OUTPUT_HEAD + OUTPUT_TAIL + 200


def test_shell_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_shell("sleep 30 & echo $! > pid; sleep 30", tmp_path, 0.5)
    assert time.monotonic() - started < 3
    assert result.startswith("timed out after 0.5 s")
    pid = int((tmp_path / "pid").read_text())
    _assert_gone(pid)


def test_background_processes_stop_when_the_command_returns(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_shell("sleep 30 & echo $! > pid; echo done", tmp_path, 10)
    assert time.monotonic() - started < 3
    assert result.startswith("exit code: 0")
    _assert_gone(int((tmp_path / "pid").read_text()))


def _assert_gone(pid: int) -> None:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.02)
    pytest.fail(f"process {pid} is still running")


def test_tool_results_entering_the_prompt_are_bounded() -> None:
    assert bounded("short") == "short"
    long = bounded("y" * 50_000)
    assert long.startswith("y" * 1000)
    assert len(long) < 16_100
    assert "shortened" in long


def test_background_processes_without_output_are_stopped_too(tmp_path: Path) -> None:
    result = run_shell("sleep 30 >/dev/null 2>&1 & echo $! > pid", tmp_path, 10)
    assert result.startswith("exit code: 0")
    _assert_gone(int((tmp_path / "pid").read_text()))
