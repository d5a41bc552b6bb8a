"""The mesh: the agent-facing server, one unix socket per agent, the agent's only door.

Each agent speaks HTTP/1.1 + JSON on its own socket, which is its identity:

    GET  /v1/next?wait=S         the user's next message, or 204 after S seconds
    POST /v1/reply               {"id", "text", "final"}: sanitized, sent to the message's chat
    POST /v1/chat/completions    OpenAI-compatible: an allowed model, within budget, with the
                                 vault's key (`ModelCalls`)
    GET  /v1/files/{id}          an attachment of a message handed to this agent and not
                                 yet answered (404 otherwise, 410 once expired)

Handing a message out also announces "typing" to its channel (Pub/Sub, best effort).

The operator's controls (`gateway.controls`) apply on every request: a paused
user's agent gets no message and no model call (403 "paused"), a model the user
chose with /model is their default while they may still use it, and
`Mesh.cancel_turn` ends a turn in flight (its messages are answered "Stopped.").
"""

from __future__ import annotations

from gateway.mesh._calls import Keys, ModelCalls, Notify
from gateway.mesh._mesh import Mesh
from gateway.mesh._server import AGENT_GROUP, SOCKET_NAME

__all__ = ["AGENT_GROUP", "SOCKET_NAME", "Keys", "Mesh", "ModelCalls", "Notify"]
