"""Logging in: a nio client for the homeserver, its device id kept in the state directory.

The device id comes from the settings, else from the state directory, else from the
homeserver (whoami for an access token, the login's answer for a password); it is
saved so that the next start is the same device, with the same encryption keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from nio import AsyncClient, AsyncClientConfig, LoginResponse, WhoamiResponse

from channels.matrix import convert
from channels.matrix._errors import call
from gateway.settings import MatrixSettings

REQUEST_TIMEOUT_S: Final = 60.0
DEVICE_FILE: Final = "device_id"


def save(path: Path, value: str) -> None:
    """`value` as the whole of `path`, through a rename: never half written."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    tmp.replace(path)


async def login(
    settings: MatrixSettings, homeserver: str, state_dir: Path | None
) -> tuple[Any, convert.Bot]:
    """A logged-in nio client, and the bot as rooms see it (its id and display name)."""
    device_id = settings.device_id
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        saved = state_dir / DEVICE_FILE
        if not device_id and saved.exists():
            device_id = saved.read_text().strip()
    config = AsyncClientConfig(
        encryption_enabled=settings.encryption,
        store_sync_tokens=False,  # our own file, written after publishing
        max_limit_exceeded=0,  # rate limits reach send_with_retry, which honours them
        max_timeouts=0,
        request_timeout=REQUEST_TIMEOUT_S,
    )
    client = AsyncClient(
        homeserver,
        settings.user_id,
        device_id=device_id or None,
        store_path=str(state_dir) if state_dir is not None else "",
        config=config,
    )
    try:
        if settings.access_token is not None:
            client.access_token = settings.access_token.get_secret_value()
            # Asked even with a known device id: a refused token shows here, at start,
            # rather than at the first sync.
            whoami = await call("whoami", client.whoami())
            if not device_id and isinstance(whoami, WhoamiResponse):
                device_id = whoami.device_id or ""
            client.restore_login(settings.user_id, device_id, client.access_token)
        else:
            assert settings.password is not None  # the settings validator saw to it
            answer = await call(
                "login", client.login(settings.password.get_secret_value(), "stockade")
            )
            device_id = answer.device_id if isinstance(answer, LoginResponse) else device_id
        if state_dir is not None and device_id:
            save(state_dir / DEVICE_FILE, device_id)
        profile = await client.get_displayname(settings.user_id)
        bot = convert.Bot(settings.user_id, getattr(profile, "displayname", "") or "")
    except BaseException:
        await client.close()
        raise
    return client, bot
