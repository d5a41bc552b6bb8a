"""Which Debian mirror apt uses on this machine: parsing of one-line and deb822 sources.

The offline base image is bootstrapped from that mirror and nothing else, so
building it sends traffic nowhere this machine does not already fetch packages from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ImageBuildError

# Schemes debootstrap can fetch from; apt's others (cdrom:, mirror+http:, tor+http:) it cannot.
_SCHEMES = ("http://", "https://", "file:/")


@dataclass(frozen=True, slots=True)
class AptSource:
    """One `deb` line, or one deb822 stanza: binary packages from `uris` for `suites`."""

    uris: tuple[str, ...]
    suites: tuple[str, ...]


def parse_one_line(text: str) -> list[AptSource]:
    """The `deb` entries of a sources.list file; `deb-src` and comments are skipped."""
    found: list[AptSource] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        rest = words[1:]
        if rest and rest[0].startswith("["):
            # Options: "[arch=amd64 signed-by=/k.gpg]" or "[ arch=amd64 ]", maybe split in words.
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            found.append(AptSource(uris=(rest[0],), suites=(rest[1],)))
    return found


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                stanzas.append(fields)
            fields, last = {}, None
        elif raw[0] in " \t":
            if last is not None:
                fields[last] += " " + raw.strip()
        elif ":" in raw:
            name, value = raw.split(":", 1)
            last = name.strip().lower()
            fields[last] = value.strip()
    return stanzas


def parse_deb822(text: str) -> list[AptSource]:
    """The stanzas of a .sources file that give binary packages and are not disabled."""
    found: list[AptSource] = []
    for fields in _stanzas(text):
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        uris, suites = fields.get("uris", "").split(), fields.get("suites", "").split()
        if uris and suites:
            found.append(AptSource(uris=tuple(uris), suites=tuple(suites)))
    return found


def _read_sources(sources_dir: Path) -> list[AptSource]:
    # apt's own order: sources.list first, then sources.list.d/ in name order.
    found: list[AptSource] = []
    main = sources_dir / "sources.list"
    if main.is_file():
        found += parse_one_line(main.read_text(encoding="utf-8", errors="replace"))
    parts = sources_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list" and path.is_file():
                found += parse_one_line(path.read_text(encoding="utf-8", errors="replace"))
            elif path.suffix == ".sources" and path.is_file():
                found += parse_deb822(path.read_text(encoding="utf-8", errors="replace"))
    return found


def pick_mirror(sources: list[AptSource], suite: str) -> str | None:
    """The first usable URI that serves `suite`; else the first Debian archive ("…/debian").

    The fallback lets a host on a newer release build a bookworm base from its own
    mirror: a Debian archive carries every current suite.
    """
    usable = [
        (uri.rstrip("/"), source)
        for source in sources
        for uri in source.uris
        if uri.startswith(_SCHEMES)
    ]
    for uri, source in usable:
        if suite in source.suites:
            return uri
    for uri, _ in usable:
        if uri.endswith("/debian"):
            return uri
    return None


def debian_mirror(suite: str, sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt on this machine uses for `suite`; `ImageBuildError` if none."""
    mirror = pick_mirror(_read_sources(sources_dir), suite)
    if mirror is None:
        raise ImageBuildError(
            f"no Debian mirror for suite {suite!r} in {sources_dir}/sources.list(.d); "
            "set image.debian_mirror, or image.base_image to build on a registry image"
        )
    return mirror
