"""Tests of the benchmark runner's pure parts: the RESULTS.md section, percentiles, bus marks.

CI=true .venv/bin/pytest tests/bench/test_report.py -q -p no:cacheprovider
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from bench._report import (
    BEGIN,
    END,
    Figure,
    cut,
    merged,
    read_figures,
    replace_section,
    section,
    write_json,
)
from bench.bench_pipeline import Cpu, command_line, entry_s, parser
from bench.run_all import summary_notes

MACHINE = {
    "cpus": 2,
    "cpu_model": "Xeon",
    "memory_gb": 23.5,
    "memory_available_gb": 20.0,
    "kernel": "6.1",
    "python": "3.11.7",
    "docker_engine": "20.10",
    "redis_server": "7.0.15",
    "redis_py": "8.1.0",
    "litellm": "1.106.2",
    "python_telegram_bot": "22.8",
    "date": "2026-11-22 20:00 UTC",
}
MISS = Figure("pipeline", "overhead p50", "34.5 ms", "< 15 ms", False, "cmd", "1.00 → 2.00")
MET = Figure("budget", "reserve | settle", "0.6 ms", "< 1 ms", True, "cmd2", "0.50 → 0.70")


def test_section_is_appended_when_the_document_has_none() -> None:
    document = "# Benchmark results\n\nhand-written text\n"
    new = section("run", MACHINE, [MISS], [])
    updated = replace_section(document, new)
    assert updated.startswith(document)
    assert updated.rstrip("\n").endswith(END)


def test_section_replaces_only_what_is_between_the_markers() -> None:
    before = "# Results\n\nabove\n"
    after = "\n\nbelow, kept\n"
    document = before + BEGIN + "\nold figures\n" + END + after
    updated = replace_section(document, section("run", MACHINE, [MET], []))
    assert updated.startswith(before + BEGIN)
    assert updated.endswith(END + after)
    assert "old figures" not in updated
    assert updated.count(BEGIN) == 1


def test_a_missed_target_shows_as_fail_with_its_target_and_load() -> None:
    rendered = section("run", MACHINE, [MISS], ["Targets missed: overhead p50."])
    row = next(line for line in rendered.splitlines() if "overhead p50" in line)
    assert "**FAIL**" in row
    assert "< 15 ms" in row
    assert "1.00 → 2.00" in row
    assert "Xeon" in rendered and "LiteLLM 1.106.2" in rendered
    assert "Targets missed: overhead p50." in rendered


def test_pipes_in_a_figure_do_not_break_the_table() -> None:
    row = next(line for line in section("r", MACHINE, [MET], []).splitlines() if "reserve" in line)
    assert "reserve \\| settle" in row


def test_json_report_keeps_every_field_of_every_figure(tmp_path: Path) -> None:
    write_json(tmp_path / "r.json", "run", MACHINE, [MISS, MET])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["command"] == "run"
    assert report["machine"]["cpus"] == 2
    assert report["figures"][0] == {
        "bench": "pipeline",
        "name": "overhead p50",
        "result": "34.5 ms",
        "target": "< 15 ms",
        "passed": False,
        "command": "cmd",
        "load": "1.00 → 2.00",
        "date": "",
    }


def test_percentiles_of_few_or_no_samples() -> None:
    assert math.isnan(cut([], 50))
    assert cut([0.5], 99) == 0.5
    assert cut([float(x) for x in range(1, 101)], 50) == 50.5


def test_summary_names_every_missed_target() -> None:
    notes = summary_notes([MISS, MET])
    assert notes[0] == "Targets missed: pipeline: overhead p50."
    assert summary_notes([MET])[0] == "Every target met."


def test_stream_entry_ids_give_their_milliseconds_as_seconds() -> None:
    assert entry_s("1764000000123-7") == 1764000000.123


def test_pipeline_defaults_are_the_issue_load() -> None:
    options = parser().parse_args([])
    assert (options.users, options.rate, options.seconds) == (50, 50.0, 30.0)
    assert options.model_delay == 0.0


def test_a_partial_run_keeps_the_other_benches_figures() -> None:
    old_budget = Figure("budget", "round trip", "0.9 ms", date="yesterday")
    old_pipeline = Figure("pipeline", "overhead p50", "99 ms", date="yesterday")
    new_pipeline = Figure("pipeline", "overhead p50", "40 ms", date="today")
    kept = merged([old_pipeline, old_budget], [new_pipeline], {"pipeline"})
    assert kept == [new_pipeline, old_budget]


def test_a_bench_new_to_the_report_takes_its_place_in_the_runners_order() -> None:
    old_pipeline = Figure("pipeline", "throughput (stockade up)", "30 msg/s")
    old_budget = Figure("budget", "round trip", "0.9 ms")
    apart = Figure("pipeline-apart", "throughput (roles apart)", "45 msg/s")
    order = ("pipeline", "pipeline-apart", "budget")
    kept = merged([old_pipeline, old_budget], [apart], {"pipeline-apart"}, order)
    assert kept == [old_pipeline, apart, old_budget]


def test_the_pipeline_shapes_are_apart_benches_with_their_own_commands() -> None:
    up, apart = (parser().parse_args(["--shape", shape]) for shape in ("up", "apart"))
    assert parser().parse_args([]).shape == "up"
    assert "--shape" not in command_line(up, "throughput")
    assert "--only throughput --shape apart" in command_line(apart, "throughput")


def test_cpu_per_message_names_each_process_and_the_rest_of_the_machine() -> None:
    before = Cpu({"router": 1.0, "channels": 2.0, "its redis": 0.5}, 0.0, 0.0, 10.0)
    after = Cpu({"router": 1.5, "channels": 3.0, "its redis": 0.75}, 0.25, 0.25, 14.0)
    line = before.per_message_ms(after, 100, 2.0)
    assert line.startswith("router 5.0 (0.25 cores), channels 10.0 (0.50 cores), its redis 2.5")
    assert line.endswith(
        "whole machine 40.0 (2.00 cores), agent containers and other work 17.5 (0.88 cores)"
    )
    assert before.per_message_ms(after, 0, 2.0) == "no messages"


def test_earlier_json_figures_are_read_back(tmp_path: Path) -> None:
    write_json(tmp_path / "r.json", "run", MACHINE, [MISS, MET])
    dated = [dataclasses.replace(f, date=str(MACHINE["date"])) for f in (MISS, MET)]
    assert read_figures(tmp_path / "r.json") == dated
    assert read_figures(tmp_path / "absent.json") == []


def test_an_undated_earlier_figure_takes_its_report_date(tmp_path: Path) -> None:
    undated = {"bench": "cold", "name": "cold start", "result": "0.4 s"}
    report = {"command": "run", "machine": MACHINE, "figures": [undated]}
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert read_figures(tmp_path / "r.json")[0].date == MACHINE["date"]
