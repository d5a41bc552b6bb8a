"""Secrets masked in the records of the SDK loggers that would write them.

Operators troubleshoot at DEBUG, where SDKs log request URLs, parameters and whole
payloads. A filter here rewrites each record of the logger it is added to, leaving
the SDK's debug output otherwise whole. A logger's filters see only the records
logged on that logger itself, not those of its children, so each one that writes a
secret is named. The filter must be in place before the SDK's first record: add it
before the SDK client is created.

The record is rendered here, once (its message with its arguments, its traceback and
stack): an SDK may log an object it changes afterwards, which a handler formatting
later would show changed. Filters are equal when their secrets are, so a logger never
gets the same one twice.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable

_TRACEBACKS = logging.Formatter()


def _rewrite(record: logging.LogRecord, edit: Callable[[str], str]) -> None:
    record.msg, record.args = edit(record.getMessage()), ()
    if record.exc_info and not record.exc_text:
        # Formatters use a rendered traceback as it is: this one is what they write.
        record.exc_text = _TRACEBACKS.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = edit(record.exc_text)
    if record.stack_info:
        record.stack_info = edit(record.stack_info)


@dataclasses.dataclass(frozen=True)
class Redact(logging.Filter):
    """Replaces a secret known in advance (a token from the settings) with `mask`."""

    secret: str
    mask: str = "<token>"

    def filter(self, record: logging.LogRecord) -> bool:
        _rewrite(record, lambda text: text.replace(self.secret, self.mask))
        return True


@dataclasses.dataclass(frozen=True)
class RedactMatches(logging.Filter):
    """Replaces each match of `pattern`, for secrets the platform hands out as it goes
    (per-event tokens, one-time URLs); `replacement` may refer to the pattern's groups."""

    pattern: re.Pattern[str]
    replacement: str

    def filter(self, record: logging.LogRecord) -> bool:
        _rewrite(record, lambda text: self.pattern.sub(self.replacement, text))
        return True


def redact(loggers: Iterable[str], secret: logging.Filter) -> None:
    """Adds the filter `secret` to each of the named loggers."""
    for name in loggers:
        logging.getLogger(name).addFilter(secret)
