"""What an agent sends back on an open turn and fetches for it: replies and files.

A reply is addressed from the turn's own message, never from anything the agent
says; the final one and the turn's ack are one step, so a turn ends exactly once.
A file is handed out only while a message that carries it is open.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.bus import Blobs, Bus, out_stream
from gateway.envelope import reply
from gateway.errors import StaleDelivery
from gateway.mesh._http import read_body
from gateway.mesh._protocol import (
    Rejected,
    no_such_file,
    parse_file_id,
    parse_reply,
    reply_text,
)
from gateway.mesh._turns import OpenTurns
from gateway.settings import MeshSettings

log = logging.getLogger("stockade.mesh")


class Replies:
    """The reply and file endpoints of one agent's door.

    Without `blobs` no file is served (503).
    """

    def __init__(
        self,
        user_id: str,
        bus: Bus,
        turns: OpenTurns,
        settings: MeshSettings,
        blobs: Blobs | None,
    ) -> None:
        self.user_id = user_id
        self._bus = bus
        self._turns = turns
        self._settings = settings
        self._blobs = blobs

    # -- GET /v1/files/{blob} ----------------------------------------------------------

    async def file(self, request: web.Request) -> web.Response:
        try:
            blob = parse_file_id(request.match_info["blob"])
        except Rejected:
            log.warning("%s asked for a file by a malformed id", self.user_id)
            raise
        if not self._turns.holds(blob):
            log.warning(
                "%s asked for file %s..., which no open message of theirs holds",
                self.user_id,
                blob[:12],
            )
            raise no_such_file()
        if self._blobs is None:
            raise Rejected(503, "unavailable", "this mesh keeps no files")
        data = await self._blobs.get(blob)
        if data is None:
            log.info("file %s... of %s expired before it was fetched", blob[:12], self.user_id)
            raise Rejected(410, "gone", "the file expired before it was fetched")
        log.info("file %s... (%d bytes) to %s", blob[:12], len(data), self.user_id)
        return web.Response(body=data, content_type="application/octet-stream")

    # -- POST /v1/reply ----------------------------------------------------------------

    async def reply(self, request: web.Request) -> web.Response:
        request_body = parse_reply(await read_body(request, self._settings.max_request_bytes))
        turn = self._turns.get(request_body.message_id)
        if turn is None:
            raise Rejected(404, "unknown_message", "no open message has this id")
        text = reply_text(request_body.text, self._settings.max_reply_chars)
        stream = out_stream(turn.inbound.channel)
        sent = bool(text.strip())
        if request_body.final:
            self._turns.pop(request_body.message_id)
            try:
                if sent:
                    envelope = reply(turn.inbound, text, "final", self.user_id)
                    # The reply and the ack in one step: the turn is done exactly once.
                    await self._bus.forward(turn.delivery, stream, envelope)
                else:
                    await self._bus.ack(turn.delivery)
            except StaleDelivery:
                raise Rejected(
                    404, "unknown_message", "this message was already finished"
                ) from None
            except BaseException:
                self._turns.restore(request_body.message_id, turn)
                raise
        elif sent:
            turn.replies += 1
            envelope = reply(turn.inbound, text, f"r{turn.replies}", self.user_id)
            await self._bus.publish(stream, envelope, dedupe=envelope.outbound_id)
        log.info(
            "reply from %s to %s (final=%s, sent=%s, %d chars)",
            self.user_id,
            request_body.message_id,
            request_body.final,
            sent,
            len(text),
        )
        return web.json_response({"ok": True, "sent": sent})
