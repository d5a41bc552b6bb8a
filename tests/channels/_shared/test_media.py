"""Media intake against a local file server: limits on the claim and on the bytes, types,
names, and no fetch outside the platform's own address."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from channels._shared.media import (
    FileRef,
    MediaPolicy,
    credentials_for,
    kind_of,
    media_type,
    receive_files,
    safe_name,
    type_allowed,
    with_notes,
)
from gateway.bus import Blobs, blob_id
from gateway.envelope import Attachment

POLICY = MediaPolicy(max_bytes=1024, allowed_types=("image/*", "text/plain"))


class Files:
    """A platform's file host: serves registered bytes, counts every request."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, bool]] = {}
        self.requests: list[str] = []
        self.auth: list[str] = []
        self.base = ""

    def add(self, path: str, data: bytes, ctype: str, *, length: bool = True) -> str:
        self.files[path] = (data, ctype, length)
        return f"{self.base}/files/{path}"

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        name = request.match_info["name"]
        self.auth.append(request.headers.get("Authorization", ""))
        if name == "moved":
            raise web.HTTPFound("/files/a.png")
        if name == "loop":
            raise web.HTTPFound("/files/loop")
        if name == "away":
            raise web.HTTPFound(f"http://localhost:{request.url.port}/files/a.png")
        data, ctype, length = self.files[name]
        if length:
            return web.Response(body=data, content_type=ctype)
        response = web.StreamResponse(headers={"Content-Type": ctype})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(data), 256):
            await response.write(data[start : start + 256])
        await response.write_eof()
        return response


@pytest.fixture
async def host() -> AsyncIterator[Files]:
    files = Files()
    app = web.Application()
    app.router.add_get("/files/{name}", files.serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    files.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield files
    await runner.cleanup()


async def intake(
    host: Files, redis: aioredis.Redis, refs: list[FileRef]
) -> tuple[tuple[Attachment, ...], list[str]]:
    async with aiohttp.ClientSession() as session:
        return await receive_files(
            session,
            refs,
            POLICY,
            Blobs(redis),
            allowed_prefixes=(f"{host.base}/files",),
            headers={"Authorization": "Bearer platform-token"},
        )


async def test_an_allowed_file_is_stored_as_a_blob(host: Files, redis: aioredis.Redis) -> None:
    url = host.add("a.png", b"\x89PNG" + b"0" * 100, "image/png")
    attachments, notes = await intake(host, redis, [FileRef("image", "a.png", "image/png", url)])
    assert notes == []
    [attachment] = attachments
    assert attachment.kind == "image" and attachment.name == "a.png"
    assert attachment.content_type == "image/png" and attachment.size == 104
    assert attachment.blob == blob_id(b"\x89PNG" + b"0" * 100)
    assert await Blobs(redis).get(attachment.blob) == b"\x89PNG" + b"0" * 100


async def test_a_file_announced_too_large_is_refused_without_a_fetch(
    host: Files, redis: aioredis.Redis
) -> None:
    url = host.add("big.png", b"0" * 10, "image/png")
    ref = FileRef("image", "big.png", "image/png", url, declared_size=4096)
    attachments, [note] = await intake(host, redis, [ref])
    assert attachments == ()
    assert "big.png" in note and "larger than" in note
    assert host.requests == []


async def test_bytes_beyond_the_limit_are_refused_even_when_the_claim_was_small(
    host: Files, redis: aioredis.Redis
) -> None:
    url = host.add("lie.txt", b"z" * 4000, "text/plain", length=False)
    ref = FileRef("file", "lie.txt", "text/plain", url, declared_size=10)
    attachments, [note] = await intake(host, redis, [ref])
    assert attachments == () and "larger than" in note
    assert [k async for k in redis.scan_iter(match="stockade:blob:*")] == []


async def test_a_type_outside_the_allowlist_is_refused_before_or_after_the_fetch(
    host: Files, redis: aioredis.Redis
) -> None:
    announced = FileRef("file", "x.exe", "application/x-msdownload", host.add("x.exe", b"MZ", "x"))
    disguised = FileRef("file", "y.png", "image/png", host.add("y.png", b"MZ", "application/x-sh"))
    attachments, notes = await intake(host, redis, [announced, disguised])
    assert attachments == ()
    assert "application/x-msdownload" in notes[0] and "application/x-sh" in notes[1]
    assert host.requests == ["/files/y.png"]


async def test_urls_off_the_platform_are_never_fetched(host: Files, redis: aioredis.Redis) -> None:
    host.add("a.png", b"png", "image/png")
    elsewhere = FileRef("image", "a.png", "image/png", f"{host.base}/other/a.png")
    lookalike = FileRef("image", "a.png", "image/png", f"{host.base}/filesystem/a.png")
    attachments, notes = await intake(host, redis, [elsewhere, lookalike])
    assert attachments == ()
    assert all("not hosted by the platform" in note for note in notes)
    assert host.requests == []


async def test_a_redirect_on_the_platform_is_followed_with_its_credentials(
    host: Files, redis: aioredis.Redis
) -> None:
    host.add("a.png", b"png", "image/png")
    ref = FileRef("image", "m.png", "image/png", f"{host.base}/files/moved")
    attachments, notes = await intake(host, redis, [ref])
    assert notes == [] and attachments[0].size == 3
    assert host.requests == ["/files/moved", "/files/a.png"]
    assert host.auth == ["Bearer platform-token"] * 2


async def test_unsafe_and_endless_redirects_are_refused(host: Files, redis: aioredis.Redis) -> None:
    host.add("a.png", b"png", "image/png")
    away = FileRef("image", "x.png", "image/png", f"{host.base}/files/away")
    loop = FileRef("image", "y.png", "image/png", f"{host.base}/files/loop")
    attachments, notes = await intake(host, redis, [away, loop])
    assert attachments == ()
    assert "unsafe address" in notes[0]
    assert "too many times" in notes[1]
    assert host.requests.count("/files/loop") == 4


def test_credentials_go_only_to_the_first_host() -> None:
    token = {"Authorization": "Basic x"}
    assert credentials_for("https://api.twilio.com/m/1", "api.twilio.com", token) == token
    assert credentials_for("https://cdn.example.net/m/1", "api.twilio.com", token) == {}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.bat", "evil.bat"),
        ("a\u202egnp.exe", "agnp.exe"),
        ("zero\u200bwidth.txt", "zerowidth.txt"),
        ('what?*<>|".txt', "what______.txt"),
        ("...", "file-1"),
        ("", "file-1"),
        ("фото_кота.jpg", "фото_кота.jpg"),
    ],
)
def test_file_names_are_made_safe(name: str, expected: str) -> None:
    assert safe_name(name, "file-1") == expected


def test_long_names_keep_their_extension() -> None:
    name = safe_name("a" * 500 + ".jpeg", "x")
    assert len(name) == 120 and name.endswith(".jpeg")


def test_media_types_match_with_wildcards_and_without_parameters() -> None:
    assert media_type("Image/PNG; charset=x") == "image/png"
    assert type_allowed("image/webp", POLICY)
    assert type_allowed("text/plain; charset=utf-8", POLICY)
    assert not type_allowed("text/html", POLICY)
    assert not type_allowed("", POLICY)


def test_notes_follow_the_text() -> None:
    assert with_notes("hi", ["[a]", "[b]"]) == "hi\n[a]\n[b]"
    assert with_notes("", ["[a]"]) == "[a]"


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("image/png", "image"),
        ("Image/JPEG; x=1", "image"),
        ("audio/ogg; codecs=opus", "voice"),
        ("application/pdf", "file"),
        ("", "file"),
    ],
)
def test_an_attachment_kind_follows_its_media_type(content_type: str, kind: str) -> None:
    assert kind_of(content_type) == kind
