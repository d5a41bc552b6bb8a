"""The envelope codec: envelopes survive the trip through stream fields; bad fields fail."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.envelope import (
    SCHEMA_VERSION,
    Attachment,
    Inbound,
    Outbound,
    decode,
    decode_inbound,
    decode_outbound,
    encode,
)
from gateway.errors import EnvelopeError

# Stream fields are UTF-8; the channels sanitize away lone surrogates before this point.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
extras = st.dictionaries(texts, texts, max_size=4)

inbounds = st.builds(
    Inbound,
    channel=texts,
    event_id=texts,
    sender_id=texts,
    conversation_id=texts,
    text=texts,
    received_at=st.floats(allow_nan=False, allow_infinity=False),
    sender_name=texts,
    thread_id=texts,
    is_direct=st.booleans(),
    mentioned=st.booleans(),
    user_id=texts,
    conversation_name=texts,
    attachments=st.lists(
        st.builds(
            Attachment,
            kind=st.sampled_from(["image", "file", "voice"]),
            name=texts,
            content_type=texts,
            size=st.integers(min_value=0, max_value=2**40),
            blob=st.text("0123456789abcdef", min_size=64, max_size=64),
        ),
        max_size=3,
    ).map(tuple),
    extras=extras,
)
outbounds = st.builds(
    Outbound,
    channel=texts,
    conversation_id=texts,
    text=texts,
    outbound_id=texts,
    reply_to=texts,
    thread_id=texts,
    user_id=texts,
    extras=extras,
)


def as_redis_returns(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


@given(inbounds)
def test_inbound_round_trips_through_stream_fields(inbound: Inbound) -> None:
    assert decode(encode(inbound)) == inbound
    assert decode_inbound(as_redis_returns(encode(inbound))) == inbound


@given(outbounds)
def test_outbound_round_trips_through_stream_fields(outbound: Outbound) -> None:
    assert decode(encode(outbound)) == outbound
    assert decode_outbound(as_redis_returns(encode(outbound))) == outbound


def sample() -> Inbound:
    return Inbound(
        channel="telegram",
        event_id="42",
        sender_id="7",
        conversation_id="7",
        text="hi",
        received_at=1.5,
        extras={"k": "v"},
    )


def test_envelopes_are_frozen_including_extras() -> None:
    inbound = sample()
    with pytest.raises(dataclasses.FrozenInstanceError):
        inbound.text = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        inbound.extras["k"] = "changed"  # type: ignore[index]


def test_dedupe_key_is_channel_and_platform_event_id() -> None:
    assert sample().dedupe_key == "telegram:42"


def test_encoded_fields_carry_the_schema_version_and_kind() -> None:
    fields = encode(sample())
    assert fields["v"] == str(SCHEMA_VERSION)
    assert fields["kind"] == "in"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"v": "99"}, "schema version"),
        ({"v": None}, "schema version"),
        ({"kind": "sideways"}, "kind"),
        ({"event_id": None}, "missing field"),
        ({"received_at": "soon"}, "received_at"),
        ({"is_direct": "yes"}, "is_direct"),
        ({"x": "{not json"}, "JSON"),
        ({"x": '{"k": 1}'}, "strings"),
        ({"x": "[1]"}, "strings"),
    ],
)
def test_malformed_fields_raise_envelope_error_naming_the_problem(
    change: dict[str, str | None], problem: str
) -> None:
    fields: dict[str, str] = encode(sample())
    for key, value in change.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    with pytest.raises(EnvelopeError, match=problem):
        decode(fields)


def test_invalid_utf8_bytes_raise_envelope_error() -> None:
    fields = as_redis_returns(encode(sample()))
    fields[b"text"] = b"\xff\xfe"
    with pytest.raises(EnvelopeError, match="UTF-8"):
        decode(fields)


def test_decoding_the_wrong_kind_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="outbound"):
        decode_outbound(encode(sample()))
    reply = Outbound(channel="c", conversation_id="1", text="t", outbound_id="o")
    with pytest.raises(EnvelopeError, match="inbound"):
        decode_inbound(encode(reply))


def _inbound_fields(**extra: str) -> dict[str, str]:
    fields = encode(
        Inbound(
            channel="telegram",
            event_id="1",
            sender_id="7",
            conversation_id="c",
            text="hi",
            received_at=1.0,
        )
    )
    return fields | extra


@pytest.mark.parametrize(
    ("attachments", "problem"),
    [
        ("not json", "not JSON"),
        ('{"kind": "image"}', "list"),
        ("[1]", "object"),
        ('[{"kind": "exe", "name": "a", "type": "x", "size": 1, "blob": "b"}]', "kind"),
        ('[{"kind": "file", "name": 1, "type": "x", "size": 1, "blob": "b"}]', "strings"),
        ('[{"kind": "file", "name": "a", "type": "x", "size": -1, "blob": "b"}]', "size"),
        ('[{"kind": "file", "name": "a", "type": "x", "size": true, "blob": "b"}]', "size"),
    ],
)
def test_malformed_attachments_are_an_envelope_error(attachments: str, problem: str) -> None:
    with pytest.raises(EnvelopeError, match=problem):
        decode(_inbound_fields(a=attachments))


def test_an_inbound_without_attachments_writes_no_attachment_field() -> None:
    assert "a" not in _inbound_fields()
    assert decode_inbound(_inbound_fields()).attachments == ()
