"""Names of every Redis key the bus uses; nothing else in the bus spells a key.

stockade:in                          inbound stream (channels → router)
stockade:agent:<user_id>             one stream per user, so a user's messages stay in order
stockade:wake                        copies of agent messages: the supervisor starts their agents
stockade:out:<channel>               replies waiting to be sent on a channel
stockade:dead:<stream>               dead letters of <stream>
stockade:dedupe:<stream>:<key>       SET NX EX marker: <key> was published to <stream>
stockade:fail:<stream>:<group>:<id>  last failure reason of a pending entry (SET EX)
stockade:delivery:<channel>:<id>     a reply's delivery receipt on its platform (_deliveries.py)
stockade:sent:<channel>:<outbound_id> parts of a reply the platform took (_deliveries.py)
stockade:failed:<channel>            replies the platform reported undelivered (_deliveries.py)
stockade:typing:<channel>            Pub/Sub: an agent is answering (_cues.py)
stockade:blob:<sha256>               an attachment's bytes until its agent fetches them (_blobs.py)
"""

from __future__ import annotations

import hashlib
from typing import Final

PREFIX: Final = "stockade:"
IN_STREAM: Final = "stockade:in"
WAKE_STREAM: Final = "stockade:wake"

# Platform event ids are short. A longer dedupe key is hashed so that a buggy or
# hostile adapter cannot make the bus create megabyte-sized Redis keys.
_MAX_DEDUPE_KEY: Final = 200


def inbound() -> str:
    """The one stream every channel publishes to."""
    return IN_STREAM


def agent(user_id: str) -> str:
    """The stream of one user's agent; one stream per user keeps that user's order."""
    if not user_id:
        raise ValueError("an agent stream needs a non-empty user id")
    return f"{PREFIX}agent:{user_id}"


def out(channel: str) -> str:
    """The stream of replies waiting to be sent on `channel`."""
    if not channel:
        raise ValueError("an outbound stream needs a non-empty channel name")
    return f"{PREFIX}out:{channel}"


def dead(stream: str) -> str:
    """The dead-letter stream of `stream`."""
    return f"{PREFIX}dead:{stream}"


def dedupe(stream: str, key: str) -> str:
    """The marker saying `key` was already published to `stream`."""
    if len(key) > _MAX_DEDUPE_KEY:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{PREFIX}dedupe:{stream}:{key}"


def failure(stream: str, group: str, entry_id: str) -> str:
    """The last recorded failure reason of a pending entry."""
    return f"{PREFIX}fail:{stream}:{group}:{entry_id}"
