"""How long `stockade --help` takes, start to exit (target: under 300 ms).

Run: .venv/bin/python bench/bench_cli.py
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 30
TARGET_MS = 300.0
STOCKADE = Path(sys.executable).with_name("stockade")


def main() -> int:
    subprocess.run(
        [str(STOCKADE), "--help"], check=True, capture_output=True
    )  # warm the page cache
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([str(STOCKADE), "--help"], check=True, capture_output=True)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    median = statistics.median(samples)
    worst = samples[-1]
    print(f"python {platform.python_version()} on {platform.machine()}, {RUNS} runs")
    print(f"stockade --help: median {median:.1f} ms, max {worst:.1f} ms (target < {TARGET_MS} ms)")
    return 0 if median < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
