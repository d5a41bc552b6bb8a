"""Throughput of gateway.sanitize (targets: >= 20 MB/s on mixed multilingual text, and a
benign ~60-character ASCII message in under 5 us).

Run: .venv/bin/python bench/bench_sanitize.py
"""

from __future__ import annotations

import platform
import sys
import time
import timeit
import unicodedata
from collections.abc import Callable
from pathlib import Path

import regex

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.gateway.sanitize_corpus

from gateway._sanitize_tables import regex_unicode_version
from gateway.sanitize import detect_control_tokens, sanitize
from tests.gateway.sanitize_corpus import ATTACKS, BENIGN

TARGET_MB_S = 20.0
TARGET_ASCII_US = 5.0
CORPUS_BYTES = 5_000_000
RUNS = 5
ASCII_MESSAGE = "Hey, can you summarise the meeting notes from Tuesday please?"


def _repeat_to(messages: list[str], size: int) -> list[str]:
    out: list[str] = []
    total = 0
    while total < size:
        for message in messages:
            out.append(message)
            total += len(message.encode("utf-8", "surrogatepass"))
    return out


def _size(messages: list[str]) -> int:
    return sum(len(m.encode("utf-8", "surrogatepass")) for m in messages)


def _best_seconds(work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def _mb_s(messages: list[str], function: Callable[[str], object]) -> float:
    seconds = _best_seconds(lambda: [function(m) for m in messages])
    return _size(messages) / 1e6 / seconds


def main() -> int:
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(
        f"regex {regex.__version__} (Unicode {regex_unicode_version()}); "
        f"unicodedata Unicode {unicodedata.unidata_version}"
    )

    benign = _repeat_to(BENIGN, CORPUS_BYTES)
    one_text = "\n".join(benign)
    assert sanitize(one_text) is one_text, "the benign corpus must pass unchanged"
    print(f"benign corpus: {len(BENIGN)} distinct messages, {_size(benign) / 1e6:.1f} MB")
    whole = _size([one_text]) / 1e6 / _best_seconds(lambda: sanitize(one_text))
    per_message = _mb_s(benign, sanitize)
    print(f"  sanitize, as one string:      {whole:7.1f} MB/s")
    print(f"  sanitize, message by message: {per_message:7.1f} MB/s")

    hostile = _repeat_to([a.text for a in ATTACKS], CORPUS_BYTES // 5)
    hostile_text = "\n".join(hostile)
    hostile_whole = _size([hostile_text]) / 1e6 / _best_seconds(lambda: sanitize(hostile_text))
    print(f"hostile corpus: {len(ATTACKS)} distinct attacks, {_size(hostile) / 1e6:.1f} MB")
    print(f"  sanitize, as one string:      {hostile_whole:7.1f} MB/s")
    print(f"  sanitize, message by message: {_mb_s(hostile, sanitize):7.1f} MB/s")
    detect = _mb_s(benign[: len(benign) // 10], detect_control_tokens)
    print(f"detect_control_tokens, benign messages: {detect:7.1f} MB/s")

    number = 200_000
    seconds = min(timeit.repeat(lambda: sanitize(ASCII_MESSAGE), number=number, repeat=RUNS))
    ascii_us = seconds / number * 1e6
    print(f"benign {len(ASCII_MESSAGE)}-char ASCII message: {ascii_us:.3f} us per call")

    missed = []
    if min(whole, per_message) < TARGET_MB_S:
        missed.append(f"multilingual throughput below {TARGET_MB_S} MB/s")
    if ascii_us >= TARGET_ASCII_US:
        missed.append(f"ASCII message at or above {TARGET_ASCII_US} us")
    for miss in missed:
        print(f"TARGET MISSED: {miss}")
    if not missed:
        print(f"targets met: >= {TARGET_MB_S} MB/s, < {TARGET_ASCII_US} us")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
