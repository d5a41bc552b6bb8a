"""The `stockade` command as a user runs it: real processes, real exit codes, real output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def stockade(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCKADE_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**base, **(env or {}), "PYTHONPATH": str(REPO)},
        cwd=cwd or REPO,
        timeout=60,
    )


def test_help_lists_the_commands() -> None:
    result = stockade("--help")
    assert result.returncode == 0
    for command in (
        "init", "up", "run", "chat", "config", "image", "vault", "usage",
        "pair", "link", "audit", "status",
    ):  # fmt: skip
        assert command in result.stdout


def test_init_writes_a_starter_file_that_config_accepts(tmp_path: Path) -> None:
    target = tmp_path / "stockade.toml"
    assert stockade("init", str(target)).returncode == 0
    result = stockade("--config", str(target), "config")
    assert result.returncode == 0, result.stderr
    assert '"max_deliveries": 5' in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[bus]\nmax_deliveries = 'lots'\n", "bus.max_deliveries: Input should be a valid integer"),
        ("[bus]\nfrobnicate = 1\n", "bus.frobnicate: unknown key"),
        ("[channels.telegram]\nenabled = true\n", "channels.telegram.token: required"),
        ("[[[", "not valid TOML"),
    ],
)
def test_a_bad_file_stops_with_one_line_and_status_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "stockade.toml"
    path.write_text(text)
    result = stockade("--config", str(path), "up")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"stockade: {path}: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_a_bad_environment_override_stops_with_status_2() -> None:
    result = stockade("config", env={"STOCKADE_BUS__BATCH": "-1"})
    assert result.returncode == 2
    assert result.stderr.startswith("stockade: environment STOCKADE_BUS__BATCH: bus.batch:")


def test_config_never_prints_a_secret() -> None:
    result = stockade(
        "config",
        env={
            "STOCKADE_CHANNELS__DISCORD__ENABLED": "true",
            "STOCKADE_CHANNELS__DISCORD__TOKEN": "canary-d1sc0rd",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "canary-d1sc0rd" not in result.stdout + result.stderr


def test_chat_without_a_running_gateway_says_how_to_start_it(tmp_path: Path) -> None:
    result = stockade("chat", env={"STOCKADE_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "stockade up" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_without_redis_server_names_the_package(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    result = stockade("up", env={"STOCKADE_DATA_DIR": str(tmp_path / "d"), "PATH": str(bin_dir)})
    assert result.returncode == 1
    assert "apt-get install redis-server" in result.stderr
    assert "Traceback" not in result.stderr
