"""Stockade's one typed configuration: a TOML file plus STOCKADE_* environment overrides.

Each component gets its own sub-model and receives only that part. Unknown keys
and wrong types are errors that name the file (or variable), the key and the
problem; `load()` turns them into one `ConfigError`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gateway.errors import ConfigError

ENV_PREFIX: Final = "STOCKADE_"
ENV_NESTED: Final = "__"
CONFIG_ENV: Final = "STOCKADE_CONFIG"
DEFAULT_FILE: Final = "stockade.toml"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(_Part):
    url: str | None = None
    """redis:// or unix:// URL; unset starts a private redis-server in the data directory."""


class BusSettings(_Part):
    max_deliveries: int = Field(default=5, ge=1, le=100)
    """Deliveries without an ack before an entry goes to the dead-letter stream."""
    claim_idle_ms: int = Field(default=30_000, ge=100)
    """Pending entries idle this long are reclaimed from a dead consumer.

    It must exceed the slowest legitimate handler, or two workers run one entry."""
    dedupe_ttl_s: int = Field(default=7 * 86_400, ge=60)
    """How long a platform event id is remembered, to drop redeliveries."""
    stream_maxlen: int = Field(default=1_000_000, ge=1_000)
    """Approximate cap per stream. Trimming can drop unacknowledged entries, so keep it large."""
    batch: int = Field(default=100, ge=1, le=10_000)
    block_ms: int = Field(default=1_000, ge=1, le=60_000)


class DockerSettings(_Part):
    url: str | None = None
    """Docker Engine API, e.g. "unix:///var/run/docker.sock"; unset: DOCKER_HOST, else default."""


class ImageSettings(_Part):
    name: str = "stockade-agent"
    """Repository name of the agent image; the tag is a hash of what goes into it."""
    base_image: str | None = None
    """A registry image with python3 to build on. Unset builds an offline Debian base."""
    debian_suite: str = "bookworm"
    debian_mirror: str | None = None
    """Mirror for the offline base; unset takes the one apt uses on this machine."""


class AgentLimits(_Part):
    """Resource limits of one agent container; safe defaults, overridable per user."""

    memory_mb: int = Field(default=512, ge=32, le=65_536)
    """Memory limit; swap is set equal, so the agent cannot swap past it."""
    cpus: float = Field(default=1.0, gt=0, le=64)
    pids: int = Field(default=128, ge=8, le=32_768)
    tmpfs_mb: int = Field(default=64, ge=1, le=4_096)
    """Size of the noexec /tmp; the root filesystem is read-only."""


class SupervisorSettings(_Part):
    limits: AgentLimits = AgentLimits()
    overrides: dict[str, AgentLimits] = {}
    """Per-user limits, keyed by internal user id."""
    idle_stop_s: float = Field(default=900.0, ge=5)
    """A container with no message for this long is stopped (its workspace is kept)."""
    max_running: int = Field(default=20, ge=1, le=10_000)
    """At most this many agent containers at once; further users wait in line."""
    check_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often containers are checked for crashes and idleness."""


class ModelSettings(_Part):
    """The model agents call through the mesh (the vault and budgets take over the key later)."""

    name: str = "openai/gpt-4o-mini"
    """A LiteLLM model string, "<provider>/<model>"."""
    api_base: str | None = None
    """Provider endpoint; unset uses LiteLLM's default for the provider."""
    api_key: SecretStr | None = None
    max_tokens: int = Field(default=1024, ge=1, le=200_000)
    """Upper bound on completion tokens per call; an agent may ask for fewer, never more."""
    timeout_s: float = Field(default=60.0, gt=0, le=600)


class MeshSettings(_Part):
    """The agent-facing server: one unix socket per agent, the agent's only door."""

    max_request_bytes: int = Field(default=1_000_000, ge=1_024)
    max_reply_chars: int = Field(default=20_000, ge=100)
    """Longest reply an agent may send; longer replies are cut with a note."""
    next_wait_s: float = Field(default=20.0, gt=0, le=300)
    """How long a request for the next message waits before answering "nothing yet"."""


class RouterSettings(_Part):
    command_prefix: str = Field(default="/", min_length=1, max_length=2)


class ConsoleSettings(_Part):
    enabled: bool = True


class TelegramSettings(_Part):
    enabled: bool = False
    token: SecretStr | None = None

    @model_validator(mode="after")
    def _token_when_enabled(self) -> TelegramSettings:
        if self.enabled and self.token is None:
            raise ValueError("token: required when enabled = true")
        return self


class DiscordSettings(_Part):
    enabled: bool = False
    token: SecretStr | None = None

    @model_validator(mode="after")
    def _token_when_enabled(self) -> DiscordSettings:
        if self.enabled and self.token is None:
            raise ValueError("token: required when enabled = true")
        return self


class SlackSettings(_Part):
    enabled: bool = False
    mode: Literal["socket", "http"] = "socket"
    bot_token: SecretStr | None = None
    app_token: SecretStr | None = None
    signing_secret: SecretStr | None = None

    @model_validator(mode="after")
    def _tokens_when_enabled(self) -> SlackSettings:
        if not self.enabled:
            return self
        if self.bot_token is None:
            raise ValueError("bot_token: required when enabled = true")
        if self.mode == "socket" and self.app_token is None:
            raise ValueError('app_token: required when mode = "socket"')
        if self.mode == "http" and self.signing_secret is None:
            raise ValueError('signing_secret: required when mode = "http"')
        return self


class MatrixSettings(_Part):
    enabled: bool = False
    homeserver: str = ""
    user_id: str = ""
    access_token: SecretStr | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _login_when_enabled(self) -> MatrixSettings:
        if not self.enabled:
            return self
        if not self.homeserver:
            raise ValueError("homeserver: required when enabled = true")
        if not self.user_id:
            raise ValueError("user_id: required when enabled = true")
        if self.access_token is None and self.password is None:
            raise ValueError("access_token: required (or password) when enabled = true")
        return self


class WhatsAppSettings(_Part):
    enabled: bool = False
    account_sid: str = ""
    auth_token: SecretStr | None = None
    from_number: str = ""
    public_url: str = ""
    """The URL Twilio calls, as seen from outside any reverse proxy; signatures cover it."""

    @model_validator(mode="after")
    def _credentials_when_enabled(self) -> WhatsAppSettings:
        if not self.enabled:
            return self
        for name in ("account_sid", "from_number", "public_url"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required when enabled = true")
        if self.auth_token is None:
            raise ValueError("auth_token: required when enabled = true")
        return self


class ChannelsSettings(_Part):
    console: ConsoleSettings = ConsoleSettings()
    telegram: TelegramSettings = TelegramSettings()
    discord: DiscordSettings = DiscordSettings()
    slack: SlackSettings = SlackSettings()
    matrix: MatrixSettings = MatrixSettings()
    whatsapp: WhatsAppSettings = WhatsAppSettings()


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "stockade"


class Settings(BaseSettings):
    """The whole configuration. Build it with `load()`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    redis: RedisSettings = RedisSettings()
    bus: BusSettings = BusSettings()
    router: RouterSettings = RouterSettings()
    docker: DockerSettings = DockerSettings()
    image: ImageSettings = ImageSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    model: ModelSettings = ModelSettings()
    mesh: MeshSettings = MeshSettings()
    channels: ChannelsSettings = ChannelsSettings()

    @field_validator("data_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # File values arrive as init arguments; the environment overrides them.
        return (env_settings, init_settings)


def _find_file(path: Path | None) -> Path | None:
    if path is not None:
        return path
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    local = Path(DEFAULT_FILE)
    if local.is_file():
        return local
    user = Path.home() / ".config" / "stockade" / DEFAULT_FILE
    return user if user.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(str(path), "-", "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), "-", f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "-", f"not valid TOML: {exc}") from None


def _env_name(loc: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED.join(str(part) for part in loc).upper()


def _present(data: dict[str, Any], loc: tuple[str | int, ...]) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _explain(error: ValidationError, file: Path | None, data: dict[str, Any]) -> ConfigError:
    first = error.errors(include_url=False, include_input=False)[0]
    loc: tuple[str | int, ...] = tuple(first["loc"])
    message = str(first["msg"])
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif message.startswith("Value error, "):
        # Cross-field checks name the key inside the message: "token: required …".
        message = message.removeprefix("Value error, ")
        key, sep, rest = message.partition(": ")
        if sep:
            loc, message = (*loc, key), rest
    key = ".".join(str(part) for part in loc) or "-"
    if _env_name(loc) in {name.upper() for name in os.environ}:
        source = f"environment {_env_name(loc)}"
    elif file is not None and (_present(data, loc) or _present(data, loc[:-1])):
        source = str(file)
    else:
        source = str(file) if file is not None else "configuration"
    return ConfigError(source, key, message)


def _check_environment() -> None:
    """Refuse STOCKADE_* variables that name no setting: a typo must not pass silently."""
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV:
            continue
        parts = upper.removeprefix(ENV_PREFIX).lower().split(ENV_NESTED)
        model: type[BaseModel] = Settings
        for index, part in enumerate(parts):
            if part not in model.model_fields:
                key = ".".join(parts[: index + 1])
                raise ConfigError(f"environment {upper}", key, "unknown key")
            annotation = model.model_fields[part].annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                break  # a value or a mapping (per-user overrides): pydantic checks the rest
            model = annotation


def load(path: Path | None = None) -> Settings:
    """Read the configuration file (if any) and the environment; raise `ConfigError`."""
    file = _find_file(path)
    data = _read_toml(file) if file is not None else {}
    _check_environment()
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise _explain(exc, file, data) from None
