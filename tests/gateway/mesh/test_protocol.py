"""The mesh's request parsing and answer building, with plain values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.envelope import Inbound, reply
from gateway.mesh._protocol import (
    ProviderFailed,
    Rejected,
    next_body,
    parse_chat,
    parse_json,
    parse_reply,
    parse_wait,
    refuse_credential_headers,
    reply_text,
)

MODEL = "default"
CAPS = {MODEL: 100, "big": 4000}
USER = [{"role": "user", "content": "hi"}]


def chat(**body: Any) -> dict[str, Any]:
    request = parse_chat({"messages": USER, **body}, CAPS)
    return request.params


def rejected(body: Any) -> Rejected:
    with pytest.raises(Rejected) as caught:
        parse_chat(body, CAPS)
    return caught.value


def test_only_allowlisted_fields_survive() -> None:
    params = chat(
        user="u",
        metadata={},
        n=5,
        logit_bias={"1": 100},
        temperature=0.5,
        top_p=0.9,
        stop=["\n\n"],
        tool_choice="none",
    )
    assert set(params) == {"messages", "max_tokens", "temperature", "top_p", "stop", "tool_choice"}


@pytest.mark.parametrize(
    "field",
    [
        "api_key",
        "api_base",
        "base_url",
        "extra_headers",
        "headers",
        "extra_body",
        "custom_llm_provider",
        "model_list",
        "mock_response",
        "organization",
        "aws_secret_access_key",
        "vertex_credentials",
        "azure_ad_token",
        "API_KEY",
    ],
)
def test_a_field_that_could_steer_the_key_or_endpoint_is_refused(field: str) -> None:
    error = rejected({"messages": USER, field: "http://x"})
    assert (error.status, error.kind) == (403, "not_allowed")
    assert field in error.message


@pytest.mark.parametrize(
    "header", ["Authorization", "authorization", "X-Api-Key", "api-key", "OpenAI-Organization"]
)
def test_a_key_in_a_request_header_is_refused(header: str) -> None:
    with pytest.raises(Rejected) as caught:
        refuse_credential_headers(["Content-Type", header])
    assert (caught.value.status, caught.value.kind) == (403, "not_allowed")


def test_ordinary_headers_pass() -> None:
    refuse_credential_headers(["Content-Type", "Content-Length", "Host", "Accept", "User-Agent"])


def test_unknown_keys_inside_messages_and_tools_are_dropped() -> None:
    params = chat(
        messages=[{"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}],
        tools=[
            {
                "type": "function",
                "function": {"name": "f", "parameters": {"type": "object"}, "x": 1},
                "mcp": {"server_url": "http://evil"},
            }
        ],
    )
    assert params["messages"] == [{"role": "user", "content": "hi"}]
    assert params["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]


def test_max_tokens_defaults_to_and_is_clamped_by_the_cap() -> None:
    assert chat()["max_tokens"] == 100
    assert chat(max_tokens=7)["max_tokens"] == 7
    assert chat(max_tokens=10**9)["max_tokens"] == 100
    assert chat(max_completion_tokens=5)["max_tokens"] == 5


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_max_tokens_must_be_a_positive_whole_number(value: Any) -> None:
    assert "max_tokens" in rejected({"messages": USER, "max_tokens": value}).message


def test_an_allowed_model_or_none_is_accepted_and_others_are_403() -> None:
    assert parse_chat({"messages": USER}, CAPS).alias == MODEL
    assert parse_chat({"messages": USER, "model": "big"}, CAPS).alias == "big"
    for model in ("openai/gpt-4o", "Default", 7):
        error = rejected({"messages": USER, "model": model})
        assert (error.status, error.kind) == (403, "model_not_allowed")


def test_max_tokens_is_clamped_by_the_chosen_models_cap() -> None:
    request = parse_chat({"messages": USER, "model": "big", "max_tokens": 10**6}, CAPS)
    assert request.params["max_tokens"] == 4000


def test_no_allowed_model_refuses_every_call() -> None:
    with pytest.raises(Rejected) as caught:
        parse_chat({"messages": USER}, {})
    assert caught.value.status == 403


def test_tool_output_is_sanitized_and_user_text_is_left_alone() -> None:
    messages = [
        {"role": "user", "content": "plain"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "out\x1b[2J\x07put"},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "a\x00b"}]},
    ]
    params = chat(messages=messages)
    assert params["messages"][2]["content"] == "out[2Jput"
    assert params["messages"][3]["content"] == [{"type": "text", "text": "ab"}]


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"role": "user", "content": None}, "null"),
        ({"role": "user", "content": "x", "tool_calls": []}, "tool_calls"),
        ({"role": "assistant", "content": None}, "null"),
        ({"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}, "function"),
        ({"role": "user", "content": [{"type": "audio"}]}, "type"),
        ({"role": "user", "content": []}, "parts"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]},
            "data:",
        ),
        ({"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url"}]}, "image_url"),
        ({"role": "user", "content": "x", "name": 3}, "name"),
        ("hi", "object"),
    ],
)
def test_malformed_messages_are_refused_with_the_place_named(message: Any, needle: str) -> None:
    error = rejected({"messages": [message]})
    assert error.status == 400
    assert needle in error.message
    assert "messages[0]" in error.message


def test_inline_images_are_allowed() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "x"}}
    params = chat(messages=[{"role": "user", "content": [part]}])
    assert params["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    ]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"stream": "yes"}, "stream"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"tool_choice": "always"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
        ({"tools": "all"}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": 1}}]}, "strict"),
    ],
)
def test_bad_optional_parameters_are_refused(body: dict[str, Any], needle: str) -> None:
    error = rejected({"messages": USER, **body})
    assert error.status == 400
    assert needle in error.message


def test_parse_json_refuses_what_is_not_json() -> None:
    for raw in (b"{", b"\xff", b"1" * 5000, b"[" * 5000 + b"]" * 5000):
        with pytest.raises(Rejected) as caught:
            parse_json(raw)
        assert caught.value.status == 400
    assert parse_json(b'{"a": 1}') == {"a": 1}


def test_parse_wait() -> None:
    assert parse_wait(None, 20.0) == 20.0
    assert parse_wait("5", 20.0) == 5.0
    assert parse_wait("500", 20.0) == 20.0
    assert parse_wait("0", 20.0) == 0.0
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(Rejected):
            parse_wait(bad, 20.0)


def test_parse_reply_defaults_to_final() -> None:
    assert parse_reply({"id": "1-0", "text": "x"}).final is True
    assert parse_reply({"id": "1-0", "text": "x", "final": False}).final is False


@given(st.text(max_size=400), st.integers(min_value=100, max_value=300))
def test_reply_text_never_exceeds_the_limit(text: str, limit: int) -> None:
    out = reply_text(text, limit)
    assert len(out) <= limit
    if len(text) <= limit and text.isascii() and text.isprintable():
        assert out == text


def test_a_cut_reply_says_so() -> None:
    out = reply_text("x" * 1000, 200)
    assert len(out) == 200
    assert out.startswith("xxx")
    assert "shortened" in out


def test_reply_envelope_takes_the_conversation_from_the_inbound() -> None:
    inbound = Inbound(
        channel="telegram",
        event_id="42",
        sender_id="s",
        conversation_id="chat-9",
        text="hi",
        received_at=1.0,
        thread_id="t-3",
        user_id="u1",
    )
    out = reply(inbound, "hello", "final", "u1")
    assert (out.channel, out.conversation_id, out.thread_id, out.reply_to) == (
        "telegram",
        "chat-9",
        "t-3",
        "42",
    )
    assert out.outbound_id == "telegram:42:final"
    assert next_body("1-0", inbound)["sender_name"] == ""


def test_provider_failure_messages_are_generic() -> None:
    assert ProviderFailed(500).message == "the model provider answered with status 500"
    assert ProviderFailed(None).status == 502
    assert "time" in ProviderFailed(None, timed_out=True).message


def test_stream_is_a_flag_apart_from_the_provider_parameters() -> None:
    assert parse_chat({"messages": USER, "stream": True}, CAPS).stream is True
    assert parse_chat({"messages": USER}, CAPS).stream is False
    request = parse_chat({"messages": USER, "stream": True, "stream_options": {"x": 1}}, CAPS)
    assert "stream" not in request.params and "stream_options" not in request.params
