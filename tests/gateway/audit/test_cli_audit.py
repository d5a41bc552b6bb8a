"""`stockade audit tail|verify` against a real Redis, through the command line's entry point."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.audit import EXIT_BROKEN, HEAD_KEY, STREAM, AuditEntry, AuditLog
from gateway.audit._log import parse_entry
from gateway.cli import EXIT_USAGE, main
from tests.services import RedisProcess

ADMIN = "u00000000000a11ce"
USER = "u0000000000000b0b"


@pytest.fixture
def stockade_env(
    redis_server: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A clean database, and the command line pointed at it with no settings file."""
    for name in ("STOCKADE_CONFIG", "STOCKADE_REDIS__URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STOCKADE_REDIS__URL", redis_server.url)
    asyncio.run(_flush(redis_server.url))
    yield redis_server.url


async def _flush(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


def append(url: str, n: int) -> list[AuditEntry]:
    async def run() -> list[AuditEntry]:
        client = aioredis.Redis.from_url(url)
        try:
            log = AuditLog(client, clock=iter(range(1_795_341_845, 1_795_341_845 + n)).__next__)
            return [await log.append(ADMIN, "kill", USER, f"number {i}") for i in range(n)]
        finally:
            await client.aclose()

    return asyncio.run(run())


def delete_stream_entry(url: str, index: int) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(url)
        try:
            ids = [row[0] for row in await client.xrange(STREAM)]
            await client.xdel(STREAM, ids[index])
        finally:
            await client.aclose()

    asyncio.run(run())


def test_tail_prints_the_last_twenty_entries_by_default(
    stockade_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    append(stockade_env, 25)

    status = main(["audit", "tail"])

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert len(lines) == 20
    assert lines[0] == f"#6 2026-11-22 10:04:10 UTC {ADMIN} kill {USER} ok — number 5"
    assert lines[-1].startswith("#25 ")


def test_tail_n_prints_that_many(stockade_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    append(stockade_env, 5)

    assert main(["audit", "tail", "-n", "2"]) == 0

    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["#4", "#5"]


def test_tail_of_an_empty_log_says_so(
    stockade_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "tail"]) == 0
    assert capsys.readouterr().out == "the audit log is empty\n"


@pytest.mark.parametrize("count", ["0", "-3", "many"])
def test_tail_refuses_a_count_that_is_not_positive(
    count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "tail", "-n", count])
    assert exit_info.value.code == EXIT_USAGE
    assert "positive whole number" in capsys.readouterr().err


def test_verify_of_an_intact_log_prints_count_and_head(
    stockade_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = append(stockade_env, 3)

    status = main(["audit", "verify"])

    assert status == 0
    assert capsys.readouterr().out == f"audit log intact: 3 entries, head {entries[-1].hash[:16]}\n"


def test_verify_of_a_log_with_a_deleted_entry_prints_why_and_fails(
    stockade_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    append(stockade_env, 5)
    delete_stream_entry(stockade_env, 2)

    status = main(["audit", "verify"])

    out = capsys.readouterr().out
    assert status == EXIT_BROKEN == 1
    assert "entry 3 is missing: 2 is followed by 4" in out
    assert out.startswith("audit log NOT intact: ")


def rewrite_whole_log(url: str) -> None:
    """What someone who can write Redis can do: every entry re-sealed with new content."""

    async def run() -> None:
        client = aioredis.Redis.from_url(url)
        try:
            entries = [parse_entry(fields) for _, fields in await client.xrange(STREAM)]
            await client.delete(STREAM, HEAD_KEY)
            forged = AuditLog(client, clock=iter([e.at for e in entries]).__next__)
            for entry in entries:
                await forged.append(entry.actor, entry.action, entry.target, "nothing to see")
        finally:
            await client.aclose()

    asyncio.run(run())


def test_verify_pinned_to_an_earlier_head_finds_a_log_rewritten_from_the_start(
    stockade_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    append(stockade_env, 3)
    assert main(["audit", "verify"]) == 0
    pin = capsys.readouterr().out.split("head ")[1].strip()
    append(stockade_env, 2)
    assert main(["audit", "verify", "--pinned", pin]) == 0
    assert capsys.readouterr().out.endswith("; the pinned entry 3 is in it\n")

    rewrite_whole_log(stockade_env)

    assert main(["audit", "verify"]) == 0  # the rewritten chain is consistent in itself
    capsys.readouterr()
    assert main(["audit", "verify", "--pinned", pin]) == EXIT_BROKEN
    out = capsys.readouterr().out
    assert out.startswith("audit log NOT intact: no entry has the pinned hash ")
    assert "the log was rewritten" in out


def test_verify_refuses_a_pin_that_is_not_a_hash(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "verify", "--pinned", "yesterday"])
    assert exit_info.value.code == EXIT_USAGE
    assert "16 to 64 hex digits" in capsys.readouterr().err


def test_verify_without_a_running_stockade_says_how_to_start_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("STOCKADE_CONFIG", "STOCKADE_REDIS__URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))

    status = main(["audit", "verify"])

    assert status == 1
    assert "stockade up" in capsys.readouterr().err
    assert not (tmp_path / "data" / "redis").exists()  # nothing was started
