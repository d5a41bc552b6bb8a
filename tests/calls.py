"""Model calls for tests, assembled from real parts: a vault in a temporary directory,
a budget gate on the test's Redis with its ledger, and LiteLLM towards a fake provider."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from gateway.mesh import ModelCalls
from gateway.policy import BudgetGate, Ledger
from gateway.settings import BudgetSettings, Caps, MeshSettings, ModelSettings, Price
from gateway.vault import Vault

SECRET = "provider"
"""The vault entry every test model takes its key from."""
PRICE = Price(input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)
GENEROUS = BudgetSettings(
    user=Caps(daily_usd=100.0, monthly_usd=1_000.0), total=Caps(monthly_usd=10_000.0)
)
"""Caps no ordinary test comes near: budgets are tested where they are the point."""


def priced_model(url: str, name: str = "openai/fake-model", **settings: Any) -> ModelSettings:
    """A model entry for the fake provider at `url`, priced, key from the vault, no retries."""
    defaults: dict[str, Any] = {"secret": SECRET, "price": PRICE, "retries": 0, "timeout_s": 5.0}
    return ModelSettings(name=name, api_base=url, **(defaults | settings))


@dataclass(frozen=True)
class Calls:
    calls: ModelCalls
    vault: Vault
    gate: BudgetGate
    ledger_dir: Path


@contextlib.asynccontextmanager
async def model_calls(
    redis: aioredis.Redis,
    directory: Path,
    models: Mapping[str, ModelSettings],
    *,
    key: str | None,
    budget: BudgetSettings = GENEROUS,
    mesh: MeshSettings | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Calls]:
    """`ModelCalls` for `models`; `key` is stored in the vault as SECRET (None: no entry)."""
    directory.mkdir(parents=True, exist_ok=True)
    vault = Vault(directory / "vault.json", os.urandom(32))
    if key is not None:
        vault.set(SECRET, key)
    mesh = mesh or MeshSettings(allowed_models=list(models))
    async with Ledger(directory / "ledger") as ledger:
        gate = BudgetGate(redis, budget, ledger, clock=clock)
        calls = ModelCalls(models, mesh, vault, gate)
        try:
            yield Calls(calls, vault, gate, directory / "ledger")
        finally:
            await calls.drain()
