"""The pipeline with its roles apart, for the chaos test and `bench_pipeline.py --shape apart`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway import embedded_redis
from gateway.heartbeat import count_alive, read_beats
from tests.services import RedisProcess
from tests.test_end_to_end import environment, remove_agents, vault_set

ROLES: Final = ("router", "channels", "agents")
_RESTART_PAUSE_S: Final = 0.2
"""Between a role's death and its restart, as `Restart=always` with a short delay."""


@dataclass
class Service:
    """One role's process, restarted whenever it exits until `stop`."""

    role: str
    env: dict[str, str]
    log_dir: Path
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    """Exit statuses of the deaths we did not cause."""
    killed: int = 0
    _stopping: bool = False
    _kill_pending: bool = False
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_running(), name=f"service {self.role}")

    async def _keep_running(self) -> None:
        while not self._stopping:
            self.starts += 1
            with (self.log_dir / f"{self.role}-{self.starts}.log").open("wb") as log:
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway.cli", "run", self.role,
                    env=self.env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=log, start_new_session=True,
                )  # fmt: skip
            status = await self.proc.wait()
            if self._kill_pending:
                self._kill_pending = False
            elif not self._stopping:
                self.exits.append(status)
            if not self._stopping:
                await asyncio.sleep(_RESTART_PAUSE_S)

    def kill(self) -> bool:
        """SIGKILL the process, as a crash would; False when it was not running."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        self._kill_pending = True
        self.killed += 1
        self.proc.send_signal(signal.SIGKILL)
        return True

    async def stop(self, within_s: float = 30) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), within_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class Pipeline:
    data_dir: Path
    env: dict[str, str]
    redis: RedisProcess
    services: dict[str, Service]
    redis_kills: int = 0
    container_kills: int = 0

    @property
    def redis_socket(self) -> Path:
        return embedded_redis.socket_path(self.redis.data_dir)

    async def up(self, within_s: float) -> None:
        """Until every role beats: connected to Redis and, for agents, the image checked and
        the mesh warmed. A role that exits meanwhile, or one still silent after `within_s`,
        raises RuntimeError with the end of its log."""
        client = aioredis.Redis(unix_socket_path=str(self.redis_socket))
        deadline = time.monotonic() + within_s
        try:
            while silent := await self._silent_roles(client):
                if exited := self.unexpected_exits():
                    raise RuntimeError(
                        f"a role exited while starting: {exited}\n{self._ends(exited)}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"not up within {within_s:.0f} s: {', '.join(silent)}\n{self._ends(silent)}"
                    )
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    @staticmethod
    async def _silent_roles(client: aioredis.Redis) -> list[str]:
        with contextlib.suppress(OSError, RedisError):
            alive, _ = count_alive(await read_beats(client), time.time())
            return [role for role in ROLES if not alive.get(role)]
        return list(ROLES)

    def logs(self, role: str) -> list[Path]:
        """The log files of `role`, one per start, oldest first."""
        return [
            self.data_dir / "logs" / f"{role}-{n}.log"
            for n in range(1, self.services[role].starts + 1)
        ]

    def _ends(self, roles: Iterable[str]) -> str:
        return "\n".join(f"-- {role}, the end of its log:\n{self.log_tail(role)}" for role in roles)

    def log_tail(self, role: str, lines: int = 40) -> str:
        """The end of `role`'s latest log that has anything in it."""
        for path in reversed(self.logs(role)):
            with contextlib.suppress(OSError):
                if text := path.read_text(errors="replace"):
                    return "\n".join(text.splitlines()[-lines:])
        return "(nothing logged)"

    async def kill_redis(self) -> None:
        """SIGKILL redis-server and start it again from its append-only file."""
        self.redis_kills += 1
        await asyncio.to_thread(self.redis.kill)
        await asyncio.to_thread(self.redis.start)

    def deployment(self) -> str:
        import redis

        client = redis.Redis(unix_socket_path=str(self.redis_socket))
        try:
            found = client.get("stockade:deployment")
            return found.decode() if isinstance(found, bytes) else str(found or "")
        finally:
            client.close()

    def containers(self, *, all_states: bool = True) -> list[dict[str, Any]]:
        """The raw listing of this deployment's agent containers."""
        import docker

        deployment = self.deployment()
        if not deployment:
            return []
        client = docker.from_env()
        try:
            label = f"org.stockade.deployment={deployment}"
            listed: list[dict[str, Any]] = client.api.containers(
                all=all_states, filters={"label": label}
            )
            return listed
        finally:
            client.close()

    def kill_container(self, pick: int) -> str:
        """SIGKILL one running agent container (the `pick`-th, modulo); its user, or ""."""
        import docker
        import docker.errors

        running = sorted(self.containers(all_states=False), key=lambda c: str(c["Id"]))
        if not running:
            return ""
        chosen = running[pick % len(running)]
        client = docker.from_env()
        try:
            client.api.kill(chosen["Id"], signal="SIGKILL")
        except docker.errors.APIError:
            return ""  # it stopped meanwhile
        finally:
            client.close()
        self.container_kills += 1
        return str((chosen.get("Labels") or {}).get("org.stockade.user", "?"))

    def unexpected_exits(self) -> dict[str, list[int]]:
        return {role: s.exits for role, s in self.services.items() if s.exits}


@contextlib.asynccontextmanager
async def running_pipeline(
    data_dir: Path, model_url: str, extra_env: dict[str, str]
) -> AsyncIterator[Pipeline]:
    """redis-server (append-only file on) and `stockade run router`, `stockade run channels`
    and `stockade run agents` (the supervisor and the mesh share that process, so killing
    it kills both), each restarted when it dies, as a service manager would; the agent
    containers are the supervisor's. Started, not waited for (`Pipeline.up` waits); on
    leaving, stopped, and the deployment's containers and workspaces removed."""
    redis = RedisProcess(data_dir / "redis", appendonly=True)
    await asyncio.to_thread(redis.start)
    env = environment(data_dir, model_url) | {"STOCKADE_REDIS__URL": redis.url, **extra_env}
    log_dir = data_dir / "logs"
    log_dir.mkdir()
    pipeline = Pipeline(data_dir, env, redis, {})
    deployment = ""
    try:
        await vault_set(env, "provider", "sk-chaos-provider-key")
        for role in ROLES:
            service = Service(role, env, log_dir)
            pipeline.services[role] = service
            service.start()
        yield pipeline
    finally:
        with contextlib.suppress(OSError, RedisError):
            deployment = pipeline.deployment()
        await asyncio.gather(*(s.stop() for s in pipeline.services.values()))
        redis.stop()

        await asyncio.to_thread(remove_agents, deployment, data_dir)


async def wait_until(what: str, check: Any, within_s: float, every_s: float = 0.1) -> float:
    """Poll `check()` until true; the seconds it took. TimeoutError names `what`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within_s:
            raise TimeoutError(f"{what}: not within {within_s:.0f} s")
        await asyncio.sleep(every_s)
    return time.monotonic() - started
