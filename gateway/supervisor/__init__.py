"""The supervisor: runs each user's agent in its own hardened container, from the agent image."""

from gateway.supervisor._apt import debian_mirror
from gateway.supervisor._context import (
    AGENT_UID,
    AGENTS_PATH,
    WORKSPACE,
    AgentFile,
    agents_hash,
    read_agents,
    render_dockerfile,
)
from gateway.supervisor._docker import docker_client
from gateway.supervisor._runtime import AgentContainer, DockerRuntime, Runtime
from gateway.supervisor._spec import container_name, container_spec, volume_name
from gateway.supervisor._supervisor import (
    WAKE_GROUP,
    MeshDoor,
    Supervisor,
    deployment_id,
)
from gateway.supervisor.image import base_tag, ensure_image

__all__ = [
    "AGENTS_PATH",
    "AGENT_UID",
    "WAKE_GROUP",
    "WORKSPACE",
    "AgentContainer",
    "AgentFile",
    "DockerRuntime",
    "MeshDoor",
    "Runtime",
    "Supervisor",
    "agents_hash",
    "base_tag",
    "container_name",
    "container_spec",
    "debian_mirror",
    "deployment_id",
    "docker_client",
    "ensure_image",
    "read_agents",
    "render_dockerfile",
    "volume_name",
]
