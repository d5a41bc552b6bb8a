"""`stockade status`: the figures read from a real Redis, and their terminal tables."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.bus import IN_STREAM, WAKE_STREAM, dead_letter_stream, out_stream
from gateway.cli import EXIT_DEPENDENCY, main
from gateway.controls import PAUSED_KEY
from gateway.heartbeat import ALIVE_KEY
from gateway.policy import AccessStore, BudgetGate, Ledger, TokenPrice
from gateway.policy.budget import NANO_PER_USD, Period, Scope, WindowUse, usd_to_nano
from gateway.settings import AccessSettings, BudgetSettings
from gateway.status import FleetStatus, StatusSources, StreamLag, gather, render_table
from gateway.status._gather import group_lag
from gateway.status._table import columns, uptime
from gateway.supervisor import STATUS_KEY, AgentStatus
from tests.services import RedisProcess

NOW = 1_795_341_845.0
ALICE = "u00000000000a11ce"
BOB = "u0000000000000b0b"
MIB = 1_048_576
DOLLAR_OF_PROMPT = TokenPrice(10**6, 0)
"""A million prompt tokens cost $1, output is free: spend is exact."""


def window(period: Period, used_usd: float, cap_usd: float | None) -> WindowUse:
    return WindowUse(
        scope=Scope.TOTAL,
        period=period,
        key="2026-11-22" if period is Period.DAY else "2026-11",
        spent_nano=usd_to_nano(used_usd),
        held_nano=0,
        cap_nano=None if cap_usd is None else usd_to_nano(cap_usd),
        resets_at=NOW + 3_600,
        as_of=NOW,
        timezone="UTC",
    )


def agent(user: str, state: str, started: float | None, memory_mib: int | None) -> AgentStatus:
    return AgentStatus(
        user_id=user,
        state=state,  # type: ignore[arg-type]
        container="abcdef123456" if started is not None else "",
        started_at=started,
        memory_bytes=None if memory_mib is None else memory_mib * MIB,
        memory_limit_bytes=None if memory_mib is None else 512 * MIB,
        host="e1",
        updated=NOW,
    )


STATUS = FleetStatus(
    roles_up={"router": 2, "agents": 1},
    roles_down={"router": 1},
    streams=(
        StreamLag(IN_STREAM, 7, 2, 0),
        StreamLag("stockade:out:telegram", 0, 0, 13),
    ),
    agents=(
        agent(ALICE, "running", NOW - 3_720, 50),
        agent(BOB, "waiting", None, None),
    ),
    paused_everyone=False,
    paused=(BOB,),
    today=window(Period.DAY, 0.12, None),
    month=window(Period.MONTH, 3.4, 200),
    spent_today=((ALICE, usd_to_nano(0.12)), (BOB, 0)),
    as_of=NOW,
)


# -- pure -----------------------------------------------------------------------------------


def test_columns_are_as_wide_as_their_widest_cell_and_numbers_align_right() -> None:
    lines = columns(("NAME", "N"), [("a", "1"), ("longer", "100")], numeric=1)
    assert lines == ["NAME      N", "a         1", "longer  100"]


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        columns(("A",), [("a", "b")])


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(59, "0 min"), (300, "5 min"), (3_720, "1 h 02 min"), (3 * 86_400 + 4 * 3_600, "3 d 04 h")],
)
def test_uptime_reads_as_minutes_hours_or_days(seconds: int, shown: str) -> None:
    assert uptime(NOW - seconds, NOW) == shown


def test_uptime_is_a_dash_without_a_start_and_never_negative() -> None:
    assert uptime(None, NOW) == "-"
    assert uptime(NOW + 60, NOW) == "0 min"


def test_lag_adds_unread_and_pending_entries_of_every_group() -> None:
    rows: list[dict[str, object]] = [
        {"name": "router", "pending": 2, "lag": 5},
        {"name": "audit", "pending": 0, "lag": None},  # lag unknown after a trim
    ]
    assert group_lag(rows) == (7, 2)
    assert group_lag([]) == (0, 0)


def test_table_shows_roles_up_and_silent() -> None:
    text = render_table(STATUS)
    roles = text.split("\n\n")[0].splitlines()
    assert roles == [
        "ROLE      STATE  UP  SILENT",
        "router    up      2       1",
        "agents    up      1       0",
        "channels  DOWN    0       0",
    ]


def test_table_shows_each_streams_waiting_pending_and_dead_letters() -> None:
    streams = render_table(STATUS).split("\n\n")[1].splitlines()
    assert streams == [
        "STREAM                 WAITING  PENDING  DEAD LETTERS",
        "stockade:in                  7        2             0",
        "stockade:out:telegram        0        0            13",
    ]


def test_table_shows_agents_by_state_and_each_agents_figures() -> None:
    agents = render_table(STATUS).split("\n\n")[2].splitlines()
    assert agents == [
        "Agents: 1 running, 0 exited, 0 paused, 1 waiting.",
        f"Paused users: {BOB}.",
        "USER               STATE    MEMORY                UPTIME  TODAY",
        f"{ALICE}  running  50 MiB / 512 MiB  1 h 02 min  $0.12",
        f"{BOB}  waiting  -                          -  $0.00",
    ]


def test_table_shows_spend_today_and_this_month_with_the_caps() -> None:
    spend = render_table(STATUS).split("\n\n")[3].splitlines()
    assert spend == [
        "SPEND (ALL USERS)   USED      CAP     LEFT",
        "today              $0.12        -        -",
        "this month         $3.40  $200.00  $196.60",
    ]


def test_table_says_when_every_agent_is_paused_and_none_has_a_container() -> None:
    quiet = FleetStatus(
        roles_up={},
        roles_down={},
        streams=(),
        agents=(),
        paused_everyone=True,
        paused=(),
        today=window(Period.DAY, 0, 5),
        month=window(Period.MONTH, 0, None),
        spent_today=(),
        as_of=NOW,
    )
    agents = render_table(quiet).split("\n\n")[2].splitlines()
    assert agents == ["Agents: 0 running, 0 exited, 0 paused, 0 waiting.", "Every agent is paused."]


# -- against Redis --------------------------------------------------------------------------


def sources(redis: aioredis.Redis, ledger: Ledger) -> StatusSources:
    return StatusSources(
        redis,
        AccessStore(redis, AccessSettings()),
        BudgetGate(redis, BudgetSettings(), ledger),
        ("console", "telegram"),
        clock=lambda: NOW,
    )


async def spend(gate: BudgetGate, user: str, usd: float) -> None:
    tokens = int(usd * 1_000_000)
    reservation = await gate.reserve(user, "m", DOLLAR_OF_PROMPT, tokens, 1)
    await gate.settle(reservation.id, usd_to_nano(usd), tokens, 0)


async def fill(redis: aioredis.Redis) -> None:
    """Two routers (one silent), three inbound entries of which one is pending, two dead
    letters of a reply stream, one running agent, one paused user."""
    await redis.hset(ALIVE_KEY, mapping={"router:a": NOW - 1, "router:b": NOW - 100})
    await redis.hset(ALIVE_KEY, "agents:c", NOW - 2)
    for n in range(3):
        await redis.xadd(IN_STREAM, {"n": n})
    await redis.xgroup_create(IN_STREAM, "router", id="0")
    await redis.xreadgroup("router", "r1", {IN_STREAM: ">"}, count=1)
    for n in range(2):
        await redis.xadd(dead_letter_stream(out_stream("telegram")), {"n": n})
    running = agent(ALICE, "running", NOW - 600, 64)
    await redis.hset(STATUS_KEY, ALICE, running.to_json())
    await redis.sadd(PAUSED_KEY, BOB)


async def test_gather_reads_roles_streams_agents_paused_users_and_spend(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    await fill(redis)
    async with Ledger(tmp_path / "ledger") as ledger:
        read = sources(redis, ledger)
        await spend(read.budget, ALICE, 0.25)
        status = await gather(read)

    assert status.roles_up == {"router": 1, "agents": 1}
    assert status.roles_down == {"router": 1}
    assert status.streams == (
        StreamLag(IN_STREAM, 3, 1, 0),
        StreamLag(WAKE_STREAM, 0, 0, 0),
        StreamLag(out_stream("console"), 0, 0, 0),
        StreamLag(out_stream("telegram"), 0, 0, 2),
    )
    assert [(a.user_id, a.state, a.memory_bytes) for a in status.agents] == [
        (ALICE, "running", 64 * MIB)
    ]
    assert status.spent_today == ((ALICE, NANO_PER_USD // 4),)
    assert (status.paused_everyone, status.paused) == (False, (BOB,))
    assert status.today.used_nano == NANO_PER_USD // 4
    assert status.month.cap_nano == usd_to_nano(200)
    assert status.as_of == NOW


# -- through the command line ---------------------------------------------------------------


@pytest.fixture
def no_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The command line with no settings file, a private data directory and no Redis URL."""
    for name in ("STOCKADE_CONFIG", "STOCKADE_REDIS__URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(tmp_path / "data"))
    yield tmp_path


async def _fill_at(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushall()
        await client.hset(ALIVE_KEY, "router:a", time.time())
        await client.hset(STATUS_KEY, ALICE, agent(ALICE, "running", time.time(), 64).to_json())
    finally:
        await client.aclose()


def test_status_command_prints_the_tables_of_a_running_stockade(
    no_settings: Path,
    redis_server: RedisProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STOCKADE_REDIS__URL", redis_server.url)
    asyncio.run(_fill_at(redis_server.url))

    assert main(["status"]) == 0

    out = capsys.readouterr().out
    assert "router    up      1       0" in out
    assert "stockade:in" in out and "stockade:out:console" in out
    assert "Agents: 1 running, 0 exited, 0 paused, 0 waiting." in out
    assert f"{ALICE}  running  64 MiB / 512 MiB" in out
    assert "this month" in out and "$200.00" in out


def test_status_command_exits_1_naming_the_cause_when_no_stockade_runs(
    no_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == EXIT_DEPENDENCY
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no running Stockade found" in captured.err and "stockade up" in captured.err


def test_status_command_exits_1_when_the_configured_redis_does_not_answer(
    no_settings: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STOCKADE_REDIS__URL", f"unix://{no_settings / 'nothing.sock'}")
    assert main(["status"]) == EXIT_DEPENDENCY
    assert "did not answer" in capsys.readouterr().err
