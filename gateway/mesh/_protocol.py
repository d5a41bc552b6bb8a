"""The mesh's wire protocol as pure functions: parse and check agent requests, build answers.

Everything an agent sends is data. Request bodies are JSON only; each one is
parsed into typed values here, and only allowlisted fields survive. Failures
are `Rejected`, which the server turns into a JSON error with its status:

    StockadeError
    └── Rejected          a request the mesh refuses; carries status, type and message
        └── ProviderFailed  the model provider failed or timed out (502, scrubbed)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.envelope import Inbound
from gateway.errors import StockadeError
from gateway.sanitize import sanitize

ROLES: Final = frozenset(("system", "user", "assistant", "tool"))
TOOL_CHOICES: Final = frozenset(("none", "auto", "required"))

# Bounds on the shape of a chat request; the byte limit on the whole body comes
# from MeshSettings. These only keep a hostile agent from making the mesh walk
# huge structures: real conversations and tool sets stay far below them.
MAX_MESSAGES: Final = 2_000
MAX_TOOLS: Final = 128
MAX_TOOL_CALLS: Final = 128
MAX_CONTENT_PARTS: Final = 256
MAX_STOP: Final = 4
MAX_NAME_CHARS: Final = 256

# Fields and headers by which a caller could choose a key, an endpoint or a provider:
# an agent sending one is refused outright, so a confused agent learns why at once
# rather than having its choice silently dropped.
_STEERING_FIELD: Final = re.compile(
    r"key|secret|token|credential|password|auth|url|base|header|provider|organi[sz]ation"
    r"|project|region|location|deployment|proxy|model_list|mock|^extra_",
    re.IGNORECASE,
)
_HARMLESS_FIELDS: Final = frozenset(("max_tokens", "max_completion_tokens"))
CREDENTIAL_HEADERS: Final = frozenset(
    (
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "openai-organization",
        "openai-project",
    )
)

CUT_NOTE: Final = "\n\n[reply shortened: it was longer than {limit} characters]"


class Rejected(StockadeError):
    """A request the mesh refuses; `kind` is the error type the agent sees."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        self.status = status
        self.kind = kind
        self.message = message
        super().__init__(f"{status} {kind}: {message}")


class ProviderFailed(Rejected):
    """The provider call failed; the message never quotes the provider, its URL or a key."""

    retryable = True

    def __init__(
        self,
        provider_status: int | None,
        *,
        timed_out: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        self.provider_status = provider_status
        self.timed_out = timed_out
        self.retry_after_s = retry_after_s
        """How long the provider asked us to wait (its Retry-After); never sent to the agent."""
        if timed_out:
            message = "the model provider did not answer in time"
        elif provider_status is None:
            message = "the model provider could not be reached"
        else:
            message = f"the model provider answered with status {provider_status}"
        super().__init__(502, "provider_error", message)


def _bad(message: str) -> Rejected:
    return Rejected(400, "invalid_request", message)


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body; 400 when it is not UTF-8 JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad("the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _bad(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except (ValueError, RecursionError):
        # Integers past the interpreter's digit limit; arrays nested thousands deep.
        raise _bad("the body is JSON the mesh does not accept (too deep or too large)") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a JSON object")
    return value


def _string(value: Any, where: str, *, max_chars: int | None = None) -> str:
    if not isinstance(value, str):
        raise _bad(f"{where} must be a string")
    if max_chars is not None and len(value) > max_chars:
        raise _bad(f"{where} is longer than {max_chars} characters")
    return value


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{where} must be a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise _bad(f"{where} must be between {low:g} and {high:g}")
    return number


# -- GET /v1/next ----------------------------------------------------------------------


def parse_wait(raw: str | None, limit_s: float) -> float:
    """Seconds a request for the next message may wait: `wait`, at most `limit_s`."""
    if raw is None:
        return limit_s
    try:
        wait = float(raw)
    except ValueError:
        raise _bad("wait must be a number of seconds") from None
    if not math.isfinite(wait) or wait < 0:
        raise _bad("wait must be a number of seconds, zero or more")
    return min(wait, limit_s)


def next_body(message_id: str, inbound: Inbound) -> dict[str, Any]:
    """What the agent learns about a message: its text, who sent it and the files with it.

    Nothing to route on: an attachment's `id` is only good for `GET /v1/files/{id}`
    while this message is open.
    """
    return {
        "id": message_id,
        "text": inbound.text,
        "sender_name": inbound.sender_name,
        "channel": inbound.channel,
        "received_at": inbound.received_at,
        "attachments": [
            {
                "id": attachment.blob,
                "kind": attachment.kind,
                "name": attachment.name,
                "type": attachment.content_type,
                "size": attachment.size,
            }
            for attachment in inbound.attachments
        ],
    }


# -- GET /v1/files/{id} ----------------------------------------------------------------

_BLOB_ID: Final = re.compile(r"[0-9a-f]{64}")


def no_such_file() -> Rejected:
    """The one answer for every file an agent may not have: it cannot tell which case it hit."""
    return Rejected(404, "not_found", "no open message of yours has this file")


def parse_file_id(raw: str) -> str:
    """A blob id as the blob store writes them (64 lowercase hex digits); 404 otherwise."""
    if _BLOB_ID.fullmatch(raw) is None:
        raise no_such_file()
    return raw


# -- POST /v1/reply --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    message_id: str
    text: str
    final: bool


def parse_reply(value: Any) -> ReplyRequest:
    body = _object(value, "the body")
    message_id = _string(body.get("id"), "id", max_chars=MAX_NAME_CHARS)
    text = _string(body.get("text"), "text")
    final = body.get("final", True)
    if not isinstance(final, bool):
        raise _bad("final must be true or false")
    return ReplyRequest(message_id, text, final)


def reply_text(raw: str, max_chars: int) -> str:
    """The agent's reply made safe to send: sanitized, and cut with a visible note when long."""
    text = sanitize(raw)
    if len(text) <= max_chars:
        return text
    note = CUT_NOTE.format(limit=max_chars)
    return text[: max(0, max_chars - len(note))] + note


# -- POST /v1/chat/completions ---------------------------------------------------------


def _content_part(value: Any, where: str) -> dict[str, Any]:
    part = _object(value, where)
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": _string(part.get("text"), f"{where}.text")}
    if kind == "image_url":
        image = _object(part.get("image_url"), f"{where}.image_url")
        url = _string(image.get("url"), f"{where}.image_url.url")
        # A remote URL would make the provider fetch it: a way out of the sandbox.
        if not url.startswith("data:"):
            raise _bad(f"{where}.image_url.url must be a data: URL")
        return {"type": "image_url", "image_url": {"url": url}}
    raise _bad(f"{where}.type must be 'text' or 'image_url'")


def _content(value: Any, where: str, *, role: str, may_be_null: bool) -> Any:
    if value is None:
        if not may_be_null:
            raise _bad(f"{where} must not be null")
        return None
    if isinstance(value, str):
        return sanitize(value) if role == "tool" else value
    if isinstance(value, list):
        if not value or len(value) > MAX_CONTENT_PARTS:
            raise _bad(f"{where} must hold 1 to {MAX_CONTENT_PARTS} parts")
        parts = [_content_part(item, f"{where}[{i}]") for i, item in enumerate(value)]
        if role == "tool":
            for part in parts:
                if part["type"] != "text":
                    raise _bad(f"{where}: tool results hold text parts only")
                part["text"] = sanitize(part["text"])
        return parts
    raise _bad(f"{where} must be a string, a list of parts or null")


def _tool_call(value: Any, where: str) -> dict[str, Any]:
    call = _object(value, where)
    if call.get("type", "function") != "function":
        raise _bad(f"{where}.type must be 'function'")
    function = _object(call.get("function"), f"{where}.function")
    return {
        "id": _string(call.get("id"), f"{where}.id", max_chars=MAX_NAME_CHARS),
        "type": "function",
        "function": {
            "name": _string(
                function.get("name"), f"{where}.function.name", max_chars=MAX_NAME_CHARS
            ),
            "arguments": _string(function.get("arguments"), f"{where}.function.arguments"),
        },
    }


def _message(value: Any, where: str) -> dict[str, Any]:
    message = _object(value, where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise _bad(f"{where}.role must be one of {', '.join(sorted(ROLES))}")
    out: dict[str, Any] = {"role": role}
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise _bad(f"{where}.tool_calls is only allowed on assistant messages")
        if not isinstance(calls, list) or not calls or len(calls) > MAX_TOOL_CALLS:
            raise _bad(f"{where}.tool_calls must be a list of 1 to {MAX_TOOL_CALLS} calls")
        out["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(calls)]
    out["content"] = _content(
        message.get("content"),
        f"{where}.content",
        role=role,
        may_be_null=role == "assistant" and calls is not None,
    )
    if role == "tool":
        out["tool_call_id"] = _string(
            message.get("tool_call_id"), f"{where}.tool_call_id", max_chars=MAX_NAME_CHARS
        )
    if "name" in message:
        out["name"] = _string(message["name"], f"{where}.name", max_chars=MAX_NAME_CHARS)
    return out


def _tool(value: Any, where: str) -> dict[str, Any]:
    tool = _object(value, where)
    if tool.get("type") != "function":
        raise _bad(f"{where}.type must be 'function'")
    function = _object(tool.get("function"), f"{where}.function")
    out: dict[str, Any] = {
        "name": _string(function.get("name"), f"{where}.function.name", max_chars=MAX_NAME_CHARS)
    }
    if "description" in function:
        out["description"] = _string(function["description"], f"{where}.function.description")
    if "parameters" in function:
        out["parameters"] = _object(function["parameters"], f"{where}.function.parameters")
    if "strict" in function:
        if not isinstance(function["strict"], bool):
            raise _bad(f"{where}.function.strict must be true or false")
        out["strict"] = function["strict"]
    return {"type": "function", "function": out}


def _tool_choice(value: Any) -> str | dict[str, Any]:
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise _bad(f"tool_choice must be one of {', '.join(sorted(TOOL_CHOICES))}")
        return value
    choice = _object(value, "tool_choice")
    if choice.get("type") != "function":
        raise _bad("tool_choice.type must be 'function'")
    function = _object(choice.get("function"), "tool_choice.function")
    name = _string(function.get("name"), "tool_choice.function.name", max_chars=MAX_NAME_CHARS)
    return {"type": "function", "function": {"name": name}}


def _max_tokens(body: Mapping[str, Any], cap: int) -> int:
    asked = body.get("max_tokens", body.get("max_completion_tokens"))
    if asked is None:
        return cap
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
        raise _bad("max_tokens must be a whole number, 1 or more")
    return min(asked, cap)


def _stop(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_STOP
        or not all(isinstance(item, str) for item in value)
    ):
        raise _bad(f"stop must be a string or a list of 1 to {MAX_STOP} strings")
    return list(value)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    alias: str
    """Which entry of [models] the agent asked for (or the first it may use)."""
    params: dict[str, Any]
    stream: bool = False
    """Answer as server-sent events, chunk by chunk, as OpenAI's API does."""


def refuse_credential_headers(names: Iterable[str]) -> None:
    """403 when a request to the mesh carries a key of its own: the mesh holds the keys."""
    for name in names:
        if name.lower() in CREDENTIAL_HEADERS:
            raise Rejected(
                403, "not_allowed", f"the {name} header is not allowed: the mesh adds the key"
            )


def _refuse_steering(body: Mapping[str, Any]) -> None:
    for name in body:
        if name not in _HARMLESS_FIELDS and _STEERING_FIELD.search(name):
            shown = name[:MAX_NAME_CHARS]
            raise Rejected(
                403,
                "not_allowed",
                f"{shown!r} is not allowed: the mesh chooses the provider, endpoint and key",
            )


def _alias(value: Any, caps: Mapping[str, int]) -> str:
    if value is None:
        return next(iter(caps))
    if isinstance(value, str) and value in caps:
        return value
    shown = value[:80] if isinstance(value, str) else type(value).__name__
    allowed = ", ".join(repr(alias) for alias in caps)
    raise Rejected(
        403, "model_not_allowed", f"model {shown!r} is not allowed; omit model or use {allowed}"
    )


def parse_chat(value: Any, caps: Mapping[str, int]) -> ChatRequest:
    """The allowlisted parameters of an OpenAI chat request, checked and rebuilt.

    `caps` maps each model this agent may use to its `max_tokens` cap; the first is
    the one used when the request names none. A `model` outside it is refused with
    403, and so is any field that could steer the key, endpoint or provider. Of the
    rest only messages, tools, tool_choice, max_tokens, temperature, top_p and stop
    are kept; others (metadata, n, logit_bias, ...) are dropped. `max_tokens` (or
    its newer name `max_completion_tokens`) is clamped to the model's cap and always
    set, so a call's worst case is known. Tool results are sanitized: they re-enter
    the prompt from outside. `stream` is kept as a flag of its own; the mesh always
    asks the provider for usage at the end of a stream (`stream_options`).
    """
    if not caps:
        raise Rejected(403, "model_not_allowed", "no model is allowed for this agent")
    body = _object(value, "the body")
    alias = _alias(body.get("model"), caps)
    _refuse_steering(body)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list")
    if len(messages) > MAX_MESSAGES:
        raise _bad(f"messages holds more than {MAX_MESSAGES} messages")
    params: dict[str, Any] = {
        "messages": [_message(m, f"messages[{i}]") for i, m in enumerate(messages)],
        "max_tokens": _max_tokens(body, caps[alias]),
    }
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
            raise _bad(f"tools must be a list of at most {MAX_TOOLS} tools")
        if tools:
            params["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    if body.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("temperature") is not None:
        params["temperature"] = _number(body["temperature"], "temperature", 0.0, 2.0)
    if body.get("top_p") is not None:
        params["top_p"] = _number(body["top_p"], "top_p", 0.0, 1.0)
    if body.get("stop") is not None:
        params["stop"] = _stop(body["stop"])
    return ChatRequest(alias, params, stream)
