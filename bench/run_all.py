"""Runs every benchmark against the real pipeline and writes bench/results.json and its
section of bench/RESULTS.md.

    .venv/bin/python bench/run_all.py [--only NAME ...] [--quick] [--idle N]
                                      [--max-load L] [--no-write] [--rewrite]

One after another, each in this process with its own event loop, each bench's own
code (every one still runs alone with the command its figures name):

  pipeline  bench/bench_pipeline.py: end-to-end overhead per message at a steady 50 msg/s
            across 50 users (p50, p95, p99, where the time goes), and the sustained
            throughput across 50 users with warm agents (`stockade up`, Telegram webhook
            against its fake, real Redis, real agent containers, the fake model through
            LiteLLM)
  pipeline-apart
            bench/bench_pipeline.py --shape apart: the same, with redis-server and
            `stockade run router`, `run channels` and `run agents` each its own process
  cold      bench/bench_agents.py --only cold: a new user's first message → reply
  idle      bench/bench_agents.py --only idle: memory per idle agent, how many run at
            once, and how many idle agents this machine holds by its memory
  mesh      bench/bench_mesh.py: the mesh's overhead over a direct LiteLLM call
  budget    bench/bench_budget.py: the budget gate's reserve + settle round trip

Other work may share the machine: before each bench it waits (up to 3 minutes) for the
1-minute load average to fall under `--max-load` (1.5), and every figure carries the
load at its bench's start and end. `--quick` shrinks every bench to check the runner
itself; its figures are not written unless `--write-quick` is given. `--only` runs some
benches and keeps the others' figures from results.json; `--rewrite` only renders
results.json into RESULTS.md again. Exits 1 when a target is missed, 2 when a bench
failed to run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for bench and tests.fakes

from bench import bench_agents, bench_budget, bench_mesh, bench_pipeline
from bench._report import (
    Figure,
    load,
    machine,
    merged,
    read_figures,
    replace_section,
    section,
    write_json,
)

HERE: Final = Path(__file__).resolve().parent
BENCHES: Final = ("pipeline", "pipeline-apart", "cold", "idle", "mesh", "budget")
LOAD_WAIT_S: Final = 180.0
"""How long to wait for a quiet machine before a bench runs anyway (and says so)."""


def wait_for_quiet(max_load: float) -> str:
    """Until the 1-minute load is under `max_load`, for up to LOAD_WAIT_S; a note if not."""
    deadline = time.monotonic() + LOAD_WAIT_S
    while (now := load()) >= max_load and time.monotonic() < deadline:
        time.sleep(5.0)  # the load average itself moves on a 5 s tick
    return "" if now < max_load else f"ran at load {now:.2f} (over {max_load:g} for 3 min)"


def pipeline(shape: str, options: argparse.Namespace) -> list[Figure]:
    args = ["--shape", shape]
    if options.quick:
        args += ["--seconds", "8", "--warmup", "2", "--throughput-seconds", "8"]
        args += ["--users", "10", "--rate", "10"]
    parsed = bench_pipeline.parser().parse_args(args)
    result = asyncio.run(bench_pipeline.measure(parsed))
    for line in result.lines:
        print(line)
    return result.figures


def agents(phase: str, options: argparse.Namespace) -> list[Figure]:
    users = 3 if options.quick else 10
    idle = 5 if options.quick else options.idle
    command = f".venv/bin/python bench/bench_agents.py --only {phase}"
    if phase == "cold" and users != 10:
        command += f" --users {users}"
    if phase == "idle" and idle != 100:
        command += f" --idle {idle}"
    parsed = argparse.Namespace(
        users=users, turns=200, idle=idle, only=phase, model="hosted_vllm/fake"
    )
    figures, _ = asyncio.run(bench_agents.measure(parsed))
    return [Figure(phase, f.name.strip(), f.result, f.target, f.passed, command) for f in figures]


def mesh(options: argparse.Namespace) -> list[Figure]:
    calls, warmup = (50, 5) if options.quick else (500, 20)
    command = f".venv/bin/python bench/bench_mesh.py --calls {calls}"
    rows = asyncio.run(bench_mesh.measure(calls, warmup))
    found = []
    for body in bench_mesh.BODIES:
        by_way = {r.way: r for r in rows if r.body == body}
        over = by_way["mesh"].cut(50) - by_way["litellm"].cut(50)
        size = len(bench_mesh.agent_body(body)["messages"])
        found.append(
            Figure(
                "mesh",
                f"mesh overhead over a direct LiteLLM call, p50 ({size} messages)",
                f"{over:+.2f} ms (mesh {by_way['mesh'].cut(50):.2f}, LiteLLM "
                f"{by_way['litellm'].cut(50):.2f} ms)",
                f"< {bench_mesh.TARGET_OVERHEAD_MS:g} ms",
                over < bench_mesh.TARGET_OVERHEAD_MS,
                command,
            )
        )
        gateway, litellm = bench_mesh.cpu_per_call_ms(rows, body)
        found.append(
            Figure(
                "mesh",
                f"gateway CPU per model call ({size} messages)",
                f"{gateway:.2f} ms, of which LiteLLM {litellm:.2f} ms: at most "
                f"{2000 / gateway:.0f} calls/s on 2 cores, {2000 / litellm:.0f}/s for "
                "LiteLLM alone",
                command=command,
            )
        )
    return found


def budget(options: argparse.Namespace) -> list[Figure]:
    calls = 500 if options.quick else 5_000
    command = f".venv/bin/python bench/bench_budget.py --calls {calls}"
    _, results = asyncio.run(bench_budget.measure(calls, 200, ["off", "on"]))
    found = []
    for r in results:
        sequential = r.label.startswith("sequential")
        found.append(
            Figure(
                "budget",
                f"budget gate reserve + settle, {r.label}",
                f"p50 {r.cut(50):.3f} ms, p99 {r.cut(99):.3f} ms, {r.rate:,.0f} trips/s",
                f"median < {bench_budget.TARGET_P50_MS:g} ms" if sequential else "-",
                r.cut(50) < bench_budget.TARGET_P50_MS if sequential else None,
                command,
            )
        )
    return found


def run(options: argparse.Namespace) -> tuple[list[Figure], list[str], bool]:
    """Every chosen bench: its figures, notes on how they were taken, and whether all ran."""
    runs: dict[str, Callable[[], list[Figure]]] = {
        "pipeline": lambda: pipeline("up", options),
        "pipeline-apart": lambda: pipeline("apart", options),
        "cold": lambda: agents("cold", options),
        "idle": lambda: agents("idle", options),
        "mesh": lambda: mesh(options),
        "budget": lambda: budget(options),
    }
    figures: list[Figure] = []
    notes: list[str] = []
    complete = True
    for name in options.only or BENCHES:
        busy = wait_for_quiet(options.max_load)
        if busy:
            notes.append(f"{name}: {busy}")
        print(f"\n== {name} (load {load():.2f})", flush=True)
        start = load()
        try:
            found = runs[name]()
        except Exception as exc:  # one bench's failure is reported; the others still run
            traceback.print_exc()
            notes.append(f"{name}: failed to run: {type(exc).__name__}: {exc}")
            complete = False
            continue
        span = f"{start:.2f} → {load():.2f}"
        date = time.strftime("%Y-%m-%d %H:%M")
        figures += [
            Figure(f.bench, f.name, f.result, f.target, f.passed, f.command, f.load or span, date)
            for f in found
        ]
    return figures, notes, complete


def summary_notes(figures: list[Figure]) -> list[str]:
    missed = [f"{f.bench}: {f.name}" for f in figures if f.passed is False]
    loads = [float(f.load.split()[0]) for f in figures if f.load]
    notes = [f"Targets missed: {'; '.join(missed)}." if missed else "Every target met."]
    if loads and not any(math.isnan(x) for x in loads):
        notes.append(
            f"1-minute load at the benches' starts: median {statistics.median(loads):.2f}, "
            f"max {max(loads):.2f} (2 cores; other work shares the machine)."
        )
    return notes


def rewrite() -> int:
    """The RESULTS.md section again from results.json, without running anything."""
    report = json.loads((HERE / "results.json").read_text())
    figures = read_figures(HERE / "results.json")
    results = HERE / "RESULTS.md"
    page = section(report["command"], report["machine"], figures, summary_notes(figures))
    results.write_text(replace_section(results.read_text(), page))
    print(f"rewrote the run_all section of {results} from {HERE / 'results.json'}")
    return 0


def main(options: argparse.Namespace) -> int:
    if options.rewrite:
        return rewrite()
    found_machine = machine()
    command = " ".join([".venv/bin/python bench/run_all.py", *sys.argv[1:]])
    figures, run_notes, complete = run(options)
    print()
    for f in figures:
        print(f"{f.bench:<14} {f.name[:60]:<60} {f.result[:48]:<48} {f.target:<14} {f.verdict}")
    for note in summary_notes(figures) + run_notes:
        print(note)
    if options.write and (not options.quick or options.write_quick):
        rerun = {f.bench for f in figures}
        kept = merged(read_figures(HERE / "results.json"), figures, rerun, BENCHES)
        write_json(HERE / "results.json", command, found_machine, kept)
        results = HERE / "RESULTS.md"
        document = results.read_text() if results.exists() else "# Benchmark results\n"
        notes = summary_notes(kept) + run_notes
        results.write_text(replace_section(document, section(command, found_machine, kept, notes)))
        print(f"wrote {HERE / 'results.json'} and the run_all section of {results}")
    if not complete:
        return 2
    return 1 if any(f.passed is False for f in figures) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHES, help="these benches, in this order")
    parser.add_argument("--quick", action="store_true", help="small sizes: a check of the runner")
    parser.add_argument("--write-quick", action="store_true", help="write --quick's figures too")
    parser.add_argument("--idle", type=int, default=100, help="idle agents to start")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a load under this")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only")
    parser.add_argument(
        "--rewrite", action="store_true", help="only rewrite RESULTS.md from results.json"
    )
    options = parser.parse_args()
    if options.idle < 1:
        parser.error("--idle must be positive")
    try:
        sys.exit(main(options))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
