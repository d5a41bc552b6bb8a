"""Receiving a message's files: Telegram's file ids resolved to URLs, then fetched into blobs.

A file larger than the media policy allows is not resolved at all; `receive_files`
refuses it from its announced size, with a note the agent reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import aiohttp
from telegram import Bot

from channels._shared.media import FileRef, receive_files, refusal_note
from channels.telegram import convert
from channels.telegram._errors import call
from gateway.envelope import Inbound
from gateway.errors import PlatformError

if TYPE_CHECKING:
    from channels._shared.media import MediaPolicy
    from gateway.bus import Blobs

log = logging.getLogger("stockade.channels.telegram")


async def with_received_files(
    inbound: Inbound,
    files: Sequence[convert.FileInfo],
    *,
    bot: Bot,
    token: str,
    file_prefix: str,
    session: aiohttp.ClientSession,
    media: MediaPolicy,
    blobs: Blobs,
) -> Inbound:
    """`inbound` with `files` attached, and a note for each that was not received."""
    refs: list[FileRef] = []
    notes: list[str] = []
    for info in files:
        url = ""
        if info.size is None or info.size <= media.max_bytes:
            try:
                url = (await call(bot.get_file(info.file_id), token)).file_path or ""
            except PlatformError as exc:
                log.info("telegram: a file was not resolved (%s)", type(exc).__name__)
                notes.append(
                    refusal_note(convert.file_ref(info, ""), "Telegram did not provide it")
                )
                continue
        refs.append(convert.file_ref(info, url))
    attachments, refused = await receive_files(
        session,
        refs,
        media,
        blobs,
        # A directory prefix: ".../file/bot" would not admit ".../file/bot<token>/...".
        allowed_prefixes=(f"{file_prefix}{token}/",),
    )
    return convert.with_files(inbound, attachments, notes + refused)
