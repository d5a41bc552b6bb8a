"""Pure conversions of the WhatsApp channel: Twilio forms in, envelopes and bodies out."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from channels._shared.chunking import utf16_len
from channels.whatsapp import convert
from channels.whatsapp.convert import PayloadError
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited

SID = "SM" + "0123456789abcdef" * 2
MEDIA_URL = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME" + "a" * 32
TOKEN = "test-auth-token"
URL = "https://bot.example.org/twilio/whatsapp"

HOSTILE = "\u202eevil\u200b \U000e0041\U000e0042 \ud800x"


def minimal(**extra: str) -> dict[str, str]:
    return {"MessageSid": SID, "From": "whatsapp:+15551234567", **extra}


def full(**extra: str) -> dict[str, str]:
    fields = minimal(
        SmsMessageSid=SID,
        AccountSid="AC" + "0" * 32,
        To="whatsapp:+14155238886",
        Body="Hello there",
        NumMedia="0",
        ProfileName="Ada Lovelace",
        WaId="15551234567",
        ApiVersion="2010-04-01",
    )
    return {**fields, **extra}


def test_a_minimal_message_has_empty_text_and_no_media() -> None:
    message = convert.parse_message(minimal())
    assert message.sid == SID
    assert message.from_address == "whatsapp:+15551234567"
    assert (message.body, message.profile_name, message.to_address) == ("", "", "")
    assert message.media == ()


def test_a_full_message_becomes_a_direct_envelope_keyed_by_its_sid() -> None:
    inbound = convert.to_inbound(convert.parse_message(full()), received_at=1.5)
    assert inbound.channel == "whatsapp"
    assert inbound.event_id == SID
    assert inbound.dedupe_key == f"whatsapp:{SID}"
    assert inbound.sender_id == "15551234567"
    assert inbound.conversation_id == "whatsapp:+15551234567"
    assert inbound.sender_name == "Ada Lovelace"
    assert inbound.text == "Hello there"
    assert inbound.is_direct
    assert inbound.conversation_name == ""
    assert inbound.received_at == 1.5


def test_unknown_fields_are_ignored() -> None:
    with_extra = full(ChannelMetadata='{"x":1}', SomethingNew="<script>", MessageType="text")
    assert convert.parse_message(with_extra) == convert.parse_message(full())


def test_the_sender_id_is_the_whatsapp_id_without_plus_whatever_waid_says() -> None:
    assert convert.sender_id("whatsapp:+4915112345678") == "4915112345678"
    assert convert.sender_id("whatsapp:4915112345678") == "4915112345678"
    message = convert.parse_message(full(WaId="999"))
    assert convert.to_inbound(message, received_at=0).sender_id == "15551234567"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"From": "whatsapp:+15551234567"}, "MessageSid"),
        ({"MessageSid": "", "From": "whatsapp:+1"}, "MessageSid"),
        ({"MessageSid": "SM123", "From": "whatsapp:+1"}, "MessageSid"),
        ({"MessageSid": "../../" + "0" * 32, "From": "whatsapp:+1"}, "MessageSid"),
        ({"MessageSid": SID}, "From"),
        ({"MessageSid": SID, "From": "+15551234567"}, "From"),
        ({"MessageSid": SID, "From": "whatsapp:+1555 OR 1=1"}, "From"),
        ({"MessageSid": SID, "From": "whatsapp:+1", "NumMedia": "two"}, "NumMedia"),
    ],
)
def test_a_message_without_a_valid_sid_or_sender_is_refused_naming_the_field(
    fields: dict[str, str], named: str
) -> None:
    with pytest.raises(PayloadError, match=named) as raised:
        convert.parse_message(fields)
    # The field's name only: values are unauthenticated platform input.
    for value in fields.values():
        if len(value) > 3:
            assert value not in str(raised.value)


def test_media_are_read_by_index_up_to_num_media() -> None:
    fields = full(
        NumMedia="3",
        MediaUrl0=MEDIA_URL,
        MediaContentType0="image/jpeg",
        MediaUrl1=MEDIA_URL + "2",
        MediaContentType1="audio/ogg",
        MediaUrl3="https://api.twilio.com/not-announced",
    )
    media = convert.parse_message(fields).media
    assert [(m.url, m.content_type) for m in media] == [
        (MEDIA_URL, "image/jpeg"),
        (MEDIA_URL + "2", "audio/ogg"),
    ]


def test_at_most_ten_media_are_read() -> None:
    fields = full(NumMedia="1000")
    fields.update({f"MediaUrl{i}": f"{MEDIA_URL}{i}" for i in range(20)})
    assert len(convert.parse_message(fields).media) == convert.MAX_MEDIA


def test_file_refs_have_kinds_and_names_with_an_extension() -> None:
    fields = full(
        NumMedia="4",
        MediaUrl0=MEDIA_URL,
        MediaContentType0="image/jpeg",
        MediaUrl1=MEDIA_URL,
        MediaContentType1="audio/ogg; codecs=opus",
        MediaUrl2=MEDIA_URL,
        MediaContentType2="application/pdf",
        MediaUrl3="https://api.twilio.com/media/7/notes.txt",
        MediaContentType3="text/plain",
    )
    refs = convert.file_refs(convert.parse_message(fields))
    me = "ME" + "a" * 32
    assert [(r.kind, r.name) for r in refs] == [
        ("image", f"{me}.jpg"),
        ("voice", f"{me}.ogg"),
        ("file", f"{me}.pdf"),
        ("file", "notes.txt"),
    ]
    assert refs[1].content_type == "audio/ogg; codecs=opus"
    assert refs[0].url == MEDIA_URL


def test_a_media_name_without_a_usable_segment_falls_back_to_kind_and_index() -> None:
    assert convert.media_name("https://api.twilio.com/", "image/png", 2) == "image-2.png"
    assert convert.media_name("https://api.twilio.com/x/..", "", 1) == "file-1"
    assert convert.media_name("https://api.twilio.com/a/%2F..%2Fetc", "text/plain", 1) == (
        "etc.txt"
    )


def test_hostile_unicode_in_body_profile_name_and_media_names_is_neutralised() -> None:
    fields = minimal(
        Body=f"hi {HOSTILE}",
        ProfileName=f"Ada{HOSTILE}",
        NumMedia="1",
        # Raw in the URL: a lone surrogate cannot be percent-encoded as UTF-8.
        MediaUrl0=f"https://api.twilio.com/media/re{HOSTILE}port",
        MediaContentType0="application/pdf",
    )
    message = convert.parse_message(fields)
    inbound = convert.to_inbound(message, received_at=0)
    [ref] = convert.file_refs(message)
    for text in (inbound.text, inbound.sender_name, ref.name):
        for bad in ("\u202e", "\u200b", "\U000e0041", "\U000e0042", "\ud800"):
            assert bad not in text
        text.encode("utf-8")  # no lone surrogate survives
    assert inbound.text == "hi evil  \ufffdx"
    assert inbound.sender_name == "Adaevil  \ufffdx"
    assert ref.name.startswith("reevil") and ref.name.endswith(".pdf")


def test_refused_file_notes_are_appended_to_the_text() -> None:
    message = convert.parse_message(full())
    inbound = convert.to_inbound(message, received_at=0, notes=["[file 'a' was not received]"])
    assert inbound.text == "Hello there\n[file 'a' was not received]"


def test_a_status_callback_is_typed() -> None:
    status = convert.parse_status(
        {"MessageSid": SID, "MessageStatus": "undelivered", "ErrorCode": "63016", "X": "y"}
    )
    assert status == convert.Status(sid=SID, status="undelivered", error_code="63016")
    plain = convert.parse_status({"MessageSid": SID, "MessageStatus": "Delivered"})
    assert (plain.status, plain.error_code) == ("delivered", "")


@pytest.mark.parametrize(
    "fields",
    [
        {"MessageStatus": "sent"},
        {"MessageSid": SID},
        {"MessageSid": SID, "MessageStatus": "sent; DROP"},
        {"MessageSid": SID, "MessageStatus": "failed", "ErrorCode": "30008 or so"},
    ],
)
def test_a_malformed_status_callback_is_refused(fields: dict[str, str]) -> None:
    with pytest.raises(PayloadError):
        convert.parse_status(fields)


def test_form_fields_keep_repeated_keys_and_blank_values() -> None:
    fields = convert.form_fields(b"A=1&A=2&Body=&To=whatsapp%3A%2B1")
    assert fields.getall("A") == ["1", "2"]
    assert fields["Body"] == ""
    assert fields["To"] == "whatsapp:+1"


def test_a_body_that_is_not_utf8_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        convert.form_fields(b"Body=%FF&X=\xff\xfe")


def _signed(params: dict[str, str] | list[tuple[str, str]], url: str = URL) -> tuple[bytes, str]:
    validator = RequestValidator(TOKEN)
    return urlencode(params).encode(), validator.compute_signature(url, MultiDict(params))


def test_a_signature_over_url_and_fields_is_valid() -> None:
    body, signature = _signed(full())
    assert convert.signature_valid(RequestValidator(TOKEN), URL, body, signature, "")


def test_every_value_of_a_repeated_field_is_covered_by_the_signature() -> None:
    body, signature = _signed([("A", "1"), ("A", "2"), ("MessageSid", SID)])
    validator = RequestValidator(TOKEN)
    assert convert.signature_valid(validator, URL, body, signature, "")
    altered = body.replace(b"A=2", b"A=3")
    assert not convert.signature_valid(validator, URL, altered, signature, "")


@pytest.mark.parametrize(
    ("url", "token", "header"),
    [
        (URL + "x", TOKEN, ""),
        ("http://bot.example.org/twilio/whatsapp", TOKEN, ""),
        (URL, "another-token", ""),
        (URL, TOKEN, "algorithm=HMAC_SHA256"),
        (URL, TOKEN, "algorithm=NONE"),
    ],
)
def test_a_signature_for_another_url_key_or_algorithm_is_invalid(
    url: str, token: str, header: str
) -> None:
    body, signature = _signed(full())
    assert not convert.signature_valid(RequestValidator(token), url, body, signature, header)


def test_a_missing_signature_or_a_body_that_is_not_utf8_is_invalid() -> None:
    validator = RequestValidator(TOKEN)
    body, signature = _signed(full())
    assert not convert.signature_valid(validator, URL, body, "", "")
    assert not convert.signature_valid(validator, URL, b"\xff" + body, signature, "")


def test_a_sha256_signature_is_checked_when_the_settings_header_names_it() -> None:
    params = full()
    signature = RequestValidator(TOKEN).compute_signature(URL, params, "HMAC_SHA256")
    body = urlencode(params).encode()
    header = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    assert convert.signature_valid(RequestValidator(TOKEN), URL, body, signature, header)


def test_replies_are_rendered_with_whatsapp_markers() -> None:
    assert convert.render("**bold** and _it_ and [a](https://e.org)") == [
        "*bold* and _it_ and a (https://e.org)"
    ]
    assert convert.render("   ") == []


def test_long_replies_are_chunked_to_1600_utf16_units() -> None:
    text = "😀 " * 1500  # 4,500 characters, 4,500 + 1,500 UTF-16 units
    parts = convert.render(text)
    assert all(utf16_len(part) <= 1600 for part in parts)
    assert "".join(parts).replace(" ", "") == "😀" * 1500


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("0.5", 0.5), (None, 1.0), ("", 1.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0)],
)
def test_retry_after_is_read_in_seconds_with_a_default(header: str | None, seconds: float) -> None:
    assert convert.retry_after_s(header) == seconds


def test_twilio_answers_map_onto_the_platform_error_tree() -> None:
    limited = convert.refusal(429, 20429, "3")
    assert isinstance(limited, RateLimited)
    assert limited.retry_after_s == 3.0
    assert isinstance(convert.refusal(503, None), PlatformUnavailable)
    refused = convert.refusal(400, 21617)
    assert type(refused) is PlatformError
    assert "21617" in str(refused)
    assert not refused.retryable
    assert "no Twilio error code" in str(convert.refusal(404, None))
