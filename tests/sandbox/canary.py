"""Searching bytes for a canary secret in every encoding a leak is likely to take.

Raw, base64 (standard and URL-safe, at each of the three byte alignments it can sit
at inside a longer encoded text), hex in either case, URL-encoded (percent escapes in
either case, and the form encoding's "+" for spaces) and JSON-escaped. Streams are
searched chunk by chunk, with an overlap, so a hit split across chunks is still found.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

_CONTEXT = 40


def _base64_forms(secret: bytes) -> set[bytes]:
    """The part of base64 text that depends on `secret` alone, for each alignment.

    Character i of the encoding covers bits 6i..6i+5; it is the secret's alone when
    those bits all fall inside the secret's bytes.
    """
    forms: set[bytes] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret).rstrip(b"=")
        start = -(-8 * shift // 6)
        end = 8 * (shift + len(secret)) // 6
        core = encoded[start:end]
        forms.add(core)
        forms.add(core.translate(bytes.maketrans(b"+/", b"-_")))
    return forms


def encodings(secret: str) -> dict[str, bytes]:
    """Every searched form of `secret`, by a name that says which it is."""
    raw = secret.encode()
    forms: dict[str, bytes] = {
        "raw": raw,
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "url": quote(secret, safe="").encode(),
        "url-lower": re.sub(
            r"%[0-9A-F]{2}", lambda m: m[0].lower(), quote(secret, safe="")
        ).encode(),
        "url-form": quote_plus(secret, safe="").encode(),
        "json": json.dumps(secret)[1:-1].encode(),
        "json-slashes": json.dumps(secret)[1:-1].replace("/", "\\/").encode(),
    }
    for index, form in enumerate(sorted(_base64_forms(raw))):
        forms[f"base64-{index}"] = form
    return forms


class Scanner:
    """Finds the forms of one secret in bytes fed to it, in one pass per chunk."""

    def __init__(self, secret: str) -> None:
        self._forms = encodings(secret)
        self._names: dict[bytes, str] = {}
        for name, form in self._forms.items():
            self._names.setdefault(form, name)
        alternatives = sorted(set(self._forms.values()), key=len, reverse=True)
        self._pattern = re.compile(b"|".join(re.escape(form) for form in alternatives))
        self._keep = max(len(form) for form in alternatives) - 1
        self._tail = b""
        self._offset = 0
        self.hits: list[str] = []

    def feed(self, chunk: bytes, where: str = "") -> None:
        data = self._tail + chunk
        start = self._offset - len(self._tail)
        for match in self._pattern.finditer(data):
            # A hit wholly inside the kept tail was reported with the previous chunk.
            if match.end() <= len(self._tail):
                continue
            around = data[max(0, match.start() - _CONTEXT) : match.end() + _CONTEXT]
            self.hits.append(
                f"{where or 'stream'} @{start + match.start()} "
                f"[{self._names[match[0]]}]: {around!r}"
            )
        self._offset += len(chunk)
        self._tail = data[-self._keep :] if self._keep else b""

    def scan(self, chunks: Iterable[bytes], where: str = "") -> list[str]:
        """Feed a whole stream (from its start) and return the hits found in it."""
        self._tail, self._offset, before = b"", 0, len(self.hits)
        for chunk in chunks:
            self.feed(chunk, where)
        self._tail, self._offset = b"", 0
        return self.hits[before:]


def hits(secret: str, data: bytes | str, where: str = "") -> list[str]:
    """The places `secret` occurs in `data`, in any of its encodings."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return Scanner(secret).scan([raw], where)
