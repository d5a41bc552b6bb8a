"""A connected docker SDK client from `DockerSettings`, or a `DockerUnavailable` saying what to do.

The SDK is blocking: call `docker_client` and the client's methods from a worker thread.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import docker
import docker.errors

from gateway.errors import DockerUnavailable
from gateway.settings import DockerSettings

_DEFAULT_SOCKET = "unix:///var/run/docker.sock"

HOW_TO_START = (
    "start it with `dockerd &` (Debian: apt-get install docker.io; scripts/up does both), "
    "or point docker.url (STOCKADE_DOCKER__URL) or DOCKER_HOST at a running engine"
)


def engine_address(settings: DockerSettings) -> str:
    """Where the client will connect: the setting, else DOCKER_HOST, else the default socket."""
    return settings.url or os.environ.get("DOCKER_HOST") or _DEFAULT_SOCKET


def docker_client(settings: DockerSettings, *, timeout: float = 120.0) -> Any:
    """A `docker.DockerClient` that has answered a ping. Close it when done.

    `timeout` bounds each read from the engine, so it must exceed the longest quiet
    stretch of any call (a build step with no output, stopping a container).
    """
    address = engine_address(settings)
    unreachable = _probe(address)
    if unreachable is not None:
        raise DockerUnavailable(f"no Docker engine at {address} ({unreachable}); {HOW_TO_START}")
    try:
        if settings.url:
            client = docker.DockerClient(base_url=settings.url, timeout=timeout)
        else:
            client = docker.from_env(timeout=timeout)
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerUnavailable(
            f"no Docker engine at {address} ({_reason(exc)}); {HOW_TO_START}"
        ) from None
    try:
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        client.close()
        raise DockerUnavailable(
            f"no Docker engine at {address} ({_reason(exc)}); {HOW_TO_START}"
        ) from None
    return client


def _probe(address: str) -> str | None:
    """Why a unix socket engine does not answer, or None; other schemes are left to the SDK.

    The SDK connects inside its constructor and leaks that socket when the connect
    fails, so the common case (no engine running) is caught here first.
    """
    if not address.startswith("unix://"):
        return None
    path = address.removeprefix("unix://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5.0)
        try:
            probe.connect(path)
        except PermissionError:
            return f"permission denied on {path}: run as root or join the docker group"
        except OSError as exc:
            return exc.strerror or type(exc).__name__
    return None


def _reason(exc: BaseException) -> str:
    # The SDK wraps requests' errors in long reprs; the first line is the useful part.
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
