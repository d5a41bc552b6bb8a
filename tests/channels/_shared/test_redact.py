"""Secrets masked in log records: in the message and its arguments, the traceback and
the stack, on the named loggers only, once per logger."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from channels._shared.redact import Redact, RedactMatches, redact
from tests.channels.log_secrets import DebugLog, debug_log

SECRET = "s3cr3t-canary-0123456789"


@pytest.fixture
def log() -> Iterator[DebugLog]:
    with debug_log() as captured:
        yield captured


@pytest.fixture
def sdk(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A logger of its own for each test, its filters removed after."""
    logger = logging.getLogger(f"tests.redact.{request.node.name}")
    yield logger
    logger.filters.clear()


def test_a_secret_in_the_arguments_is_masked_and_the_rest_of_the_line_kept(
    log: DebugLog, sdk: logging.Logger
) -> None:
    redact([sdk.name], Redact(SECRET))
    sdk.debug("GET %s with %r", f"https://api.example/bot{SECRET}/getMe", {"n": 1})
    assert [line.text for line in log.lines] == [
        f"DEBUG {sdk.name}: GET https://api.example/bot<token>/getMe with {{'n': 1}}"
    ]


def test_a_secret_in_a_traceback_or_a_stack_is_masked(log: DebugLog, sdk: logging.Logger) -> None:
    redact([sdk.name], Redact(SECRET, "<secret>"))
    try:
        raise ValueError(f"refused {SECRET}")
    except ValueError:
        sdk.exception("request failed", stack_info=True)
    [line] = log.lines
    assert "ValueError: refused <secret>" in line.text
    assert "Stack (most recent call last)" in line.text
    assert log.holding(SECRET) == []


def test_the_line_is_what_was_logged_even_if_the_object_changes_after(
    log: DebugLog, sdk: logging.Logger
) -> None:
    redact([sdk.name], Redact(SECRET))
    answer = {"result": "ok"}
    sdk.debug("received %s", answer)
    answer["result"] = f"https://files.example/{SECRET}/a.txt"
    assert log.lines[0].text.endswith("received {'result': 'ok'}")


def test_a_pattern_masks_every_match_and_keeps_its_groups(
    log: DebugLog, sdk: logging.Logger
) -> None:
    tokens = RedactMatches(re.compile(r"""(['"]token['"]: ['"])[^'"]+"""), r"\1<token>")
    redact([sdk.name], tokens)
    sdk.debug("event %s", {"id": "1", "token": "aW50ZXJh", "d": {"token": "Y3Rpb24"}})
    assert log.lines[0].text.endswith("{'id': '1', 'token': '<token>', 'd': {'token': '<token>'}}")


def test_only_the_named_logger_is_masked_and_an_equal_filter_is_added_once(
    log: DebugLog, sdk: logging.Logger
) -> None:
    redact([sdk.name], Redact(SECRET))
    redact([sdk.name], Redact(SECRET))
    assert len(sdk.filters) == 1
    logging.getLogger(f"{sdk.name}.child").debug("child %s", SECRET)
    # A logger's filters do not see its children's records: each logger is named.
    assert log.holding(SECRET) == [f"DEBUG {sdk.name}.child: child {SECRET}"]
