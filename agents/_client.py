"""The agent's client for the mesh: HTTP/1.1 and JSON over the one unix socket it is given.

The mesh may restart; a socket that is missing or refuses connections is waited
for with a short, capped backoff. Errors form one small tree:

    MeshError               the mesh could not be used for this request
    ├── MeshUnavailable     no connection, or it broke before an answer came
    └── MeshRefused         the mesh answered with an HTTP error; carries status and message
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

BACKOFF_MIN_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
REQUEST_TIMEOUT_S: Final = 300.0
"""Longest wait for one answer; the mesh bounds model calls well below it."""
GIVE_UP_S: Final = 120.0
"""How long a reply or model call waits for an unreachable mesh before failing."""
_ERROR_BODY_MAX: Final = 65_536
_BLOB_ID: Final = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("agents.mesh")


class MeshError(Exception):
    """The mesh could not be used for this request."""


class MeshUnavailable(MeshError):
    """No connection to the mesh, or it broke before the answer arrived."""


class MeshRefused(MeshError):
    """The mesh answered with an HTTP error status."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        self.status = status
        self.kind = kind
        self.message = message
        super().__init__(f"{status} {kind}: {message}")


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with a message; `MeshClient.file` fetches it while the message is open."""

    id: str
    kind: str
    """"image", "file" or "voice"."""
    name: str
    """The sender's file name: sanitized by the gateway, still not a safe path."""
    type: str
    size: int


@dataclass(frozen=True, slots=True)
class Message:
    """One message from the agent's user."""

    id: str
    text: str
    sender_name: str
    channel: str
    received_at: float
    attachments: tuple[Attachment, ...] = ()


def _attachments(value: Any) -> tuple[Attachment, ...]:
    """The `attachments` of a next message; MeshError when one has a field of the wrong type."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise MeshError("the next message's attachments are not a list of objects")
    found = []
    for item in value:
        fields = (item.get("id"), item.get("kind"), item.get("name"), item.get("type"))
        size = item.get("size")
        if not all(isinstance(f, str) for f in fields) or not (
            isinstance(size, int) and not isinstance(size, bool) and size >= 0
        ):
            raise MeshError("an attachment of the next message has a field of the wrong type")
        ident, kind, name, content_type = (str(f) for f in fields)
        found.append(Attachment(ident, kind, name, content_type, size))
    return tuple(found)


class UnixHTTPConnection(http.client.HTTPConnection):
    """`http.client` over a unix socket: the host name is only for the Host header."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: Any


@dataclass(frozen=True, slots=True)
class _Raw:
    status: int
    body: bytes


def _json(raw: _Raw) -> _Answer:
    if raw.status == 204 or not raw.body:
        return _Answer(raw.status, None)
    try:
        return _Answer(raw.status, json.loads(raw.body))
    except (UnicodeDecodeError, ValueError):
        raise MeshError(f"the mesh answered {raw.status} with a body that is not JSON") from None


def _refused(answer: _Answer) -> MeshRefused:
    kind, message = "http_error", f"status {answer.status}"
    if isinstance(answer.body, dict) and isinstance(answer.body.get("error"), dict):
        error = answer.body["error"]
        if isinstance(error.get("type"), str):
            kind = error["type"]
        if isinstance(error.get("message"), str):
            message = error["message"]
    return MeshRefused(answer.status, kind, message)


class MeshClient:
    """Requests to the mesh; each opens a fresh connection, so a restarted mesh is no matter."""

    def __init__(
        self,
        socket_path: str,
        *,
        give_up_s: float = GIVE_UP_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._path = socket_path
        self._give_up_s = give_up_s
        self._sleep = sleep

    def _once(
        self, method: str, target: str, payload: Any, timeout: float, limit: int | None
    ) -> _Raw:
        """One request. `ConnectionError`-like `OSError`s before sending mean nothing was sent.

        At most `limit` bytes of the answer are read when it is given.
        """
        connection = UnixHTTPConnection(self._path, timeout)
        try:
            connection.connect()
            try:
                headers = {"Accept": "application/json"}
                body: bytes | None = None
                if payload is not None:
                    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                    headers["Content-Type"] = "application/json"
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                raw = response.read() if limit is None else response.read(limit)
            except (OSError, http.client.HTTPException) as exc:
                raise MeshUnavailable(f"the connection broke: {type(exc).__name__}") from None
        finally:
            connection.close()
        return _Raw(response.status, raw)

    def _request(
        self,
        method: str,
        target: str,
        payload: Any = None,
        *,
        timeout: float = REQUEST_TIMEOUT_S,
        forever: bool = False,
    ) -> _Answer:
        """A request with a JSON answer; see `_request_raw`."""
        return _json(self._request_raw(method, target, payload, timeout=timeout, forever=forever))

    def _request_raw(
        self,
        method: str,
        target: str,
        payload: Any = None,
        *,
        timeout: float = REQUEST_TIMEOUT_S,
        forever: bool = False,
        limit: int | None = None,
    ) -> _Raw:
        """A request, retried while the socket is missing or refuses (nothing was sent then)."""
        backoff = BACKOFF_MIN_S
        started = time.monotonic()
        complained = False
        while True:
            try:
                return self._once(method, target, payload, timeout, limit)
            except OSError as exc:
                if not forever and time.monotonic() - started > self._give_up_s:
                    raise MeshUnavailable(
                        f"the mesh is unreachable: {type(exc).__name__}"
                    ) from None
                if not complained:
                    log.warning("the mesh is unreachable (%s); retrying", type(exc).__name__)
                    complained = True
                self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def next(self, wait_s: float) -> Message | None:
        """The user's next message, or None when none came within `wait_s` seconds."""
        answer = self._request(
            "GET", f"/v1/next?wait={quote(f'{wait_s:g}')}", timeout=wait_s + 30, forever=True
        )
        if answer.status == 204:
            return None
        if answer.status != 200:
            raise _refused(answer)
        body = answer.body
        if not isinstance(body, dict):
            raise MeshError("the next message is not a JSON object")
        try:
            message = Message(
                id=body["id"],
                text=body["text"],
                sender_name=body.get("sender_name", ""),
                channel=body.get("channel", ""),
                received_at=float(body.get("received_at", 0.0)),
                attachments=_attachments(body.get("attachments")),
            )
        except (KeyError, TypeError, ValueError):
            raise MeshError("the next message lacks a field or has a wrong type") from None
        for value in (message.id, message.text, message.sender_name, message.channel):
            if not isinstance(value, str):
                raise MeshError("the next message has a field of the wrong type")
        return message

    def file(self, attachment: Attachment) -> bytes:
        """The bytes of an attachment of an open message; exactly what was announced, or an error.

        `MeshRefused` when the mesh will not hand it out (404 not an open message's
        file, 410 expired); `MeshError` when the bytes are not the announced size or
        do not hash to the attachment's id.
        """
        if _BLOB_ID.fullmatch(attachment.id) is None:
            raise MeshError("the attachment's id is not a blob id")
        # One byte past the announced size tells that more was sent; an error's JSON
        # body may be longer than a small file.
        raw = self._request_raw(
            "GET", f"/v1/files/{attachment.id}", limit=max(attachment.size + 1, _ERROR_BODY_MAX)
        )
        if raw.status != 200:
            raise _refused(_json(raw))
        if len(raw.body) != attachment.size:
            raise MeshError(
                f"the file is not the {attachment.size} bytes announced"
                f"{' (it is larger)' if len(raw.body) > attachment.size else ''}"
            )
        if hashlib.sha256(raw.body).hexdigest() != attachment.id:
            raise MeshError("the file's bytes do not match its id")
        return raw.body

    def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI-style chat completion through the mesh; `MeshRefused` on any error status."""
        answer = self._request("POST", "/v1/chat/completions", request)
        if answer.status != 200:
            raise _refused(answer)
        if not isinstance(answer.body, dict):
            raise MeshError("the model's answer is not a JSON object")
        return answer.body

    def reply(self, message_id: str, text: str, *, final: bool) -> bool:
        """Send a reply; False when the mesh no longer knows the message (already finished)."""
        payload = {"id": message_id, "text": text, "final": final}
        backoff = BACKOFF_MIN_S
        started = time.monotonic()
        while True:
            try:
                answer = self._request("POST", "/v1/reply", payload)
            except MeshUnavailable:
                # The reply may or may not have arrived; sending it again is safe: a
                # finished message answers 404.
                if time.monotonic() - started > self._give_up_s:
                    raise
                self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if answer.status == 200:
                return True
            if answer.status == 404:
                return False
            if answer.status >= 500 and time.monotonic() - started <= self._give_up_s:
                self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            raise _refused(answer)
