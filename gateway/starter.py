"""The commented starter settings file that `stockade init` writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

STARTER: Final = """\
# Stockade settings. Every key is optional; the values shown are the defaults.
# Any key can be overridden from the environment: STOCKADE_<SECTION>__<KEY>,
# e.g. STOCKADE_REDIS__URL or STOCKADE_CHANNELS__TELEGRAM__ENABLED=true.
# Secrets belong in the environment or the vault, not in this file. A channel
# credential may be written here as a vault reference: token = "vault:telegram-token"
# after `stockade vault set telegram-token`.

# Where Stockade keeps its state (the private Redis, later agent data).
# data_dir = "~/.local/share/stockade"

[redis]
# Leave unset to run a private redis-server (unix socket, append-only file)
# inside data_dir. Set it to use your own: "redis://host:6379/0" or "unix:///path".
# url = "redis://127.0.0.1:6379/0"

[bus]
# Deliveries without an acknowledgement before an entry goes to the dead letters.
max_deliveries = 5
# Pending entries idle this long are taken over from a crashed worker. Keep it
# above the slowest legitimate handler, or two workers run the same message.
claim_idle_ms = 30000
# How long a platform event id is remembered to drop redeliveries (seconds).
dedupe_ttl_s = 604800
# Approximate length cap per stream; trimming can drop unacknowledged entries.
stream_maxlen = 1000000
# Entries read per round trip, and how long a read waits for new ones.
batch = 100
block_ms = 1000

[router]
# Messages starting with this are commands (/help, /whoami).
command_prefix = "/"

[metrics]
# Prometheus text at http://host:port/metrics: roles up, bus lag, dead letters,
# agents, spend. `stockade up` and `stockade run router` serve it; every one serves
# the same fleet-wide figures from Redis, so one per host is enough (a second
# process finding the port taken goes on without it). No secrets or messages in it.
enabled = true
host = "127.0.0.1"
port = 9480
# Scrapes within this many seconds of the last Redis read get the same figures.
cache_s = 1.0

[docker]
# The Docker Engine that runs the agents. Unset: $DOCKER_HOST, else the local socket.
# url = "unix:///var/run/docker.sock"

[image]
# The agent image: Python and Stockade's agent runtime, nothing else.
name = "stockade-agent"
# With no registry, Stockade builds its own Debian base with debootstrap (about a
# minute, once). With a registry, name a base image that has python3 instead:
# base_image = "python:3.11-slim-bookworm"
debian_suite = "bookworm"
# Unset: the mirror apt uses on this machine.
# debian_mirror = "http://mirror.example.org/debian"

[supervisor]
# A container with no message for this long is stopped; its workspace is kept.
idle_stop_s = 900.0
# At most this many agent containers run at once; further users wait in line.
max_running = 20
# How often containers are checked for crashes and idleness (seconds).
check_interval_s = 1.0

[supervisor.limits]
# Every agent container: non-root, no capabilities, read-only root, no network
# but its one socket to the mesh. These are its resource limits.
memory_mb = 512      # swap is set equal: no swapping past the limit
cpus = 1.0
pids = 128
tmpfs_mb = 64        # the noexec /tmp
workspace_mb = 1024  # the workspace's own filesystem (needs root); 0 = an uncapped volume

# Per-user limits, by internal user id (see /whoami):
# [supervisor.overrides.u0123456789abcdef]
# memory_mb = 1024

[models.default]
# A model agents may call, as a LiteLLM model string "<provider>/<model>".
# For a self-hosted OpenAI-compatible server use "hosted_vllm/<model>" with api_base.
name = "openai/gpt-4o-mini"
# api_base = "http://127.0.0.1:8000/v1"
# The vault entry holding the provider key: `stockade vault set openai`.
# Agents never see it. Remove the line for a server that needs no key.
secret = "openai"
max_tokens = 1024    # per call; an agent may ask for fewer, never more
timeout_s = 60.0
retries = 2          # connection errors, 429 and 5xx, with backoff
# fallback = "backup"   # another [models.NAME] to use when this one keeps failing
# Without a price in LiteLLM's cost map the model is refused, unless priced here:
# price = { input_usd_per_mtok = 0.15, output_usd_per_mtok = 0.60 }

[mesh]
# Limits on what an agent may send through its one door.
max_request_bytes = 1000000
max_reply_chars = 20000
# How long an agent's request for its next message waits (seconds).
next_wait_s = 20.0
# A turn taking longer than this (seconds) shows "typing…" in its chat; a quicker one shows none.
typing_after_s = 1.0
# The [models] every agent may call; the first is used when the agent names none.
allowed_models = ["default"]
# Per-user replacements, by internal user id:
# [mesh.allowed_models_by_user]
# u0123456789abcdef = ["default", "backup"]

[vault]
# Provider keys, encrypted (AES-256-GCM). Manage them with `stockade vault`.
# store = "<data_dir>/vault/secrets.json"
# key_file = "<data_dir>/vault/master.key"   # made on first `stockade vault set`
# or the key itself: set STOCKADE_VAULT__KEY (base64 of 32 bytes)

[budget]
# Every model call reserves its worst-case cost first; a user past a cap is refused
# with the time the budget resets. Caps in US dollars; leave one out for no cap.
warn_at = 0.8              # users are told once per window when they pass 80 %
timezone = "UTC"           # where days and months begin
reservation_ttl_s = 900    # an unsettled reservation expires billed in full
# ledger_dir = "<data_dir>/ledger"

[budget.user]
daily_usd = 1.0
monthly_usd = 20.0

[budget.total]
# All users together.
monthly_usd = 200.0

# Per-user caps, by internal user id:
# [budget.overrides.u0123456789abcdef]
# daily_usd = 5.0
# monthly_usd = 50.0

[channels.webhooks]
# One HTTP server for every platform that calls us (Telegram in webhook mode, Slack in
# http mode, WhatsApp). Put it behind a TLS-terminating reverse proxy.
host = "127.0.0.1"
port = 8480
# The scheme and host platforms call, as seen from outside the proxy. Twilio signs it.
# public_url = "https://bot.example.org"
max_body_bytes = 1048576
# Refused requests (bad signature, too large) per second and burst from one address
# before 429; verified requests are limited per sender by [channels.ingress] instead.
per_peer_per_s = 50.0
per_peer_burst = 200
# Take the address from X-Forwarded-For: only behind a proxy that sets it.
trust_forwarded_for = false

[channels.ingress]
# Messages per second (and burst) one person may send before the rest are dropped.
per_sender_per_s = 1.0
per_sender_burst = 20

[channels.media]
# Files that come with messages are handed to the agent's workspace up to this size.
max_bytes = 20971520
allowed_types = [
    "image/*", "audio/*", "video/*",
    "text/plain", "text/csv", "text/markdown",
    "application/pdf", "application/json", "application/zip", "application/octet-stream",
]

[channels.console]
# `stockade chat` talks to the gateway from a terminal.
enabled = true

[channels.telegram]
enabled = false
# "polling" (long polling) or "webhook" (needs webhooks.public_url and secret_token)
mode = "polling"
webhook_path = "/telegram"
api_base = "https://api.telegram.org"
poll_timeout_s = 30
# Found by asking Telegram when empty.
bot_username = ""
# token, secret_token: set STOCKADE_CHANNELS__TELEGRAM__<KEY>

[channels.discord]
enabled = false
api_base = "https://discord.com/api/v10"
gateway_url = "wss://gateway.discord.gg/"
# Guild ids to register slash commands in at once; empty: globally (slower to appear).
command_guilds = []
# token: set STOCKADE_CHANNELS__DISCORD__TOKEN

[channels.slack]
enabled = false
# "socket" (Socket Mode, needs app_token) or "http" (Events API, needs signing_secret)
mode = "socket"
webhook_path = "/slack/events"
api_base = "https://slack.com/api/"
files_base = "https://files.slack.com/"
# bot_token, app_token, signing_secret: set STOCKADE_CHANNELS__SLACK__<KEY>

[channels.matrix]
enabled = false
# homeserver = "https://matrix.example.org"
# user_id = "@stockade:example.org"
# device_id = "STOCKADE"
# Invites from these users are accepted; any other is declined.
allowed_inviters = []
# End-to-end encrypted rooms; keys are kept under the data directory.
encryption = false
# access_token or password: set STOCKADE_CHANNELS__MATRIX__<KEY>

[channels.whatsapp]
enabled = false
# account_sid = "AC..."
# from_number = "whatsapp:+14155550100"
# Twilio calls webhooks.public_url + these paths; set them in the Twilio console.
webhook_path = "/twilio/whatsapp"
status_path = "/twilio/status"
api_base = "https://api.twilio.com"
media_base = "https://api.twilio.com"
# auth_token: set STOCKADE_CHANNELS__WHATSAPP__AUTH_TOKEN

# Who may talk to the assistant, and who runs it. Each platform has its own table:
# [access.telegram], [access.discord], [access.slack], [access.matrix],
# [access.whatsapp] and [access.console].
[access]
# Messages from other bots are ignored unless this is true.
allow_bots = false
# A pairing code lasts this long; at most this many wait per channel.
pairing_ttl_s = 3600
max_pending_pairings = 3

[access.loop_guard]
# A conversation sending more than this many messages a minute is paused for pause_s.
per_conversation_per_min = 30
pause_s = 600

[access.telegram]
# "pairing": strangers get a code an operator approves (/pair approve CODE);
# "allowlist": only allowed people; "open": anyone not denied; "disabled": no DMs.
dm_policy = "pairing"
# Groups: "mention" (answer when mentioned or replied to), "open", "disabled".
groups = "mention"
# Platform user ids of the operators here (they may use /status, /kill, ...).
admins = []
# Platform user ids allowed from the start.
allow = []

[access.console]
# `stockade chat` needs the data directory, so whoever runs it controls Stockade anyway.
dm_policy = "open"
"""


def write_starter(path: Path, *, force: bool = False) -> None:
    """Write the starter file; refuse to overwrite unless `force`."""
    if path.exists() and not force:
        from gateway.errors import ConfigError

        raise ConfigError(str(path), "-", "already exists; use --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(STARTER)
