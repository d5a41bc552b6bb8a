"""Files that come with messages: checked, fetched within a size limit, stored as blobs.

A platform says a file's size and type before we fetch it; both are checked then,
and again on the bytes that arrive, since the first claim may be wrong. Only URLs
under the platform's own file address are fetched, with the platform's credentials:
a message can never make the gateway fetch anything else. The platform may redirect
to its storage (Twilio does): a few https redirects are followed, and the
credentials are never sent to another host. A refused file becomes a line in the
message text, so the person learns what happened through their agent.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urljoin, urlsplit

import aiohttp

from gateway.bus import Blobs
from gateway.envelope import Attachment
from gateway.sanitize import sanitize
from gateway.settings import MediaSettings

MAX_NAME: Final = 120
MAX_REDIRECTS: Final = 3
_REDIRECTS: Final = frozenset((301, 302, 303, 307, 308))
_UNSAFE_NAME: Final = re.compile(r"[\x00-\x1f/\\:*?\"<>|]")
_CHUNK: Final = 65_536


_DEFAULTS: Final = MediaSettings()


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    max_bytes: int = _DEFAULTS.max_bytes
    allowed_types: tuple[str, ...] = _DEFAULTS.allowed_types
    timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file a platform announced, before it is fetched."""

    kind: str
    """"image", "file" or "voice"."""
    name: str
    content_type: str
    url: str
    declared_size: int | None = None


class MediaRefused(Exception):
    """A file was not taken; `str()` is a short reason fit for the person who sent it."""


def media_type(content_type: str) -> str:
    """`content_type` without parameters, lower case ("Image/PNG; x=y" → "image/png")."""
    return content_type.split(";", 1)[0].strip().lower()


def kind_of(content_type: str) -> str:
    """The attachment kind for a media type: audio is kept as a voice note, as the
    platforms send voice messages (audio/ogg and the like)."""
    bare = media_type(content_type)
    if bare.startswith("image/"):
        return "image"
    if bare.startswith("audio/"):
        return "voice"
    return "file"


def type_allowed(content_type: str, policy: MediaPolicy) -> bool:
    bare = media_type(content_type)
    return bool(bare) and any(
        fnmatch.fnmatchcase(bare, pattern) for pattern in policy.allowed_types
    )


def safe_name(name: str, fallback: str) -> str:
    """A file name fit for the agent's workspace: sanitized, no directories, bounded."""
    cleaned = sanitize(name).replace("\n", " ").replace("\t", " ")
    cleaned = cleaned.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    cleaned = _UNSAFE_NAME.sub("_", cleaned).strip(" .")
    if len(cleaned) > MAX_NAME:
        stem, dot, ext = cleaned.rpartition(".")
        cleaned = (
            (stem[: MAX_NAME - len(ext) - 1] + dot + ext)
            if dot and len(ext) <= 10
            else cleaned[:MAX_NAME]
        )
    return cleaned or fallback


def refusal_note(ref: FileRef, reason: str) -> str:
    return f"[{ref.kind} {ref.name!r} was not received: {reason}]"


def check_announced(ref: FileRef, policy: MediaPolicy) -> None:
    """Refuse before fetching what the platform already says is too big or not allowed."""
    if ref.declared_size is not None and ref.declared_size > policy.max_bytes:
        raise MediaRefused(f"larger than {_mb(policy.max_bytes)}")
    if ref.content_type and not type_allowed(ref.content_type, policy):
        raise MediaRefused(f"files of type {media_type(ref.content_type)} are not accepted")


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.0f} MB"


def under(url: str, prefix: str) -> bool:
    """`url` is `prefix` or below it; a prefix is a directory, so "https://api.x.com"
    does not admit "https://api.x.com.evil.org"."""
    if not prefix:
        return False
    directory = prefix if prefix.endswith("/") else prefix + "/"
    return url.startswith(directory)


def credentials_for(
    url: str, first_host: str | None, headers: Mapping[str, str] | None
) -> dict[str, str]:
    """The platform's credentials go only to the platform's own host."""
    return dict(headers or {}) if urlsplit(url).hostname == first_host else {}


def _next_hop(current: str, location: str, first_host: str) -> str:
    target = urljoin(current, location)
    parts = urlsplit(target)
    if parts.scheme != "https" and parts.hostname != first_host:
        raise MediaRefused("the platform redirected it to an unsafe address")
    return target


async def fetch(
    session: aiohttp.ClientSession,
    ref: FileRef,
    policy: MediaPolicy,
    *,
    allowed_prefixes: tuple[str, ...],
    headers: Mapping[str, str] | None = None,
) -> tuple[bytes, str]:
    """The file's bytes and content type, or `MediaRefused`."""
    check_announced(ref, policy)
    if not any(under(ref.url, prefix) for prefix in allowed_prefixes):
        raise MediaRefused("it is not hosted by the platform")
    first_host = urlsplit(ref.url).hostname
    url = ref.url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            async with session.get(
                url,
                headers=credentials_for(url, first_host, headers),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=policy.timeout_s),
            ) as response:
                if response.status in _REDIRECTS and "Location" in response.headers:
                    url = _next_hop(url, response.headers["Location"], first_host or "")
                    continue
                return await _read(response, ref, policy)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise MediaRefused(f"it could not be downloaded ({type(exc).__name__})") from None
    raise MediaRefused("the platform redirected it too many times")


async def _read(
    response: aiohttp.ClientResponse, ref: FileRef, policy: MediaPolicy
) -> tuple[bytes, str]:
    if response.status != 200:
        raise MediaRefused(f"the platform answered {response.status}")
    declared = response.content_length
    if declared is not None and declared > policy.max_bytes:
        raise MediaRefused(f"larger than {_mb(policy.max_bytes)}")
    content_type = media_type(response.headers.get("Content-Type", "") or ref.content_type)
    if not type_allowed(content_type or "application/octet-stream", policy):
        raise MediaRefused(f"files of type {content_type} are not accepted")
    data = bytearray()
    async for piece in response.content.iter_chunked(_CHUNK):
        data += piece
        if len(data) > policy.max_bytes:
            raise MediaRefused(f"larger than {_mb(policy.max_bytes)}")
    return bytes(data), content_type or "application/octet-stream"


async def receive_files(
    session: aiohttp.ClientSession,
    refs: list[FileRef],
    policy: MediaPolicy,
    blobs: Blobs,
    *,
    allowed_prefixes: tuple[str, ...],
    headers: Mapping[str, str] | None = None,
) -> tuple[tuple[Attachment, ...], list[str]]:
    """Fetch and store each announced file: the attachments, and a note per refusal."""
    attachments: list[Attachment] = []
    notes: list[str] = []
    for index, ref in enumerate(refs, start=1):
        try:
            data, content_type = await fetch(
                session, ref, policy, allowed_prefixes=allowed_prefixes, headers=headers
            )
        except MediaRefused as refused:
            notes.append(refusal_note(ref, str(refused)))
            continue
        blob = await blobs.put(data)
        attachments.append(
            Attachment(
                kind=ref.kind,
                name=safe_name(ref.name, f"{ref.kind}-{index}"),
                content_type=content_type,
                size=len(data),
                blob=blob,
            )
        )
    return tuple(attachments), notes


def with_notes(text: str, notes: list[str]) -> str:
    return "\n".join([text, *notes]) if text else "\n".join(notes)
