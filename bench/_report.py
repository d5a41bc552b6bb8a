"""Shared by the benchmarks: figures as data, percentiles, the machine and versions, and the
section of bench/RESULTS.md that `bench/run_all.py` owns."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

BEGIN: Final = "<!-- run_all:begin -->"
END: Final = "<!-- run_all:end -->"


@dataclass(frozen=True)
class Figure:
    """One measured figure, as a report row: what, how much, against which target."""

    bench: str
    name: str
    result: str
    target: str = "-"
    passed: bool | None = None
    """None: reported, no target."""
    command: str = ""
    load: str = ""
    """The 1-minute load average at the start and end of the bench that measured it."""
    date: str = ""

    @property
    def verdict(self) -> str:
        return "-" if self.passed is None else "PASS" if self.passed else "FAIL"


def cut(samples: Sequence[float], percent: int) -> float:
    """The `percent`th percentile (inclusive method); NaN for no samples."""
    if not samples:
        return math.nan
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


def ms(seconds: float) -> str:
    return "?" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def load() -> float:
    return os.getloadavg()[0]


def _meminfo_gb(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024 / 1024
    return math.nan


def _tool_version(argv: list[str], prefix: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return next((w.removeprefix(prefix) for w in out.split() if w.startswith(prefix)), "?")


def _package(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def reference_loop_s() -> float:
    """CPU seconds of a fixed pure-Python loop: this VM's speed varies by a fifth or more
    from hour to hour, and figures from different runs compare only beside it."""
    started = time.process_time()
    total = 0
    for i in range(5_000_000):
        total += i
    return round(time.process_time() - started, 2)


def machine() -> dict[str, Any]:
    """The machine and the versions every figure was taken with."""
    docker = _tool_version(["docker", "version", "--format", "v={{.Server.Version}}"], "v=")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(_meminfo_gb("MemTotal"), 1),
        "memory_available_gb": round(_meminfo_gb("MemAvailable"), 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "docker_engine": docker,
        "redis_server": _tool_version(["redis-server", "--version"], "v="),
        "redis_py": _package("redis"),
        "litellm": _package("litellm"),
        "python_telegram_bot": _package("python-telegram-bot"),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "reference_loop_s": reference_loop_s(),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB "
        f"({m['memory_available_gb']} GB available at the start), kernel {m['kernel']}; "
        f"Python {m['python']}, Docker engine {m['docker_engine']}, redis-server "
        f"{m['redis_server']}, redis-py {m['redis_py']}, LiteLLM {m['litellm']}, "
        f"python-telegram-bot {m['python_telegram_bot']}; {m['date']}"
        + (
            f"; a reference loop of 5M Python additions took {m['reference_loop_s']} s of CPU"
            if "reference_loop_s" in m
            else ""
        )
    )


def write_json(path: Path, command: str, m: dict[str, Any], figures: Sequence[Figure]) -> None:
    report = {"command": command, "machine": m, "figures": [asdict(f) for f in figures]}
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def read_figures(path: Path) -> list[Figure]:
    """The figures of an earlier JSON report; none when there is none."""
    if not path.exists():
        return []
    fields = set(Figure.__dataclass_fields__)
    report = json.loads(path.read_text())
    # A figure without its own date was taken on the report's date.
    dated = {"date": str(report.get("machine", {}).get("date", ""))}
    return [
        Figure(**(dated | {k: v for k, v in f.items() if k in fields and v != ""}))
        for f in report.get("figures", [])
    ]


def merged(
    earlier: Sequence[Figure], new: Sequence[Figure], rerun: set[str], order: Sequence[str] = ()
) -> list[Figure]:
    """The new figures, plus the earlier ones of every bench this run did not repeat,
    bench by bench: a partial run updates only its own benches. The benches named in
    `order` come first, in that order; the others as they first appear."""
    kept = [f for f in earlier if f.bench not in rerun]
    benches = list(dict.fromkeys([*order, *(f.bench for f in [*earlier, *new])]))
    every = [*kept, *new]
    return [f for bench in benches for f in every if f.bench == bench]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(
    command: str, m: dict[str, Any], figures: Sequence[Figure], notes: Sequence[str]
) -> str:
    """The Markdown of the runner's section of RESULTS.md, markers included."""
    lines = [
        BEGIN,
        "## Every benchmark in one run (`bench/run_all.py`)",
        "",
        "Written by the runner; edits inside the markers are overwritten on the next run.",
        f"Last command: `{command}`. Machine: {machine_line(m)}. Each row names the command",
        "that reproduces it alone, and the date and load it was taken at (a partial run",
        "`--only …` keeps the other benches' rows from the run before).",
        "",
        "| bench | figure | target | result | verdict | load start → end | date | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {_cell(f.bench)} | {_cell(f.name)} | {_cell(f.target)} | {_cell(f.result)} | "
        f"{'**' + f.verdict + '**' if f.passed is not None else '-'} | {_cell(f.load)} | "
        f"{_cell(f.date)} | `{_cell(f.command)}` |"
        for f in figures
    ]
    if notes:
        lines += ["", "Notes:"]
        lines += [f"- {note}" for note in notes]
    lines.append(END)
    return "\n".join(lines)


def replace_section(document: str, new: str) -> str:
    """`document` with the runner's section replaced by `new`, or `new` appended at the end;
    everything outside the markers stays byte for byte."""
    start = document.find(BEGIN)
    stop = document.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start < 0 or stop < 0:
        return document.rstrip("\n") + "\n\n" + new + "\n"
    return document[:start] + new + document[stop + len(END) :]
