"""`stockade up` and `stockade chat` as separate processes, talking through the private Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.bus import agent_stream
from tests.services import require

REPO = Path(__file__).resolve().parents[1]


def environment(data_dir: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCKADE_")}
    return {**base, "STOCKADE_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}


@pytest.fixture
def gateway_up() -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    require("redis-server", "redis-server")
    # Short path: the private Redis socket lives in here.
    with tempfile.TemporaryDirectory(prefix="stk-e2e-", dir="/tmp") as tmp:
        data_dir = Path(tmp)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "up"],
            env=environment(data_dir),
            stderr=subprocess.PIPE,
            text=True,
        )
        sock = data_dir / "redis" / "redis.sock"
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "stockade up did not start its Redis"
            time.sleep(0.05)
        try:
            yield data_dir, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


def chat(data_dir: Path, lines: str, user: str = "ada") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "chat", "--user", user],
        input=lines,
        capture_output=True,
        text=True,
        env=environment(data_dir),
        timeout=60,
    )


def test_chat_gets_command_answers_and_queues_other_messages(
    gateway_up: tuple[Path, subprocess.Popen[str]],
) -> None:
    data_dir, _ = gateway_up
    result = chat(data_dir, "/help\nhello agent\n/whoami\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "« Commands:" in out
    assert "queued for your agent" in out
    assert "on console" in out  # /whoami
    user_id = out.split("You are ", 1)[1].split(":", 1)[0]

    client = redis.Redis(unix_socket_path=str(data_dir / "redis" / "redis.sock"))
    try:
        queued = client.xrange(agent_stream(user_id))
        assert [entry[b"text"] for _, entry in queued] == [b"hello agent"]
    finally:
        client.close()


def test_two_chats_see_only_their_own_replies(
    gateway_up: tuple[Path, subprocess.Popen[str]],
) -> None:
    data_dir, _ = gateway_up
    first = chat(data_dir, "/whoami\n", user="ada")
    second = chat(data_dir, "/whoami\n", user="grace")
    assert "ada on console" in first.stdout and "grace" not in first.stdout
    assert "grace on console" in second.stdout and "ada" not in second.stdout


def test_hostile_input_is_sanitized_before_it_is_stored(
    gateway_up: tuple[Path, subprocess.Popen[str]],
) -> None:
    data_dir, _ = gateway_up
    result = chat(data_dir, "hi\u202e\U000e0069\U000e0067\x1b]0;pwn\x07 there\n")
    assert result.returncode == 0, result.stderr
    client = redis.Redis(unix_socket_path=str(data_dir / "redis" / "redis.sock"))
    try:
        stored = [
            fields[b"text"].decode()
            for stream in client.scan_iter(match="stockade:agent:*")
            for _, fields in client.xrange(stream)
        ]
    finally:
        client.close()
    assert len(stored) == 1
    assert "\u202e" not in stored[0] and "\x1b" not in stored[0] and "\U000e0069" not in stored[0]


def test_up_stops_cleanly_and_takes_its_redis_with_it(
    gateway_up: tuple[Path, subprocess.Popen[str]],
) -> None:
    data_dir, proc = gateway_up
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not (data_dir / "redis" / "redis.sock").exists()
    assert (data_dir / "redis" / "appendonlydir").is_dir()
