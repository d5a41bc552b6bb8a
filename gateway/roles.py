"""The names of the roles that can run apart (`stockade run ROLE`).

router: routes inbound messages to commands or agents (any number of them).
agents: the supervisor and the mesh of one Docker host.
channels: the enabled platform adapters and the webhook server they share.
"""

from typing import Final

ROLES: Final = ("router", "agents", "channels")
