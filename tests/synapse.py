"""A real Synapse homeserver for tests: on 127.0.0.1, sqlite in a temporary directory.

Synapse lives in its own virtualenv (`scripts/synapse-venv`, or $SYNAPSE_VENV); without
it the tests that need it fail under CI=true and skip elsewhere. Users are registered
through the shared-secret admin API, so registration stays closed.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.services import missing

ROOT: Final = Path(__file__).resolve().parent.parent
SERVER_NAME: Final = "localhost"
START_TIMEOUT_S: Final = 60.0
_GENEROUS: Final = {"per_second": 1000, "burst_count": 1000}


def venv() -> Path:
    return Path(os.environ.get("SYNAPSE_VENV", ROOT / ".synapse-venv"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def homeserver_config(data_dir: Path, port: int, secret: str) -> dict[str, object]:
    """The smallest Synapse config for tests: client API only, no federation, no limits."""
    return {
        "server_name": SERVER_NAME,
        "pid_file": str(data_dir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(data_dir / "homeserver.db")}},
        "log_config": str(data_dir / "log.yaml"),
        "media_store_path": str(data_dir / "media"),
        "signing_key_path": str(data_dir / "signing.key"),
        "registration_shared_secret": secret,
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "enable_registration": False,
        "report_stats": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_domain_whitelist": [],
        "presence": {"enabled": False},
        "url_preview_enabled": False,
        "rc_message": _GENEROUS,
        "rc_registration": _GENEROUS,
        "rc_login": {"address": _GENEROUS, "account": _GENEROUS, "failed_attempts": _GENEROUS},
        "rc_joins": {"local": _GENEROUS, "remote": _GENEROUS},
        "rc_invites": {"per_room": _GENEROUS, "per_user": _GENEROUS, "per_issuer": _GENEROUS},
        "rc_admin_redaction": _GENEROUS,
        "rc_3pid_validation": _GENEROUS,
    }


_LOG_CONFIG: Final = {
    "version": 1,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"level": "WARNING", "handlers": ["console"]},
    "disable_existing_loggers": False,
}


def signing_key() -> str:
    """An ed25519 signing key in Synapse's file format: algorithm, version, unpadded seed."""
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"ed25519 a_{secrets.token_hex(2)} {seed}\n"


def registration_mac(secret: str, nonce: str, user: str, password: str, admin: bool) -> str:
    message = b"\x00".join(
        (nonce.encode(), user.encode(), password.encode(), b"admin" if admin else b"notadmin")
    )
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest()


@dataclass
class Synapse:
    """A running homeserver; `url` is its client API base."""

    url: str
    secret: str
    proc: subprocess.Popen[bytes]
    tokens: dict[str, str] = field(default_factory=dict)

    def user_id(self, user: str) -> str:
        return f"@{user}:{SERVER_NAME}"

    def _json(self, method: str, path: str, body: object | None = None) -> dict[str, object]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer

    def register(self, user: str, password: str, admin: bool = False) -> str:
        """Creates `user` (once per server) and returns an access token for it."""
        if user in self.tokens:
            return self.tokens[user]
        path = "/_synapse/admin/v1/register"
        nonce = str(self._json("GET", path)["nonce"])
        answer = self._json(
            "POST",
            path,
            {
                "nonce": nonce,
                "username": user,
                "password": password,
                "admin": admin,
                "mac": registration_mac(self.secret, nonce, user, password, admin),
            },
        )
        token = str(answer["access_token"])
        self.tokens[user] = token
        return token


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def running_synapse(data_dir: Path) -> Iterator[Synapse]:
    """Starts Synapse in `data_dir` (written from scratch) and stops it at the end."""
    python = venv() / "bin" / "python"
    if not python.exists():
        missing(f"Synapse is not installed in {venv()}: run scripts/synapse-venv")
    data_dir.mkdir(parents=True, exist_ok=True)
    port, secret = _free_port(), secrets.token_hex(16)
    config = homeserver_config(data_dir, port, secret)
    # JSON is YAML: no YAML writer is needed on this side.
    (data_dir / "homeserver.yaml").write_text(json.dumps(config, indent=1))
    (data_dir / "log.yaml").write_text(json.dumps(_LOG_CONFIG))
    (data_dir / "signing.key").write_text(signing_key())
    log = (data_dir / "synapse.log").open("wb")
    proc = subprocess.Popen(
        [str(python), "-m", "synapse.app.homeserver", "-c", str(data_dir / "homeserver.yaml")],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None:
                tail = (data_dir / "synapse.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"synapse exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError("synapse did not answer /health in time")
            time.sleep(0.1)
        yield Synapse(url=url, secret=secret, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


_shared: list[Synapse] = []


def shared_synapse() -> Synapse:
    """The one Synapse of this test process, started on first use, stopped at exit.

    The `synapse` fixture and the contract harness (which gets no fixtures) both use it.
    """
    if not _shared:
        data_dir = Path(tempfile.mkdtemp(prefix="stk-synapse-"))
        context = running_synapse(data_dir)
        _shared.append(context.__enter__())

        def stop() -> None:
            context.__exit__(None, None, None)
            shutil.rmtree(data_dir, ignore_errors=True)

        atexit.register(stop)
    return _shared[0]
