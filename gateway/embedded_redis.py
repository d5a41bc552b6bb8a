"""A private redis-server for a single machine, used when no Redis URL is configured.

It listens only on a unix socket in the data directory (no TCP port) and keeps
an append-only file there, so accepted messages survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from gateway.errors import BinaryMissing, DependencyError

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107
_START_TIMEOUT_S: Final = 15.0


def socket_path(data_dir: Path) -> Path:
    return data_dir / "redis.sock"


def server_argv(binary: str, data_dir: Path, *, appendonly: bool = True) -> list[str]:
    """The redis-server command line for a private server in `data_dir`."""
    sock = socket_path(data_dir)
    if len(str(sock).encode()) > _MAX_SOCKET_PATH:
        raise DependencyError(
            f"the Redis socket path {sock} is longer than {_MAX_SOCKET_PATH} bytes; "
            "choose a shorter data directory"
        )
    return [
        binary,
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
        "--logfile",
        str(data_dir / "redis.log"),
    ]


def find_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BinaryMissing("redis-server", "redis-server")
    return binary


async def _wait_ready(sock: Path, proc: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_TIMEOUT_S
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise DependencyError(
                f"redis-server exited with status {proc.returncode}; "
                f"see {sock.parent / 'redis.log'}"
            )
        if sock.exists():
            try:
                reader, writer = await asyncio.open_unix_connection(str(sock))
            except OSError:
                pass
            else:
                writer.write(b"PING\r\n")
                await writer.drain()
                line = await reader.readline()
                writer.close()
                await writer.wait_closed()
                if line.startswith(b"+PONG"):
                    return
        await asyncio.sleep(0.02)
    raise DependencyError(f"redis-server did not answer on {sock} within {_START_TIMEOUT_S} s")


@contextlib.asynccontextmanager
async def embedded_redis(data_dir: Path, *, appendonly: bool = True) -> AsyncIterator[str]:
    """Run a private redis-server for the duration of the block; yields its URL."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = server_argv(find_binary(), data_dir, appendonly=appendonly)
    sock = socket_path(data_dir)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_ready(sock, proc)
        yield f"unix://{sock}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
