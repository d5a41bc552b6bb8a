"""The container runtime seam: what the supervisor needs from an engine, and the Docker engine.

The docker SDK is blocking, so every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import DependencyError
from gateway.supervisor import _spec


@dataclass(frozen=True, slots=True)
class AgentContainer:
    """What the supervisor knows of one agent container."""

    user_id: str
    container_id: str
    running: bool
    exit_code: int
    oom_killed: bool
    finished_at: str
    """Engine timestamp of the last exit; with the id it names one crash."""
    spec: str = ""
    """Its spec hash label (`_spec.LABEL_SPEC`); empty on containers made before it."""


class Runtime(Protocol):
    @property
    def deployment(self) -> str: ...

    async def start(self, user_id: str, spec: dict[str, Any]) -> AgentContainer: ...

    async def stop(self, user_id: str, timeout_s: float = 5.0) -> None: ...

    async def remove(self, user_id: str) -> None: ...

    async def get(self, user_id: str) -> AgentContainer | None: ...

    async def agents(self) -> list[AgentContainer]: ...

    async def remove_workspace(self, user_id: str) -> None: ...


def _describe(container: Any) -> AgentContainer:
    state = container.attrs.get("State", {})
    return AgentContainer(
        user_id=container.labels.get(_spec.LABEL_USER, ""),
        container_id=container.id,
        running=bool(state.get("Running")),
        exit_code=int(state.get("ExitCode") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        finished_at=str(state.get("FinishedAt", "")),
        spec=container.labels.get(_spec.LABEL_SPEC, ""),
    )


class DockerRuntime:
    """Agent containers on a Docker engine, found again by their labels after a restart.

    It sees only the containers of its own deployment.
    """

    def __init__(self, client: Any, deployment: str) -> None:
        self._client = client
        self.deployment = deployment

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import docker.errors

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except docker.errors.NotFound:
            raise
        except docker.errors.DockerException as exc:
            raise DependencyError(f"the Docker engine refused: {exc}") from None

    async def _find(self, user_id: str) -> Any | None:
        import docker.errors

        try:
            found = await self._call(self._client.containers.get, _spec.container_name(user_id))
        except docker.errors.NotFound:
            return None
        if found.labels.get(_spec.LABEL_DEPLOYMENT) != self.deployment:
            raise DependencyError(
                f"container {_spec.container_name(user_id)} belongs to another Stockade "
                "deployment on this Docker engine"
            )
        return found

    async def start(self, user_id: str, spec: dict[str, Any]) -> AgentContainer:
        existing = await self._find(user_id)
        if existing is not None:
            # A stopped container of an older image or spec is replaced, never reused.
            await self._call(existing.remove, force=True)
        container = await self._call(self._client.containers.create, **spec)
        await self._call(container.start)
        await self._call(container.reload)
        return _describe(container)

    async def stop(self, user_id: str, timeout_s: float = 5.0) -> None:
        container = await self._find(user_id)
        if container is not None:
            await self._call(container.stop, timeout=int(timeout_s))

    async def remove(self, user_id: str) -> None:
        container = await self._find(user_id)
        if container is not None:
            await self._call(container.remove, force=True)

    async def get(self, user_id: str) -> AgentContainer | None:
        container = await self._find(user_id)
        return None if container is None else _describe(container)

    async def agents(self) -> list[AgentContainer]:
        import docker.errors

        # One listing call; the SDK's containers.list would inspect every container in
        # turn (hundreds of ms with a hundred agents), which the reconcile loop can't pay.
        # Only stopped containers are inspected, for their exit code and OOM flag.
        listed = await self._call(
            self._client.api.containers,
            all=True,
            filters={
                "label": [
                    f"{_spec.LABEL_ROLE}={_spec.ROLE_AGENT}",
                    f"{_spec.LABEL_DEPLOYMENT}={self.deployment}",
                ]
            },
        )
        found: list[AgentContainer] = []
        for entry in listed:
            labels = entry.get("Labels") or {}
            if entry.get("State") == "running":
                found.append(
                    AgentContainer(
                        user_id=labels.get(_spec.LABEL_USER, ""),
                        container_id=entry["Id"],
                        running=True,
                        exit_code=0,
                        oom_killed=False,
                        finished_at="",
                        spec=labels.get(_spec.LABEL_SPEC, ""),
                    )
                )
                continue
            try:
                container = await self._call(self._client.containers.get, entry["Id"])
            except docker.errors.NotFound:
                continue  # removed since the listing
            found.append(_describe(container))
        return found

    async def remove_workspace(self, user_id: str) -> None:
        import docker.errors

        try:
            volume = await self._call(self._client.volumes.get, _spec.volume_name(user_id))
        except docker.errors.NotFound:
            return
        await self._call(volume.remove, force=True)
