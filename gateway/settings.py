"""Stockade's one typed configuration: a TOML file plus STOCKADE_* environment overrides.

Each component gets its own sub-model and receives only that part. Unknown keys
and wrong types are errors that name the file (or variable), the key and the
problem; `load()` turns them into one `ConfigError`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
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

from gateway.errors import ConfigError, VaultError

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


MIN_WORKSPACE_MB: Final = 16
"""ext4 with its journal needs a few MB of its own."""


class AgentLimits(_Part):
    """Resource limits of one agent container; safe defaults, overridable per user."""

    memory_mb: int = Field(default=512, ge=32, le=65_536)
    """Memory limit; swap is set equal, so the agent cannot swap past it."""
    cpus: float = Field(default=1.0, gt=0, le=64)
    pids: int = Field(default=128, ge=8, le=32_768)
    tmpfs_mb: int = Field(default=64, ge=1, le=4_096)
    """Size of the noexec /tmp; the root filesystem is read-only."""
    workspace_mb: int = Field(default=1_024, ge=0, le=1_048_576)
    """Size of the workspace, a filesystem of its own (an ext4 image loop-mounted on the
    host, which takes root and `mkfs.ext4`); a larger size grows it, a smaller one is
    not applied to an existing workspace. 0: an uncapped Docker volume, which lets an
    agent fill the disk that holds Docker's volumes."""

    @field_validator("workspace_mb")
    @classmethod
    def _workspace_fits_a_filesystem(cls, value: int) -> int:
        if 0 < value < MIN_WORKSPACE_MB:
            raise ValueError(f"0 (uncapped) or at least {MIN_WORKSPACE_MB}")
        return value


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


class Price(_Part):
    """What one model costs, in US dollars per million tokens."""

    input_usd_per_mtok: float = Field(ge=0, le=100_000)
    output_usd_per_mtok: float = Field(ge=0, le=100_000)


class ModelSettings(_Part):
    """One model agents may call through the mesh; its key stays in the vault."""

    name: str = "openai/gpt-4o-mini"
    """A LiteLLM model string, "<provider>/<model>"."""
    api_base: str | None = None
    """Provider endpoint; unset uses LiteLLM's default for the provider."""
    secret: str | None = "openai"
    """The vault entry holding the provider key (`stockade vault set NAME`); unset sends none."""
    price: Price | None = None
    """Unset takes LiteLLM's cost map; a model priced in neither is refused."""
    max_tokens: int = Field(default=1024, ge=1, le=200_000)
    """Upper bound on completion tokens per call; an agent may ask for fewer, never more."""
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    retries: int = Field(default=2, ge=0, le=10)
    """Retries of a failed provider call (connection errors, 429, 5xx), with backoff."""
    fallback: str | None = None
    """Another entry of [models] to call when this one keeps failing."""

    @field_validator("secret", "api_base", "fallback", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An environment variable can only be set to "", not unset, in a compose file.
        return None if value == "" else value


DEFAULT_MODEL: Final = "default"


class MeshSettings(_Part):
    """The agent-facing server: one unix socket per agent, the agent's only door."""

    max_request_bytes: int = Field(default=1_000_000, ge=1_024)
    max_reply_chars: int = Field(default=20_000, ge=100)
    """Longest reply an agent may send; longer replies are cut with a note."""
    next_wait_s: float = Field(default=20.0, gt=0, le=300)
    """How long a request for the next message waits before answering "nothing yet"."""
    typing_after_s: float = Field(default=1.0, ge=0, le=60)
    """How long a turn may take before its channel shows "typing…"; a quicker one shows none."""
    allowed_models: list[str] = [DEFAULT_MODEL]
    """Entries of [models] every agent may call; the first is used when an agent names none."""
    allowed_models_by_user: dict[str, list[str]] = {}
    """Per-user replacement of `allowed_models`, keyed by internal user id."""


class VaultSettings(_Part):
    """Where provider secrets are kept, encrypted, and where the key that opens them is."""

    store: Path | None = None
    """The encrypted store; unset: <data_dir>/vault/secrets.json."""
    key_file: Path | None = None
    """The 32-byte master key (base64); unset: <data_dir>/vault/master.key, made on first use."""
    key: SecretStr | None = None
    """The master key itself (base64), e.g. from STOCKADE_VAULT__KEY; wins over key_file."""


class Caps(_Part):
    """Spending caps in US dollars per window; unset means no cap on that window."""

    daily_usd: float | None = Field(default=None, ge=0)
    monthly_usd: float | None = Field(default=None, ge=0)


class BudgetSettings(_Part):
    """Spending caps, checked and reserved before every model call."""

    user: Caps = Caps(daily_usd=1.0, monthly_usd=20.0)
    """Every user's caps unless overridden."""
    overrides: dict[str, Caps] = {}
    """Per-user caps, keyed by internal user id; they replace `user` for that user."""
    total: Caps = Caps(monthly_usd=200.0)
    """Caps on the spend of all users together."""
    warn_at: float = Field(default=0.8, gt=0, le=1)
    """A user is told once per window when their spend passes this fraction of a cap."""
    timezone: str = "UTC"
    """Where days and months begin and end (an IANA name)."""
    reservation_ttl_s: int = Field(default=900, ge=10, le=86_400)
    """An unsettled reservation expires after this long and is billed at its reserved amount."""
    ledger_dir: Path | None = None
    """The append-only spend ledger; unset: <data_dir>/ledger."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class RouterSettings(_Part):
    command_prefix: str = Field(default="/", min_length=1, max_length=2)


class MetricsSettings(_Part):
    """The operators' /metrics endpoint (Prometheus text), served by `up` and `run router`."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9480, ge=0, le=65_535)
    cache_s: float = Field(default=1.0, ge=0, le=60)
    """Scrapes within this many seconds of the last Redis read get the same figures."""


class ConsoleSettings(_Part):
    enabled: bool = True


def _api_base(value: str) -> str:
    """A platform API address: https, or plain http only to this machine (a local fake,
    a local Bot API server). Tokens travel in these requests."""
    parsed = urlsplit(value)
    if parsed.scheme == "https" and parsed.hostname:
        return value
    if parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "localhost", "::1"):
        return value
    raise ValueError("must be an https:// URL (or http:// on 127.0.0.1 / localhost)")


def _path(value: str) -> str:
    if not value.startswith("/") or "?" in value or "#" in value:
        raise ValueError("must be a URL path starting with /, without query")
    return value


WebhookPath = Annotated[str, AfterValidator(_path)]
ApiBase = Annotated[str, AfterValidator(_api_base)]
_TELEGRAM_SECRET = re.compile(r"[A-Za-z0-9_-]{16,256}")

VAULT_PREFIX: Final = "vault:"
"""A channel credential written "vault:NAME" is the vault entry NAME, read when the
channels start; any other value is the credential itself."""


def is_vault_reference(value: SecretStr | None) -> bool:
    return value is not None and value.get_secret_value().startswith(VAULT_PREFIX)


def _credential(value: SecretStr) -> SecretStr:
    if is_vault_reference(value):
        # gateway.vault imports this module, so its name rule is imported here, when used.
        from gateway.vault import entry_name

        try:
            entry_name(value.get_secret_value())
        except VaultError as exc:
            raise ValueError(str(exc)) from None
    return value


Credential = Annotated[SecretStr, AfterValidator(_credential)]
"""A platform token or password: the value itself, or "vault:NAME" (a valid entry name)."""


class TelegramSettings(_Part):
    enabled: bool = False
    token: Credential | None = None
    mode: Literal["polling", "webhook"] = "polling"
    webhook_path: WebhookPath = "/telegram"
    """Where the shared webhook server takes Telegram's updates (mode = "webhook")."""
    secret_token: Credential | None = None
    """Telegram sends it back in X-Telegram-Bot-Api-Secret-Token; 16–256 of [A-Za-z0-9_-]."""
    api_base: ApiBase = "https://api.telegram.org"
    poll_timeout_s: int = Field(default=30, ge=0, le=50)
    bot_username: str = ""
    """Asked of Telegram at start when empty; needed to see mentions in groups."""

    @model_validator(mode="after")
    def _token_when_enabled(self) -> TelegramSettings:
        if self.enabled and self.token is None:
            raise ValueError("token: required when enabled = true")
        if self.enabled and self.mode == "webhook" and self.secret_token is None:
            raise ValueError('secret_token: required when mode = "webhook"')
        # A vault reference is checked by this rule once the channels role has read it.
        if (
            self.secret_token is not None
            and not is_vault_reference(self.secret_token)
            and not _TELEGRAM_SECRET.fullmatch(self.secret_token.get_secret_value())
        ):
            raise ValueError("secret_token: 16 to 256 characters of A-Z, a-z, 0-9, _ and -")
        return self


def _gateway_url(value: str) -> str:
    """A WebSocket address: wss, or plain ws only to this machine (a local fake)."""
    parsed = urlsplit(value)
    if parsed.scheme == "wss" and parsed.hostname:
        return value
    if parsed.scheme == "ws" and parsed.hostname in ("127.0.0.1", "localhost", "::1"):
        return value
    raise ValueError("must be a wss:// URL (or ws:// on 127.0.0.1 / localhost)")


GatewayUrl = Annotated[str, AfterValidator(_gateway_url)]


class DiscordSettings(_Part):
    enabled: bool = False
    token: Credential | None = None
    api_base: ApiBase = "https://discord.com/api/v10"
    gateway_url: GatewayUrl = "wss://gateway.discord.gg/"
    command_guilds: tuple[int, ...] = ()
    """Guilds to register slash commands in at once; empty registers them globally
    (Discord may take up to an hour to show global commands)."""

    @model_validator(mode="after")
    def _token_when_enabled(self) -> DiscordSettings:
        if self.enabled and self.token is None:
            raise ValueError("token: required when enabled = true")
        return self


class SlackSettings(_Part):
    enabled: bool = False
    mode: Literal["socket", "http"] = "socket"
    bot_token: Credential | None = None
    app_token: Credential | None = None
    signing_secret: Credential | None = None
    webhook_path: WebhookPath = "/slack/events"
    """Events, slash commands and interactivity all come here (mode = "http")."""
    api_base: ApiBase = "https://slack.com/api/"
    files_base: ApiBase = "https://files.slack.com/"
    """Only files under this address are fetched (with the bot token)."""

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
    access_token: Credential | None = None
    password: Credential | None = None
    device_id: str = ""
    """Kept across restarts so the bot stays one device (needed for encryption)."""
    allowed_inviters: tuple[str, ...] = ()
    """User ids whose invites the bot accepts; any other invite is declined."""
    encryption: bool = False
    """End-to-end encrypted rooms (matrix-nio's e2e, keys in the channels' state directory)."""

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
    auth_token: Credential | None = None
    from_number: str = ""
    """The sender, e.g. "whatsapp:+14155238886"."""
    webhook_path: WebhookPath = "/twilio/whatsapp"
    status_path: WebhookPath = "/twilio/status"
    api_base: ApiBase = "https://api.twilio.com"
    media_base: ApiBase = "https://api.twilio.com"
    """Only media under this address are fetched (with the account's credentials)."""

    @model_validator(mode="after")
    def _credentials_when_enabled(self) -> WhatsAppSettings:
        if not self.enabled:
            return self
        for name in ("account_sid", "from_number"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required when enabled = true")
        if self.auth_token is None:
            raise ValueError("auth_token: required when enabled = true")
        return self


class WebhookSettings(_Part):
    """The one HTTP server that webhook-mode channels share."""

    host: str = "127.0.0.1"
    port: int = Field(default=8480, ge=0, le=65_535)
    public_url: str = ""
    """Scheme and host the platforms call, before any reverse proxy (e.g.
    "https://bot.example.org"). Required by any channel in webhook mode: Telegram is
    told it, and Twilio's signatures cover it."""
    max_body_bytes: int = Field(default=1_048_576, ge=1_024, le=64 * 1_048_576)
    per_peer_per_s: float = Field(default=50.0, gt=0)
    per_peer_burst: int = Field(default=200, ge=1)
    """Refused requests (bad signature, too large) one address may send; verified ones
    are not counted here (senders are limited by `ingress` after parsing)."""
    trust_forwarded_for: bool = False
    """Rate-limit by X-Forwarded-For; only behind a proxy that sets it."""

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str) -> str:
        if value and (
            urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname
        ):
            raise ValueError("must be an http(s) URL such as https://bot.example.org")
        return value.rstrip("/")


class IngressSettings(_Part):
    """How fast one person may send, on any channel, before messages are dropped."""

    per_sender_per_s: float = Field(default=1.0, gt=0)
    per_sender_burst: int = Field(default=20, ge=1)


class MediaSettings(_Part):
    max_bytes: int = Field(default=20 * 1_048_576, ge=1_024, le=512 * 1_048_576)
    allowed_types: tuple[str, ...] = (
        "image/*",
        "audio/*",
        "video/*",
        "text/plain",
        "text/csv",
        "text/markdown",
        "application/pdf",
        "application/json",
        "application/zip",
        "application/octet-stream",
    )
    """Media types (with * wildcards) that may be handed to an agent."""


class ChannelsSettings(_Part):
    webhooks: WebhookSettings = WebhookSettings()
    ingress: IngressSettings = IngressSettings()
    media: MediaSettings = MediaSettings()
    console: ConsoleSettings = ConsoleSettings()
    telegram: TelegramSettings = TelegramSettings()
    discord: DiscordSettings = DiscordSettings()
    slack: SlackSettings = SlackSettings()
    matrix: MatrixSettings = MatrixSettings()
    whatsapp: WhatsAppSettings = WhatsAppSettings()

    @model_validator(mode="after")
    def _public_url_for_webhooks(self) -> ChannelsSettings:
        needs = [
            name
            for name, on in (
                ("telegram", self.telegram.enabled and self.telegram.mode == "webhook"),
                ("slack", self.slack.enabled and self.slack.mode == "http"),
                ("whatsapp", self.whatsapp.enabled),
            )
            if on
        ]
        if needs and not self.webhooks.public_url:
            raise ValueError(
                f"webhooks.public_url: required for {', '.join(needs)} (the URL platforms call)"
            )
        return self


CHANNEL_CREDENTIALS: Final[Mapping[str, tuple[str, ...]]] = {
    "telegram": ("token", "secret_token"),
    "discord": ("token",),
    "slack": ("bot_token", "app_token", "signing_secret"),
    "matrix": ("access_token", "password"),
    "whatsapp": ("auth_token",),
}
"""The credential fields of each platform's settings; any of them may be "vault:NAME"."""


DmPolicy = Literal["allowlist", "pairing", "open", "disabled"]
GroupPolicy = Literal["mention", "open", "disabled"]


class ChannelAccess(_Part):
    """Who may talk to the bot on one channel, and who runs it."""

    dm_policy: DmPolicy = "pairing"
    """Direct messages: "allowlist" (only allowed people), "pairing" (unknown senders get
    a code an admin approves), "open" (anyone not denied), "disabled" (none)."""
    groups: GroupPolicy = "mention"
    """Group chats: "mention" (answer only when mentioned or replied to), "open" (every
    message), "disabled" (ignore groups). Senders must be allowed unless dm_policy is open."""
    admins: tuple[str, ...] = ()
    """Platform user ids of the operators on this channel. Nobody becomes admin otherwise."""
    allow: tuple[str, ...] = ()
    """Platform user ids allowed from the start (more are added with /allow and pairing)."""

    @field_validator("admins", "allow")
    @classmethod
    def _ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not item or item != item.strip() or len(item) > 256:
                raise ValueError(f"{item!r} is not a platform user id")
        return value


class LoopGuardSettings(_Part):
    """Stops two bots (or a script) talking to each other through the assistant."""

    per_conversation_per_min: int = Field(default=30, ge=1, le=10_000)
    """Messages one conversation may send in a minute; beyond it the conversation is paused."""
    pause_s: int = Field(default=600, ge=10, le=86_400)
    """How long a paused conversation is ignored (admins' commands still work)."""


class AccessSettings(_Part):
    """Who may talk, per channel; who is an admin; pairing; bots."""

    allow_bots: bool = False
    """Messages from other bots are ignored unless this is on."""
    pairing_ttl_s: int = Field(default=3_600, ge=60, le=7 * 86_400)
    max_pending_pairings: int = Field(default=3, ge=1, le=100)
    """Pairing codes waiting for approval at once, per channel; more senders get none."""
    loop_guard: LoopGuardSettings = LoopGuardSettings()
    console: ChannelAccess = ChannelAccess(dm_policy="open")
    """The terminal: whoever reaches the data directory controls Stockade anyway."""
    telegram: ChannelAccess = ChannelAccess()
    discord: ChannelAccess = ChannelAccess()
    slack: ChannelAccess = ChannelAccess()
    matrix: ChannelAccess = ChannelAccess()
    whatsapp: ChannelAccess = ChannelAccess()

    def of(self, channel: str) -> ChannelAccess:
        """The policy of `channel`; an unknown channel gets the strictest one."""
        found = getattr(self, channel, None) if channel in _ACCESS_CHANNELS else None
        return found if isinstance(found, ChannelAccess) else _CLOSED


_ACCESS_CHANNELS: Final = frozenset(
    ("console", "telegram", "discord", "slack", "matrix", "whatsapp")
)
_CLOSED: Final = ChannelAccess(dm_policy="disabled", groups="disabled")


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
    metrics: MetricsSettings = MetricsSettings()
    docker: DockerSettings = DockerSettings()
    image: ImageSettings = ImageSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    models: dict[str, ModelSettings] = {DEFAULT_MODEL: ModelSettings()}
    mesh: MeshSettings = MeshSettings()
    vault: VaultSettings = VaultSettings()
    budget: BudgetSettings = BudgetSettings()
    channels: ChannelsSettings = ChannelsSettings()
    access: AccessSettings = AccessSettings()
    _plain_in_file: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("data_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _models_exist(self) -> Settings:
        for alias, model in self.models.items():
            if model.fallback is not None and model.fallback not in self.models:
                raise ValueError(
                    f"models.{alias}.fallback: no model {model.fallback!r} in [models]"
                )
            if model.fallback == alias:
                raise ValueError(f"models.{alias}.fallback: a model cannot fall back to itself")
        lists = {"mesh.allowed_models": self.mesh.allowed_models} | {
            f"mesh.allowed_models_by_user.{user}": aliases
            for user, aliases in self.mesh.allowed_models_by_user.items()
        }
        for key, aliases in lists.items():
            for alias in aliases:
                if alias not in self.models:
                    raise ValueError(f"{key}: no model {alias!r} in [models]")
        return self

    def vault_store(self) -> Path:
        return self.vault.store or self.data_dir / "vault" / "secrets.json"

    def vault_key_file(self) -> Path:
        return self.vault.key_file or self.data_dir / "vault" / "master.key"

    def ledger_dir(self) -> Path:
        return self.budget.ledger_dir or self.data_dir / "ledger"

    def plain_credentials_in_file(self) -> tuple[str, ...]:
        """Keys of the channel credentials `load()` found written out in the settings file."""
        return self._plain_in_file

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


def _plain_credentials(data: Mapping[str, Any]) -> tuple[str, ...]:
    """Keys of the channel credentials `data` (a settings file) holds as values, not references."""
    channels = data.get("channels")
    found: list[str] = []
    for platform, fields in CHANNEL_CREDENTIALS.items():
        part = channels.get(platform) if isinstance(channels, dict) else None
        if not isinstance(part, dict):
            continue
        for field in fields:
            value = part.get(field)
            if isinstance(value, str) and value and not value.startswith(VAULT_PREFIX):
                found.append(f"channels.{platform}.{field}")
    return tuple(found)


def load(path: Path | None = None) -> Settings:
    """Read the configuration file (if any) and the environment; raise `ConfigError`."""
    file = _find_file(path)
    data = _read_toml(file) if file is not None else {}
    _check_environment()
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise _explain(exc, file, data) from None
    settings._plain_in_file = _plain_credentials(data)
    return settings
