"""An agent's model call on its way out: which model, what it may cost, whose key.

For one call: the model the agent may use (`parse_chat` already checked the
alias) → its price (configured, else LiteLLM's cost map; unpriced is refused) →
a budget reservation for the worst case, which may lower `max_tokens` → the
provider key from the vault, read at call time so a rotation applies at once →
LiteLLM, with retries → the settlement at the real cost. If the model keeps
failing and names a fallback, the fallback gets its own reservation and call.

Whatever happens to the call, the reservation is settled, in the background once
the agent has its answer: at the real cost when the provider reported usage, at
nothing when it answered with an error, and at the full reserved amount when
nobody can know (a timeout, a cancelled call, an answer without usage). A stream
the agent abandons is billed for what it produced. A settlement that cannot be
written leaves the reservation to expire, which bills it in full.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from gateway.controls import is_paused
from gateway.errors import (
    BudgetError,
    BudgetExceeded,
    BudgetUnavailable,
    RedisUnavailable,
    SecretNotFound,
    VaultError,
)
from gateway.mesh import _model
from gateway.mesh._controls import controls_unavailable, default_first, paused, read_steering
from gateway.mesh._protocol import ChatRequest, ProviderFailed, Rejected
from gateway.policy import BudgetGate, Reservation
from gateway.policy.budget import TokenPrice, cost_nano, prompt_token_bound, render_warning
from gateway.settings import MeshSettings, ModelSettings

log = logging.getLogger("stockade.mesh")

MAX_FALLBACKS: Final = 4
"""Fallback hops one call may take; the settings refuse loops, this bounds long chains."""
MAX_STALE_WARNINGS: Final = 10_000
"""Stale model choices remembered as already warned about; past this, warned again."""


class Keys(Protocol):
    """Where provider keys come from: the vault."""

    def get(self, name: str) -> str: ...


Notify = Callable[[str], Awaitable[None]]
"""Tells the agent's user something from the gateway (a budget warning)."""


def _usage(body: Mapping[str, Any]) -> tuple[int, int] | None:
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)
    ):
        return None
    return prompt, completion  # type: ignore[return-value]


def _produced_bytes(chunk: Mapping[str, Any]) -> int:
    """UTF-8 bytes of text and tool-call arguments in one chunk: no fewer than its tokens."""
    total = 0
    for choice in chunk.get("choices") or ():
        delta = (choice.get("delta") or {}) if isinstance(choice, Mapping) else {}
        content = delta.get("content")
        if isinstance(content, str):
            total += len(content.encode("utf-8", "surrogatepass"))
        for call in delta.get("tool_calls") or ():
            function = (call.get("function") or {}) if isinstance(call, Mapping) else {}
            for part in (function.get("name"), function.get("arguments")):
                if isinstance(part, str):
                    total += len(part.encode("utf-8", "surrogatepass"))
    return total


def _produced_cost(price: TokenPrice, prompt_bound: int, produced: int, max_tokens: int) -> int:
    """What a stream cut short (or without usage) is billed: the whole prompt, by its
    bound, and the output it produced, by its bytes (each token is at least one)."""
    return cost_nano(price, prompt_bound, min(produced, max_tokens))


class ModelCalls:
    """Every agent's model calls: the models each user may use, budgets, keys, fallbacks."""

    def __init__(
        self,
        models: Mapping[str, ModelSettings],
        mesh: MeshSettings,
        keys: Keys,
        gate: BudgetGate,
    ) -> None:
        self._models = dict(models)
        self._mesh = mesh
        self._keys = keys
        self._gate = gate
        self._prices: dict[str, TokenPrice | None] = {}
        self._settling: set[asyncio.Task[None]] = set()
        self._stale: set[tuple[str, str]] = set()

    async def warm(self) -> None:
        """Load LiteLLM and price every model now, so no agent's first call waits."""
        await _model.warm()
        for alias in self._models:
            if await self._price(alias) is None:
                log.warning(
                    "model %r (%s) has no price in LiteLLM's cost map and none configured: "
                    "calls to it are refused; set [models.%s.price]",
                    alias,
                    self._models[alias].name,
                    alias,
                )

    def caps(self, user_id: str) -> dict[str, int]:
        """The models `user_id` may call, each with its max_tokens cap; the first is the default."""
        aliases = self._mesh.allowed_models_by_user.get(user_id, self._mesh.allowed_models)
        return {alias: self._models[alias].max_tokens for alias in aliases}

    async def choices(self, user_id: str) -> dict[str, int]:
        """The models `user_id` may call now, as `caps`, the default first: the one they
        chose with /model while it is still allowed.

        Reads the operator's controls in one round trip: `Rejected` 403 while the
        user's agent is paused, 503 when the controls cannot be read.
        """
        try:
            steering = await read_steering(self._gate.client, user_id)
        except RedisUnavailable as exc:
            log.error("controls unknown for %s (%s): the call is refused", user_id, exc)
            raise controls_unavailable() from None
        if steering.paused:
            raise paused()
        caps = self.caps(user_id)
        ordered = default_first(caps, steering.chosen)
        if ordered is not None:
            return ordered
        stale = (user_id, steering.chosen or "")
        if stale not in self._stale:
            if len(self._stale) >= MAX_STALE_WARNINGS:
                self._stale.clear()
            self._stale.add(stale)
            log.warning(
                "%s chose model %r, which they may no longer use: the default applies",
                user_id,
                stale[1][:80],
            )
        return caps

    async def paused(self, user_id: str) -> bool:
        """Whether the operator paused `user_id`'s agent; RedisUnavailable when unknown."""
        return await is_paused(self._gate.client, user_id)

    async def _price(self, alias: str) -> TokenPrice | None:
        if alias not in self._prices:
            per_token = await _model.price_per_token(self._models[alias])
            self._prices[alias] = None if per_token is None else TokenPrice.from_usd(*per_token)
        return self._prices[alias]

    async def drain(self) -> None:
        """Wait for the settlements still being written (before the ledger closes)."""
        while self._settling:
            await asyncio.gather(*self._settling)

    async def chat(
        self, user_id: str, request: ChatRequest, notify: Notify | None = None
    ) -> dict[str, Any]:
        """The provider's answer to one checked request; `Rejected` (a sentence) when refused.

        The call's settlement is written after the answer is returned; `notify` hears
        of a budget passing its warning level because of it.
        """
        alias = request.alias
        for _ in range(MAX_FALLBACKS + 1):
            try:
                return await self._call(user_id, alias, request.params, notify)
            except ProviderFailed as failure:
                fallback = self._models[alias].fallback
                if fallback is None or not _model.retryable(failure):
                    raise
                log.warning("model %r failed for %s; falling back to %r", alias, user_id, fallback)
                alias = fallback
        raise ProviderFailed(None)

    async def _call(
        self, user_id: str, alias: str, params: dict[str, Any], notify: Notify | None
    ) -> dict[str, Any]:
        settings, price, _, reservation = await self._reserve(user_id, alias, params)
        return await self._spend(user_id, settings, price, reservation, params, notify)

    async def _reserve(
        self, user_id: str, alias: str, params: dict[str, Any]
    ) -> tuple[ModelSettings, TokenPrice, int, Reservation]:
        """The model's settings, its price, the prompt's token bound and the reservation."""
        settings = self._models[alias]
        price = await self._price(alias)
        if price is None:
            raise Rejected(
                403,
                "model_not_priced",
                f"model {alias!r} has no known price, so it cannot be budgeted; "
                "the operator must configure one",
            )
        wanted = min(params["max_tokens"], settings.max_tokens)
        bound = prompt_token_bound(params["messages"], params.get("tools"))
        try:
            reservation = await self._gate.reserve(user_id, settings.name, price, bound, wanted)
        except BudgetExceeded as exc:
            raise Rejected(402, "budget_exceeded", exc.sentence) from None
        except BudgetUnavailable as exc:
            log.error("budget state unknown for %s (%s): the call is refused", user_id, exc)
            raise Rejected(
                503,
                "budget_unavailable",
                "spending cannot be checked right now, so no model call is made; try again soon",
            ) from None
        return settings, price, bound, reservation

    async def stream(
        self, user_id: str, request: ChatRequest, notify: Notify | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The answer as OpenAI chunk dicts. Use with `contextlib.aclosing`: a reader that
        stops early (the agent hung up) closes it, which ends the provider's stream and
        bills what was produced."""
        alias, hops = request.alias, 0
        while True:
            settings, price, bound, reservation = await self._reserve(
                user_id, alias, request.params
            )
            params = {**request.params, "max_tokens": reservation.max_tokens}
            billed, tokens, produced, opened = reservation.reserved_nano, (0, 0), 0, False
            try:
                chunks = await _model.open_stream(settings, self._key(settings), params, user_id)
                opened = True
                async for chunk in chunks:
                    used = _usage(chunk)
                    if used is not None:
                        tokens = used
                    produced += _produced_bytes(chunk)
                    yield chunk
                billed = (
                    cost_nano(price, *tokens)
                    if tokens != (0, 0)
                    else _produced_cost(price, bound, produced, reservation.max_tokens)
                )
                return
            except ProviderFailed as failure:
                if opened:
                    billed = _produced_cost(price, bound, produced, reservation.max_tokens)
                elif not failure.timed_out:
                    billed = 0
                fallback = settings.fallback
                if opened or fallback is None or not _model.retryable(failure):
                    raise
                if hops >= MAX_FALLBACKS:
                    raise
                log.warning("model %r failed for %s; falling back to %r", alias, user_id, fallback)
                alias, hops = fallback, hops + 1
            except Rejected:
                billed = 0
                raise
            except (GeneratorExit, asyncio.CancelledError):
                # The agent stopped reading: billed for what was produced, as far as the
                # provider got; if it never answered, nobody knows, so in full.
                if opened:
                    billed = _produced_cost(price, bound, produced, reservation.max_tokens)
                raise
            finally:
                self._settle_soon(user_id, reservation, billed, tokens, notify)

    async def _spend(
        self,
        user_id: str,
        settings: ModelSettings,
        price: TokenPrice,
        reservation: Reservation,
        params: dict[str, Any],
        notify: Notify | None,
    ) -> dict[str, Any]:
        # Billed in full unless the call proves it cost less.
        billed, tokens = reservation.reserved_nano, (0, 0)
        try:
            key = self._key(settings)
            body = await _model.complete(
                settings, key, {**params, "max_tokens": reservation.max_tokens}, user_id
            )
            used = _usage(body)
            if used is not None:
                tokens = used
                billed = cost_nano(price, *used)
            else:
                log.warning("%s answered without usage: billed the reservation", settings.name)
        except ProviderFailed as failure:
            if not failure.timed_out:
                billed = 0  # the provider refused or was unreachable: nothing was produced
            raise
        except Rejected:
            billed = 0
            raise
        finally:
            self._settle_soon(user_id, reservation, billed, tokens, notify)
        return body

    def _settle_soon(
        self,
        user_id: str,
        reservation: Reservation,
        billed: int,
        tokens: tuple[int, int],
        notify: Notify | None,
    ) -> None:
        # In the background, off the agent's wait: a task of its own, so a call
        # cancelled now (the agent left, the mesh stops) still settles.
        task = asyncio.create_task(self._settle(user_id, reservation, billed, tokens, notify))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _key(self, settings: ModelSettings) -> str | None:
        if settings.secret is None:
            return None
        try:
            return self._keys.get(settings.secret)
        except SecretNotFound:
            log.error("vault has no entry %r for model %s", settings.secret, settings.name)
        except VaultError as exc:
            log.error("vault cannot give the key of %s: %s", settings.name, type(exc).__name__)
        raise Rejected(503, "model_unavailable", "the model is not set up yet; tell the operator")

    async def _settle(
        self,
        user_id: str,
        reservation: Reservation,
        billed: int,
        tokens: tuple[int, int],
        notify: Notify | None,
    ) -> None:
        try:
            settlement = await self._gate.settle(reservation.id, billed, *tokens)
        except BudgetError as exc:  # the reservation then expires and is billed in full
            log.error(
                "could not settle reservation %s of %s (%s): it will expire billed in full",
                reservation.id,
                user_id,
                type(exc).__name__,
            )
            return
        if notify is not None:
            for crossed in settlement.crossed:
                await notify(render_warning(crossed))
