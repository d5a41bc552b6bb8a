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
from gateway.supervisor._control import Outcome, control_group, notice
from gateway.supervisor._docker import docker_client
from gateway.supervisor._runtime import AgentContainer, ContainerUsage, DockerRuntime, Runtime
from gateway.supervisor._spec import container_name, container_spec, volume_name
from gateway.supervisor._status import (
    ALIVE_PREFIX,
    STATUS_KEY,
    AgentState,
    AgentStatus,
    alive_key,
    parse_status,
)
from gateway.supervisor._supervisor import (
    WAKE_GROUP,
    MeshDoor,
    Supervisor,
    deployment_id,
)
from gateway.supervisor._workspace import Workspaces
from gateway.supervisor.image import base_tag, ensure_image

__all__ = [
    "AGENTS_PATH",
    "AGENT_UID",
    "ALIVE_PREFIX",
    "STATUS_KEY",
    "WAKE_GROUP",
    "WORKSPACE",
    "AgentContainer",
    "AgentFile",
    "AgentState",
    "AgentStatus",
    "ContainerUsage",
    "DockerRuntime",
    "MeshDoor",
    "Outcome",
    "Runtime",
    "Supervisor",
    "Workspaces",
    "agents_hash",
    "alive_key",
    "base_tag",
    "container_name",
    "container_spec",
    "control_group",
    "debian_mirror",
    "deployment_id",
    "docker_client",
    "ensure_image",
    "notice",
    "parse_status",
    "read_agents",
    "render_dockerfile",
    "volume_name",
]
