"""Real services for tests: a redis-server per session, on a unix socket.

With CI=true a missing service fails the test run; elsewhere it skips, with the
reason naming the package to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Final, NoReturn

import pytest

from gateway import embedded_redis
from gateway.settings import ImageSettings

TEST_IMAGE: Final = ImageSettings(name="stockade-test-agent")
"""Apart from the deployment's image, so a test run never moves its `latest` tag."""


def missing(message: str) -> NoReturn:
    """A service the test needs is not there: a failure in CI, a skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        missing(f"{binary} is missing: apt-get install {package} (scripts/check does this)")
    return path


class RedisProcess:
    """A redis-server started with the gateway's own command line."""

    def __init__(self, data_dir: Path, *, appendonly: bool = False) -> None:
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{embedded_redis.socket_path(self.data_dir)}"

    def start(self) -> None:
        binary = require("redis-server", "redis-server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = embedded_redis.server_argv(binary, self.data_dir, appendonly=self.appendonly)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        sock = embedded_redis.socket_path(self.data_dir)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sock.exists() and _ping(sock):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _ping(sock: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False
