"""The bus's side stores on a real Redis: attachment blobs and delivery receipts."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway.bus import Blobs, Deliveries, blob_id, failed_stream
from gateway.bus._blobs import blob_key
from gateway.envelope import Outbound

REPLY = Outbound(channel="whatsapp", conversation_id="whatsapp:+1555", text="hi", outbound_id="o1")


async def test_a_blob_is_stored_under_its_hash_and_expires(redis: aioredis.Redis) -> None:
    blobs = Blobs(redis, ttl_s=60)
    ident = await blobs.put(b"\x00\xffbytes")
    assert ident == blob_id(b"\x00\xffbytes")
    assert await blobs.get(ident) == b"\x00\xffbytes"
    assert 0 < await redis.ttl(blob_key(ident)) <= 60
    assert await blobs.get("0" * 64) is None


@pytest.mark.parametrize("ident", ["", "../x", "A" * 64, "0" * 63, "0" * 64 + "\n"])
def test_a_blob_id_is_only_ever_a_hash(ident: str) -> None:
    with pytest.raises(ValueError, match="hex"):
        blob_key(ident)


async def test_a_delivery_receipt_follows_the_platforms_reports(redis: aioredis.Redis) -> None:
    deliveries = Deliveries(redis)
    await deliveries.accepted("whatsapp", "SM1", REPLY)
    receipt = await deliveries.update("whatsapp", "SM1", "delivered")
    assert receipt is not None and receipt.outbound_id == "o1"
    stored = await deliveries.receipt("whatsapp", "SM1")
    assert stored is not None and stored.status == "delivered"
    assert await deliveries.failures("whatsapp") == []


async def test_a_failed_delivery_is_reported_with_what_was_lost(redis: aioredis.Redis) -> None:
    deliveries = Deliveries(redis)
    await deliveries.accepted("whatsapp", "SM2", REPLY)
    await deliveries.update("whatsapp", "SM2", "undelivered", "63016")
    [failure] = await deliveries.failures("whatsapp")
    assert (failure.platform_id, failure.outbound_id, failure.error) == ("SM2", "o1", "63016")
    assert failure.conversation_id == "whatsapp:+1555"
    assert await redis.xlen(failed_stream("whatsapp")) == 1


async def test_a_report_about_a_message_not_ours_is_ignored(redis: aioredis.Redis) -> None:
    assert await Deliveries(redis).update("whatsapp", "SMforeign", "failed", "1") is None
    assert await redis.xlen(failed_stream("whatsapp")) == 0
