"""`/metrics`: Prometheus text exposition (0.0.4) of the status page, from a real server."""

from __future__ import annotations

import asyncio
import math
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway import app
from gateway.bus import IN_STREAM, dead_letter_stream
from gateway.controls import PAUSED_ALL_KEY, PAUSED_KEY
from gateway.heartbeat import ALIVE_KEY
from gateway.policy import AccessStore, BudgetGate, Ledger
from gateway.policy.budget import Period, Scope, WindowUse, usd_to_nano
from gateway.settings import (
    AccessSettings,
    BudgetSettings,
    MetricsSettings,
    RedisSettings,
    Settings,
)
from gateway.status import (
    CONTENT_TYPE,
    FleetStatus,
    StatusSources,
    StreamLag,
    escape_label,
    render_metrics,
    serve_metrics,
)
from gateway.status._exposition import number
from gateway.status._server import fresh
from gateway.supervisor import STATUS_KEY, AgentStatus
from tests.services import RedisProcess

NOW = 1_795_341_845.0
ALICE = "u00000000000a11ce"
MIB = 1_048_576

# -- a strict parser of the text format, so malformed exposition fails a test -------------

_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_VALUE: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|NaN|[+-]Inf")
_ESCAPES: Final = {"\\": "\\", '"': '"', "n": "\n"}

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _labels(text: str, line: str) -> tuple[tuple[str, str], ...]:
    """`a="x",b="y\\"z"` into pairs; anything else is an error."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        match = _LABEL_NAME.match(text, i)
        assert match and text[match.end() : match.end() + 2] == '="', f"bad label in {line!r}"
        name, i = match.group(), match.end() + 2
        value = []
        while True:
            assert i < len(text), f"unterminated label value in {line!r}"
            char = text[i]
            if char == "\\":
                assert text[i + 1 : i + 2] in _ESCAPES, f"bad escape in {line!r}"
                value.append(_ESCAPES[text[i + 1]])
                i += 2
            elif char == '"':
                i += 1
                break
            else:
                assert char != "\n", f"raw newline in {line!r}"
                value.append(char)
                i += 1
        assert name not in dict(pairs), f"label {name} twice in {line!r}"
        pairs.append((name, "".join(value)))
        if i < len(text):
            assert text[i] == ",", f"labels not separated by a comma in {line!r}"
            i += 1
    return tuple(pairs)


def parse(text: str) -> tuple[Series, dict[str, str]]:
    """Every series and the HELP text of every family; asserts the format's rules."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    series: Series = {}
    seen_samples: set[str] = set()
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, name, _, rest = line[2:6], *line[7:].partition(" ")
            assert _NAME.fullmatch(name), f"bad metric name in {line!r}"
            assert name not in seen_samples, f"{kind} of {name} after its samples"
            if kind == "TYPE":
                assert name not in types, f"two TYPE lines for {name}"
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
                types[name] = rest
            else:
                assert name not in helps, f"two HELP lines for {name}"
                assert "\n" not in rest
                helps[name] = rest
            continue
        assert line and not line.startswith("#"), f"unexpected line {line!r}"
        match = _NAME.match(line)
        assert match, f"no metric name in {line!r}"
        name, rest = match.group(), line[match.end() :]
        labels: tuple[tuple[str, str], ...] = ()
        if rest.startswith("{"):
            end = rest.rfind("}")
            assert end > 0, f"unclosed labels in {line!r}"
            labels, rest = _labels(rest[1:end], line), rest[end + 1 :]
        assert rest.startswith(" "), f"no space before the value in {line!r}"
        value = rest[1:]
        assert _VALUE.fullmatch(value), f"bad value in {line!r}"
        assert name in types, f"{name} has no TYPE line before its samples"
        assert (name, labels) not in series, f"duplicate series {name}{labels}"
        seen_samples.add(name)
        series[(name, labels)] = float(value.replace("Inf", "inf"))
    return series, helps


def test_the_parser_refuses_malformed_exposition() -> None:
    for bad in (
        "x 1\n",  # no TYPE
        "# TYPE x gauge\nx 1",  # no final newline
        '# TYPE x gauge\nx{a="b} 1\n',
        '# TYPE x gauge\nx{a="\\q"} 1\n',
        "# TYPE x gauge\nx one\n",
        '# TYPE x gauge\nx{a="1"} 1\nx{a="1"} 2\n',
    ):
        with pytest.raises(AssertionError):
            parse(bad)


# -- pure ---------------------------------------------------------------------------------


def window(period: Period, used_usd: float, cap_usd: float | None) -> WindowUse:
    return WindowUse(
        Scope.TOTAL,
        period,
        "2026-11",
        usd_to_nano(used_usd),
        0,
        None if cap_usd is None else usd_to_nano(cap_usd),
        NOW,
        NOW,
        "UTC",
    )


HOSTILE = 'u"evil\\\nname'
STATUS = FleetStatus(
    roles_up={"router": 2},
    roles_down={"channels": 1},
    streams=(StreamLag(IN_STREAM, 7, 2, 3),),
    agents=(
        AgentStatus(ALICE, "running", "abc", NOW - 90, 50 * MIB, 512 * MIB, "e1", NOW),
        AgentStatus(HOSTILE, "paused", "", None, None, None, "e1", NOW),
    ),
    paused_everyone=False,
    paused=(HOSTILE,),
    today=window(Period.DAY, 0.25, None),
    month=window(Period.MONTH, 3.5, 200),
    spent_today=((ALICE, usd_to_nano(0.25)), (HOSTILE, 0)),
    as_of=NOW,
)


def test_label_values_escape_backslash_quote_and_newline() -> None:
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (2.0, "2"), (0.25, "0.25"), (1e-9, "1e-09"), (math.inf, "+Inf"), (math.nan, "NaN")],
)
def test_sample_values_are_written_as_the_format_reads_them(value: float, text: str) -> None:
    assert number(value) == text


def test_every_figure_of_the_status_page_is_a_parseable_gauge() -> None:
    text = render_metrics(STATUS)
    series, helps = parse(text)
    assert series[("stockade_role_up", (("role", "router"),))] == 2
    assert series[("stockade_role_up", (("role", "agents"),))] == 0
    assert series[("stockade_role_silent", (("role", "channels"),))] == 1
    assert series[("stockade_stream_waiting", (("stream", IN_STREAM),))] == 7
    assert series[("stockade_stream_pending", (("stream", IN_STREAM),))] == 2
    assert series[("stockade_stream_dead_letters", (("stream", IN_STREAM),))] == 3
    assert series[("stockade_agents", (("state", "running"),))] == 1
    assert series[("stockade_agents", (("state", "paused"),))] == 1
    assert series[("stockade_agents", (("state", "exited"),))] == 0
    assert series[("stockade_agent_memory_bytes", (("user", ALICE),))] == 50 * MIB
    assert series[("stockade_agent_memory_limit_bytes", (("user", ALICE),))] == 512 * MIB
    assert series[("stockade_agent_uptime_seconds", (("user", ALICE),))] == 90
    assert series[("stockade_agent_spend_today_usd", (("user", ALICE),))] == 0.25
    assert series[("stockade_spend_usd", (("window", "day"),))] == 0.25
    assert series[("stockade_spend_usd", (("window", "month"),))] == 3.5
    assert series[("stockade_cap_usd", (("window", "month"),))] == 200
    assert ("stockade_cap_usd", (("window", "day"),)) not in series  # no cap, no sample
    assert series[("stockade_paused_agents", ())] == 1
    assert series[("stockade_paused_all", ())] == 0
    assert set(helps) == {name for name, _ in series}


def test_a_hostile_label_value_round_trips_through_the_escaping() -> None:
    series, _ = parse(render_metrics(STATUS))
    assert series[("stockade_agents", (("state", "paused"),))] == 1
    assert series[("stockade_agent_spend_today_usd", (("user", HOSTILE),))] == 0


def test_agents_without_measurements_have_no_memory_or_uptime_samples() -> None:
    series, _ = parse(render_metrics(STATUS))
    users = {
        dict(labels).get("user") for name, labels in series if name.startswith("stockade_agent_")
    }
    assert HOSTILE in users  # its spend
    assert ("stockade_agent_memory_bytes", (("user", HOSTILE),)) not in series
    assert ("stockade_agent_uptime_seconds", (("user", HOSTILE),)) not in series


@pytest.mark.parametrize(
    ("read_at", "now", "cache_s", "expected"),
    [
        (None, 5.0, 1.0, False),
        (5.0, 5.5, 1.0, True),
        (5.0, 6.0, 1.0, False),
        (5.0, 4.0, 1.0, False),
    ],
)
def test_an_answer_is_reused_only_within_the_cache_time(
    read_at: float | None, now: float, cache_s: float, expected: bool
) -> None:
    assert fresh(read_at, now, cache_s) is expected


# -- a real server on 127.0.0.1 ---------------------------------------------------------------


def sources(client: aioredis.Redis, ledger: Ledger) -> StatusSources:
    return StatusSources(
        client,
        AccessStore(client, AccessSettings()),
        BudgetGate(client, BudgetSettings(), ledger),
        ("console",),
        clock=lambda: NOW,
    )


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    async with Ledger(tmp_path / "ledger") as opened:
        yield opened


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


LOCAL: Final = MetricsSettings(host="127.0.0.1", port=0, cache_s=1.0)


async def get(url: str, method: str = "GET") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_a_scrape_reads_the_figures_from_redis(redis: aioredis.Redis, ledger: Ledger) -> None:
    await redis.hset(ALIVE_KEY, "router:a", NOW - 1)
    await redis.xadd(dead_letter_stream(IN_STREAM), {"n": 1})
    running = AgentStatus(ALICE, "running", "abc", NOW - 60, 64 * MIB, 512 * MIB, "e1", NOW)
    await redis.hset(STATUS_KEY, ALICE, running.to_json())
    await redis.sadd(PAUSED_KEY, "u0000000000000b0b")

    async with serve_metrics(LOCAL, sources(redis, ledger)) as endpoint:
        assert endpoint is not None and endpoint.port > 0
        status, content_type, text = await get(endpoint.url)

    assert status == 200 and content_type == CONTENT_TYPE
    series, _ = parse(text)
    assert series[("stockade_role_up", (("role", "router"),))] == 1
    assert series[("stockade_stream_dead_letters", (("stream", IN_STREAM),))] == 1
    assert series[("stockade_agent_memory_bytes", (("user", ALICE),))] == 64 * MIB
    assert series[("stockade_paused_agents", ())] == 1
    assert series[("stockade_cap_usd", (("window", "month"),))] == 200


async def test_other_paths_and_methods_are_not_found(redis: aioredis.Redis, ledger: Ledger) -> None:
    async with serve_metrics(LOCAL, sources(redis, ledger)) as endpoint:
        assert endpoint is not None
        base = f"http://127.0.0.1:{endpoint.port}"
        for method, path in (("GET", "/"), ("GET", "/metrics/x"), ("POST", "/metrics")):
            status, _, _ = await get(base + path, method)
            assert status == 404, (method, path)
        status, _, _ = await get(base + "/metrics?x=1")
        assert status == 200


async def test_scrapes_within_the_cache_time_do_not_read_redis_again(
    redis: aioredis.Redis, ledger: Ledger
) -> None:
    clock = Clock()
    async with serve_metrics(LOCAL, sources(redis, ledger), clock=clock) as endpoint:
        assert endpoint is not None
        _, _, before = await get(endpoint.url)
        await redis.set(PAUSED_ALL_KEY, "1")
        _, _, cached = await get(endpoint.url)
        clock.now += LOCAL.cache_s
        _, _, after = await get(endpoint.url)

    def paused_all(text: str) -> float:
        return parse(text)[0][("stockade_paused_all", ())]

    assert (paused_all(before), paused_all(cached), paused_all(after)) == (0, 0, 1)


async def test_a_scrape_while_redis_is_down_answers_503_and_the_server_goes_on(
    redis: aioredis.Redis, ledger: Ledger, tmp_path: Path
) -> None:
    dead = aioredis.Redis.from_url(f"unix://{tmp_path / 'closed.sock'}")
    clock = Clock()
    try:
        async with serve_metrics(LOCAL, sources(dead, ledger), clock=clock) as endpoint:
            assert endpoint is not None
            status, _, text = await get(endpoint.url)
            assert status == 503
            assert text.count("\n") == 1 and "Redis did not answer" in text
            clock.now += LOCAL.cache_s
            status, _, _ = await get(endpoint.url)
            assert status == 503
            status, _, _ = await get(f"http://127.0.0.1:{endpoint.port}/")
            assert status == 404
    finally:
        await dead.aclose()


async def test_a_disabled_server_listens_nowhere(redis: aioredis.Redis, ledger: Ledger) -> None:
    off = MetricsSettings(enabled=False, port=0)
    async with serve_metrics(off, sources(redis, ledger)) as endpoint:
        assert endpoint is None


async def test_a_taken_port_leaves_the_process_without_metrics(
    redis: aioredis.Redis, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        second = MetricsSettings(host="127.0.0.1", port=port)
        async with serve_metrics(second, sources(redis, ledger)) as endpoint:
            assert endpoint is None
    assert "is taken" in caplog.text


async def scrape_when_up(url: str, timeout_s: float = 10.0) -> str:
    """The first 200 answer at `url`, retried while nothing listens yet."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                status, _, text = await get(url)
            except aiohttp.ClientConnectionError:
                status, text = 0, ""
            if status == 200 and 'stockade_role_up{role="router"} 1' in text:
                return text
            await asyncio.sleep(0.05)


async def test_a_router_run_alone_serves_metrics_while_it_runs(
    redis: aioredis.Redis, redis_server: RedisProcess, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path / "data",
        redis=RedisSettings(url=redis_server.url),
        metrics=MetricsSettings(host="127.0.0.1", port=port),
    )
    router = asyncio.create_task(app.run_role(settings, "router"))
    try:
        text = await scrape_when_up(f"http://127.0.0.1:{port}/metrics")
    finally:
        router.cancel()
        await asyncio.gather(router, return_exceptions=True)
    series, _ = parse(text)
    assert series[("stockade_role_up", (("role", "router"),))] == 1
