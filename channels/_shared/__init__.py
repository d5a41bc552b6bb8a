"""Pieces every adapter needs, written once: the run loop, Markdown rendering per
platform, chunking at a platform's limit, retry as the platform asks, typing keepalive,
the shared webhook server, rate limits and media intake."""

from channels._shared.chunking import (
    DISCORD_LIMIT,
    TELEGRAM_LIMIT,
    TWILIO_LIMIT,
    chunk,
    chunk_telegram_html,
    utf16_len,
)
from channels._shared.markdown import parse, to_plain, to_slack_mrkdwn, to_telegram_html
from channels._shared.media import MediaPolicy
from channels._shared.ratelimit import RateLimiter
from channels._shared.retry import send_with_retry, typing_keepalive
from channels._shared.runner import SENDER_GROUP, run_channel
from channels._shared.webhooks import WebhookLimits, WebhookServer

__all__ = [
    "DISCORD_LIMIT",
    "SENDER_GROUP",
    "TELEGRAM_LIMIT",
    "TWILIO_LIMIT",
    "MediaPolicy",
    "RateLimiter",
    "WebhookLimits",
    "WebhookServer",
    "chunk",
    "chunk_telegram_html",
    "parse",
    "run_channel",
    "send_with_retry",
    "to_plain",
    "to_slack_mrkdwn",
    "to_telegram_html",
    "typing_keepalive",
    "utf16_len",
]
