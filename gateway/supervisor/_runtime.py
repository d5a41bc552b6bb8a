"""The container runtime seam: what the supervisor needs from an engine, and the Docker engine.

The docker SDK is blocking, so every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

from gateway.errors import DependencyError
from gateway.supervisor import _cgroup, _spec
from gateway.supervisor._workspace import Workspaces

log = logging.getLogger("stockade.supervisor")


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


@dataclass(frozen=True, slots=True)
class ContainerUsage:
    """What one running container uses, as the engine last measured it."""

    started_at: float | None
    """Epoch seconds of its last start; None when the engine does not say."""
    memory_bytes: int | None
    """Memory in use, without the page cache the kernel may drop at will."""
    memory_limit_bytes: int | None


def memory_in_use(memory_stats: Mapping[str, Any]) -> int | None:
    """A container's memory use from the engine's `memory_stats`, as `docker stats` shows it.

    The raw usage counts file pages the kernel reclaims under pressure; those
    inactive file pages are left out (`total_inactive_file` on cgroup v1,
    `inactive_file` on v2).
    """
    usage = memory_stats.get("usage")
    if not isinstance(usage, int):
        return None
    stats = memory_stats.get("stats") or {}
    inactive = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    if isinstance(inactive, int) and 0 < inactive < usage:
        return usage - inactive
    return usage


def engine_time(text: str) -> float | None:
    """Epoch seconds of an engine timestamp ("2024-05-01T10:00:00.123456789Z"), None if unset."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    # The engine writes year 1 for "never".
    return None if moment.year < 2000 else moment.timestamp()


_USAGE_THREADS: Final = 4
"""Usage measured at once. Where the kernel's cgroup files are out of sight the engine's
stats call is used, and the engine answers it at its next one-second collection tick, so
each call holds its thread for up to a second; they get their own threads so that
starting and listing containers never wait behind them."""


class Runtime(Protocol):
    @property
    def deployment(self) -> str: ...

    async def engine_id(self) -> str:
        """The engine's own id, stable across restarts; names this host's supervisor."""
        ...

    async def usage(self, container_id: str) -> ContainerUsage | None:
        """What a running container uses now; None when it is gone."""
        ...

    async def start(self, user_id: str, spec: dict[str, Any]) -> AgentContainer:
        """Replace any container of the user's with one made from `spec`, and start it.

        Files of an uncapped volume of the user's move into the capped workspace the
        spec mounts first, once the old container is gone."""
        ...

    async def stop(self, user_id: str, timeout_s: float = 5.0) -> None: ...

    async def remove(self, user_id: str) -> None: ...

    async def get(self, user_id: str) -> AgentContainer | None: ...

    async def agents(self) -> list[AgentContainer]: ...

    async def workspace(self, user_id: str, size_mb: int) -> str:
        """What to mount as the user's workspace, ready: the host path of a filesystem
        of `size_mb`, or with 0 the name of an uncapped volume."""
        ...

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


@dataclass(frozen=True, slots=True)
class _Started:
    at: float | None
    """Epoch seconds, as `ContainerUsage.started_at`."""
    pid: int
    """Its main process on the engine's host; 0 when the engine did not say."""


class DockerRuntime:
    """Agent containers on a Docker engine, found again by their labels after a restart.

    It sees only the containers of its own deployment. Capped workspaces are made in
    `workspaces` on this host, which must be the engine's host.
    """

    def __init__(
        self,
        client: Any,
        deployment: str,
        *,
        workspaces: Workspaces,
        proc: Path = _cgroup.PROC_ROOT,
        cgroups: Path = _cgroup.CGROUP_ROOT,
    ) -> None:
        self._client = client
        self.deployment = deployment
        self.workspaces = workspaces
        self._proc = proc
        self._cgroups = cgroups
        self._engine_id: str | None = None
        self._started: dict[str, _Started] = {}
        """By container id: neither changes while the container lives."""
        self._kernel_seen = False
        """A container was measured from the kernel's files: they are in sight here."""
        self._usage_threads: ThreadPoolExecutor | None = None

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
            self._started.pop(existing.id, None)
        await self._move_volume(user_id, spec)
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
            self._started.pop(container.id, None)

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

    async def engine_id(self) -> str:
        if self._engine_id is None:
            info = await self._call(self._client.info)
            engine = str(info.get("ID") or "")
            if not engine:
                raise DependencyError("the Docker engine did not say its ID (docker info)")
            self._engine_id = engine
        return self._engine_id

    def _measure(self, container_id: str) -> ContainerUsage | None:
        """Runs in a usage thread: one inspection per container for its start and main
        process, then its memory from the kernel, or from the engine's stats call when
        the kernel's figures are out of this process's sight."""
        import docker.errors

        api = self._client.api
        try:
            if container_id not in self._started:
                state = api.inspect_container(container_id).get("State", {})
                pid = state.get("Pid")
                self._started[container_id] = _Started(
                    engine_time(str(state.get("StartedAt", ""))),
                    pid if isinstance(pid, int) else 0,
                )
            started = self._started[container_id]
            memory = _cgroup.read_memory(started.pid, container_id, self._proc, self._cgroups)
            self._kernel_seen = self._kernel_seen or memory is not None
            if memory is None:
                if self._kernel_seen:
                    # Restarted in place (a new main process and start time), most
                    # likely: both are read again at the next sample.
                    self._started.pop(container_id, None)
                # one_shot: a single sample, not the two-sample average that takes 2 s.
                stats = api.stats(container_id, stream=False, one_shot=True)
                memory = stats.get("memory_stats") or {}
        except docker.errors.NotFound:
            self._started.pop(container_id, None)
            return None
        except docker.errors.DockerException as exc:
            raise DependencyError(f"the Docker engine refused: {exc}") from None
        limit = memory.get("limit")
        return ContainerUsage(
            started_at=started.at,
            memory_bytes=memory_in_use(memory),
            memory_limit_bytes=limit if isinstance(limit, int) and limit > 0 else None,
        )

    async def usage(self, container_id: str) -> ContainerUsage | None:
        if self._usage_threads is None:
            self._usage_threads = ThreadPoolExecutor(_USAGE_THREADS, "stockade-usage")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._usage_threads, functools.partial(self._measure, container_id)
        )

    async def workspace(self, user_id: str, size_mb: int) -> str:
        if size_mb == 0:
            if self.workspaces.image(user_id).exists():
                log.warning(
                    "the capped workspace of %s is left unmounted: workspace_mb is 0, so its "
                    "agent gets an uncapped volume",
                    user_id,
                )
            return _spec.volume_name(user_id)
        point, _ = await self.workspaces.ensure(user_id, size_mb)
        return str(point)

    async def _move_volume(self, user_id: str, spec: dict[str, Any]) -> None:
        """Move what an uncapped volume of the user holds into the capped workspace the
        spec mounts. Called with no container of the user's left: none writes meanwhile."""
        if not Path(_spec.workspace_of(spec)).is_absolute():
            return
        volume = await self._volume(user_id)
        if volume is None:
            return
        size_mb = self.workspaces.image(user_id).stat().st_size >> 20
        source = Path(str(volume.attrs.get("Mountpoint") or ""))
        if not source.is_absolute() or not source.is_dir():
            raise DependencyError(
                f"the volume {volume.name} is out of this host's sight: its files cannot "
                "move into a capped workspace (is the Docker engine on another host?)"
            )
        try:
            await self.workspaces.fill(user_id, source)
        except DependencyError as exc:
            # Nothing lost: the volume stays, and the next start tries again (the
            # workspace is made anew then, so nothing is copied twice).
            await self.workspaces.remove(user_id)
            raise DependencyError(
                f"the files in the volume of {user_id} did not move into its {size_mb} MB "
                f"workspace ({exc}); if they do not fit, raise workspace_mb for this user "
                "in [supervisor.overrides]"
            ) from None
        await self._call(volume.remove, force=True)
        log.info("moved the volume of %s into its capped workspace", user_id)

    async def _volume(self, user_id: str) -> Any | None:
        import docker.errors

        try:
            return await self._call(self._client.volumes.get, _spec.volume_name(user_id))
        except docker.errors.NotFound:
            return None

    async def remove_workspace(self, user_id: str) -> None:
        await self.workspaces.remove(user_id)
        volume = await self._volume(user_id)
        if volume is not None:
            await self._call(volume.remove, force=True)
