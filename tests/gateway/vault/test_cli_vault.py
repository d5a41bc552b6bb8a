"""`stockade vault` as an operator runs it: real processes, values on stdin or a terminal,
nothing secret in any output."""

from __future__ import annotations

import base64
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.settings import Settings
from gateway.vault import Vault
from tests.gateway.vault.conftest import assert_absent, environment, stockade


def opened(data_dir: Path) -> Vault:
    return Vault.from_settings(Settings(data_dir=data_dir))


def test_set_list_rotate_rm_end_to_end(tmp_path: Path, canary: str) -> None:
    added = stockade(tmp_path, "vault", "set", "openai", stdin=f"{canary}\n")
    assert added.returncode == 0, added.stderr
    assert "added secret 'openai'" in added.stdout
    assert "created the vault master key" in added.stderr
    assert opened(tmp_path).get("openai") == canary

    rotated = stockade(tmp_path, "vault", "rotate", "openai", stdin=canary + "-2")
    assert rotated.returncode == 0, rotated.stderr
    assert opened(tmp_path).get("openai") == canary + "-2"

    replaced = stockade(tmp_path, "vault", "set", "openai", stdin=canary + "-3")
    assert "replaced secret 'openai'" in replaced.stdout
    assert "created" not in replaced.stderr
    assert stockade(tmp_path, "vault", "set", "anthropic", stdin=canary).returncode == 0

    listed = stockade(tmp_path, "vault", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "AGE", "ROTATED"]
    assert [line.split()[0] for line in lines[1:]] == ["anthropic", "openai"]
    assert lines[1].split()[-1] == "never"
    assert lines[2].split()[-1] != "never"

    removed = stockade(tmp_path, "vault", "rm", "openai")
    assert removed.returncode == 0, removed.stderr
    assert "openai" not in opened(tmp_path)
    assert "anthropic" in opened(tmp_path)

    key = (tmp_path / "vault" / "master.key").read_bytes()
    outputs = [r.stdout + r.stderr for r in (added, rotated, replaced, listed, removed)]
    for output in outputs:
        assert_absent(canary, output)
        assert_absent(key.strip(), output)
        assert_absent(base64.b64decode(key), output)
        assert "Traceback" not in output
    assert_absent(canary, (tmp_path / "vault" / "secrets.json").read_bytes())


def test_list_of_an_empty_vault_says_so(tmp_path: Path) -> None:
    Vault.from_settings(Settings(data_dir=tmp_path), create_key=True)
    result = stockade(tmp_path, "vault", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no secrets in ")


@pytest.mark.parametrize("action", ["set", "rotate"])
def test_a_value_on_the_command_line_is_refused_and_not_echoed(
    tmp_path: Path, canary: str, action: str
) -> None:
    for extra in ([canary], [f"--{canary}"], ["--", canary], [canary, "more"]):
        result = stockade(tmp_path, "vault", action, "openai", *extra, stdin="from-stdin")
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"stockade: vault {action} takes NAME only")
        assert_absent(canary, result.stdout + result.stderr)
    assert not (tmp_path / "vault").exists()


def test_set_without_a_value_changes_nothing(tmp_path: Path) -> None:
    result = stockade(tmp_path, "vault", "set", "openai", stdin="  \n")
    assert result.returncode == 1
    assert result.stderr == "stockade: the secret value is empty\n"
    assert not (tmp_path / "vault").exists()  # not even a key file


def test_set_refuses_a_value_that_is_not_utf8(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "vault", "set", "openai"],
        input=b"sk-\xff\xfe",
        capture_output=True,
        env=environment(tmp_path),
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == b"stockade: the value on stdin is not UTF-8 text; nothing was changed\n"
    assert not (tmp_path / "vault").exists()


def test_rotate_and_rm_of_a_missing_secret_fail_with_one_line(tmp_path: Path) -> None:
    Vault.from_settings(Settings(data_dir=tmp_path), create_key=True).set("other", "x")
    for args in (("rotate", "openai"), ("rm", "openai")):
        result = stockade(tmp_path, "vault", *args, stdin="sk-1")
        assert result.returncode == 1
        assert result.stderr == (
            "stockade: no secret 'openai' in the vault; add it with: stockade vault set openai\n"
        )


def test_an_invalid_name_is_refused_before_anything_is_read(tmp_path: Path, canary: str) -> None:
    result = stockade(tmp_path, "vault", "set", canary * 3, stdin="sk-1")
    assert result.returncode == 1
    assert result.stderr.startswith("stockade: invalid secret name")
    assert_absent(canary, result.stdout + result.stderr)
    assert not (tmp_path / "vault").exists()


def test_a_key_file_others_can_read_stops_every_action(tmp_path: Path) -> None:
    assert stockade(tmp_path, "vault", "set", "openai", stdin="sk-1").returncode == 0
    key_file = tmp_path / "vault" / "master.key"
    key_file.chmod(0o644)
    for args in (("list",), ("set", "b"), ("rotate", "openai"), ("rm", "openai")):
        result = stockade(tmp_path, "vault", *args, stdin="sk-2")
        assert result.returncode == 1
        assert result.stderr == (
            f"stockade: {key_file}: permissions 0644 are too open, the master key must be "
            f"readable by its owner only; run: chmod 600 {key_file}\n"
        )
    assert opened_after_fix(key_file, tmp_path) == "sk-1"


def opened_after_fix(key_file: Path, data_dir: Path) -> str:
    key_file.chmod(0o600)
    return opened(data_dir).get("openai")


def test_a_different_key_from_the_environment_cannot_write(tmp_path: Path) -> None:
    assert stockade(tmp_path, "vault", "set", "openai", stdin="sk-1").returncode == 0
    other = base64.b64encode(os.urandom(32)).decode()
    result = stockade(
        tmp_path, "vault", "set", "b", stdin="sk-2", env={"STOCKADE_VAULT__KEY": other}
    )
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert "master key does not open" in result.stderr
    assert other not in result.stderr
    assert "b" not in opened(tmp_path)


def test_a_corrupt_store_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    assert stockade(tmp_path, "vault", "set", "openai", stdin="sk-1").returncode == 0
    (tmp_path / "vault" / "secrets.json").write_text("{garbage")
    result = stockade(tmp_path, "vault", "list")
    assert result.returncode == 1
    assert (
        result.stderr
        == f"stockade: {tmp_path / 'vault' / 'secrets.json'}: not a vault store (not JSON)\n"
    )


def run_on_terminal(data_dir: Path, args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run `stockade` with a pseudo-terminal as its controlling terminal, answering each
    prompt in turn; return its exit status and everything it wrote to the terminal."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.execve(
            sys.executable, [sys.executable, "-m", "gateway.cli", *args], environment(data_dir)
        )
    seen = b""
    answered_at = 0  # only text after the last answer may hold the next prompt
    pending = list(answers)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            fresh = seen[answered_at:]
            if pending and fresh.strip() and fresh.rstrip().endswith(b":"):
                os.write(fd, pending.pop(0).encode() + b"\n")
                answered_at = len(seen)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_a_terminal_is_asked_twice_without_echo(tmp_path: Path, canary: str) -> None:
    status, output = run_on_terminal(tmp_path, ["vault", "set", "openai"], [canary, canary])
    assert status == 0, output
    assert "value of openai:" in output
    assert "value of openai again:" in output
    assert "added secret 'openai'" in output
    assert_absent(canary, output)
    assert opened(tmp_path).get("openai") == canary


def test_two_different_answers_on_a_terminal_change_nothing(tmp_path: Path, canary: str) -> None:
    status, output = run_on_terminal(tmp_path, ["vault", "set", "openai"], [canary, canary + "x"])
    assert status == 1, output
    assert "the two values differ; nothing was changed" in output
    assert_absent(canary, output)
    assert not (tmp_path / "vault").exists()
