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
import threading
import time
from types import ModuleType
from typing import Any

from gateway.mesh._protocol import ProviderFailed
from gateway.settings import ModelSettings

log = logging.getLogger("stockade.mesh")

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


class Model:
    """Calls the configured model; the key and endpoint come from settings, never the agent."""

    def __init__(self, settings: ModelSettings) -> None:
        self._settings = settings

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def max_tokens(self) -> int:
        return self._settings.max_tokens

    async def warm(self) -> None:
        """Import LiteLLM now, so the first agent's call does not wait for it."""
        await _litellm()

    async def complete(self, params: dict[str, Any], user_id: str) -> dict[str, Any]:
        """The provider's answer as a JSON-ready dict; `ProviderFailed` when it fails.

        `params` are the checked, allowlisted fields from `parse_chat`.
        """
        litellm, provider_errors = await _litellm()
        settings = self._settings
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        started = time.monotonic()
        try:
            response = await litellm.acompletion(
                model=settings.name,
                api_base=settings.api_base,
                api_key=key,
                timeout=settings.timeout_s,
                # Retries are the agent's choice: one call here is one bounded wait.
                max_retries=0,
                # Only plain function tools reach here. LiteLLM's MCP gateway path would
                # be skipped for them anyway, but checking for it imports the optional
                # `mcp` package, which is not installed: any call with tools failed.
                _skip_mcp_handler=True,
                **params,
            )
        except provider_errors as exc:
            status = _status(exc)
            timed_out = isinstance(exc, litellm.Timeout)
            # The type and status only: provider messages can quote keys or URLs.
            log.warning(
                "model call for %s failed after %.2f s: %s (status %s)",
                user_id,
                time.monotonic() - started,
                type(exc).__name__,
                status,
            )
            raise ProviderFailed(status, timed_out=timed_out) from None
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
