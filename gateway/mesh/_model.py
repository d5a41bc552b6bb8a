"""The mesh's one call out to a model provider, through LiteLLM, with the operator's key.

LiteLLM is imported lazily, once, in a worker thread: the import takes seconds
and must not stall every agent's event loop. Its cost map is read from the
bundled copy, so the import never reaches the network.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any, Final, TypeVar

from gateway.mesh._protocol import ProviderFailed
from gateway.settings import ModelSettings

log = logging.getLogger("stockade.mesh")

T = TypeVar("T")

_Loaded = tuple[ModuleType, tuple[type[BaseException], ...]]

# A thread lock, not an asyncio one: the import runs in worker threads, and the
# module cache outlives any one event loop.
_lock = threading.Lock()
_loaded: _Loaded | None = None


def _import() -> _Loaded:
    global _loaded
    with _lock:
        if _loaded is None:
            started = time.monotonic()
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            litellm: Any = importlib.import_module("litellm")
            openai = importlib.import_module("openai")
            # Without this LiteLLM prints a "Give Feedback / Get Help" banner on every error.
            litellm.suppress_debug_info = True
            # Every provider error LiteLLM raises derives from the OpenAI SDK's base error.
            _loaded = (litellm, (openai.OpenAIError,))
            log.info("loaded LiteLLM in %.1f s", time.monotonic() - started)
        return _loaded


async def _litellm() -> _Loaded:
    if _loaded is not None:
        return _loaded
    return await asyncio.to_thread(_import)


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None


RETRY_STATUSES: Final = frozenset((408, 409, 429, 500, 502, 503, 504, 529))
"""Provider answers worth another try: overload, rate limits and server errors."""
BACKOFF_S: Final = 0.5
"""The first retry waits about this long; each further one twice as long, with jitter."""
BACKOFF_MAX_S: Final = 8.0


RETRY_AFTER_MAX_S: Final = 30.0
"""A provider asking for a longer wait than this is not retried: the agent hears now."""


def retry_after_s(exc: BaseException) -> float | None:
    """The wait a provider asked for in its answer's Retry-After(-Ms) header, if any."""
    # LiteLLM keeps the provider's headers here; `response` is often one it made up.
    raw_headers = getattr(exc, "litellm_response_headers", None) or getattr(
        getattr(exc, "response", None), "headers", None
    )
    if not raw_headers:
        return None
    headers = {str(name).lower(): value for name, value in dict(raw_headers).items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue  # the HTTP-date form: left to the backoff
        if value >= 0:
            return value
    return None


def _wait_before(failure: ProviderFailed, attempt: int) -> float | None:
    """The wait before retry `attempt`; None when the provider asked for too long."""
    if failure.retry_after_s is None:
        return backoff_s(attempt)
    if failure.retry_after_s > RETRY_AFTER_MAX_S:
        return None
    return failure.retry_after_s


def retryable(failure: ProviderFailed) -> bool:
    """Worth another try: no answer at all, or an overload or server error."""
    return (
        failure.provider_status is None and not failure.timed_out
    ) or failure.provider_status in RETRY_STATUSES


def backoff_s(attempt: int) -> float:
    """The wait before retry number `attempt` (1, 2, ...): exponential, capped, jittered."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_S * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _register(litellm: Any, name: str, prices: tuple[float, float]) -> None:
    """Give LiteLLM the configured price of `name` when its cost map lacks the model.

    LiteLLM prices every answer itself too, for its own bookkeeping; for a model missing
    from its cost map that is a slow search of the map on every call (about 1.5 ms of
    CPU here, a fifth of a call's cost). Our bills still come from the configured price.
    A model the map knows keeps its entry there: another alias of it without a price of
    its own is billed at the map's price, not at this alias's.
    """
    try:
        litellm.get_model_info(name)
        return
    except litellm.exceptions.ModelNotMappedError:
        pass
    provider, _, _ = name.partition("/")
    entry: dict[str, object] = {
        "input_cost_per_token": prices[0],
        "output_cost_per_token": prices[1],
        "mode": "chat",
    }
    if provider and provider != name:
        entry["litellm_provider"] = provider
    litellm_log = logging.getLogger("LiteLLM")
    level = litellm_log.level
    # It warns that cache-read prices default to 0 for a model it does not know.
    litellm_log.setLevel(logging.ERROR)
    try:
        litellm.register_model({name: entry})
    finally:
        litellm_log.setLevel(level)


async def price_per_token(settings: ModelSettings) -> tuple[float, float] | None:
    """USD per input and per output token: the configured price, else LiteLLM's cost map.

    None when neither knows the model: the caller refuses to spend on it.
    """
    litellm, _ = await _litellm()
    if settings.price is not None:
        prices = (
            settings.price.input_usd_per_mtok / 1_000_000,
            settings.price.output_usd_per_mtok / 1_000_000,
        )
        _register(litellm, settings.name, prices)
        return prices
    try:
        info = litellm.get_model_info(settings.name)
    except litellm.exceptions.ModelNotMappedError:
        return None
    prices = (info.get("input_cost_per_token"), info.get("output_cost_per_token"))
    if not all(isinstance(p, int | float) and p >= 0 for p in prices):
        return None
    return (float(prices[0]), float(prices[1]))


async def warm() -> None:
    """Import LiteLLM now, so the first agent's call does not wait for it."""
    await _litellm()


async def _acompletion(settings: ModelSettings, key: str | None, **params: Any) -> Any:
    """One LiteLLM call; a provider error becomes `ProviderFailed` with nothing quoted."""
    litellm, provider_errors = await _litellm()
    try:
        return await litellm.acompletion(
            model=settings.name,
            api_base=settings.api_base,
            api_key=key,
            timeout=settings.timeout_s,
            # Retries happen in `_retrying`, where each is logged and bounded.
            max_retries=0,
            # Only plain function tools reach here. LiteLLM's MCP gateway path would
            # be skipped for them anyway, but checking for it imports the optional
            # `mcp` package, which is not installed: any call with tools failed.
            _skip_mcp_handler=True,
            **params,
        )
    except provider_errors as exc:
        # The type, status and asked-for wait only: provider messages can quote keys or URLs.
        raise ProviderFailed(
            _status(exc),
            timed_out=isinstance(exc, litellm.Timeout),
            retry_after_s=retry_after_s(exc),
        ) from None


async def _retrying(settings: ModelSettings, user_id: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, again after each failure worth retrying, waiting as the provider asked."""
    attempt = 0
    while True:
        started = time.monotonic()
        try:
            return await call()
        except ProviderFailed as failure:
            log.warning(
                "model call to %s for %s failed after %.2f s (status %s%s)",
                settings.name,
                user_id,
                time.monotonic() - started,
                failure.provider_status,
                ", timed out" if failure.timed_out else "",
            )
            attempt += 1
            wait = _wait_before(failure, attempt)
            if attempt > settings.retries or not retryable(failure) or wait is None:
                raise
            await asyncio.sleep(wait)


async def complete(
    settings: ModelSettings, key: str | None, params: dict[str, Any], user_id: str
) -> dict[str, Any]:
    """The provider's answer as a JSON-ready dict, retrying what is worth retrying.

    `params` are the checked, allowlisted fields from `parse_chat`; `key` comes from
    the vault, never from the agent. Raises `ProviderFailed` once retries are spent.
    """
    started = time.monotonic()
    response = await _retrying(settings, user_id, lambda: _acompletion(settings, key, **params))
    answer: dict[str, Any] = response.model_dump()
    usage = answer.get("usage") or {}
    log.debug(
        "model call for %s took %.3f s (%s prompt + %s completion tokens)",
        user_id,
        time.monotonic() - started,
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
    )
    return answer


async def _chunks(stream: Any) -> AsyncIterator[dict[str, Any]]:
    _, provider_errors = await _litellm()
    try:
        async for chunk in stream:
            yield chunk.model_dump(exclude_none=True)
    except provider_errors as exc:
        raise ProviderFailed(_status(exc)) from None
    finally:
        # Stops the provider's generation when the reader gives up early.
        await stream.aclose()


async def open_stream(
    settings: ModelSettings, key: str | None, params: dict[str, Any], user_id: str
) -> AsyncIterator[dict[str, Any]]:
    """The provider's answer as OpenAI chunk dicts, once the provider has accepted the call.

    Opening is retried as `complete` retries; a failure after the first chunk is not
    (part of the answer is already on its way): it ends the stream with `ProviderFailed`.
    """
    stream = await _retrying(
        settings,
        user_id,
        # The real usage arrives in the last chunk: what a finished stream is billed.
        lambda: _acompletion(
            settings, key, stream=True, stream_options={"include_usage": True}, **params
        ),
    )
    return _chunks(stream)
