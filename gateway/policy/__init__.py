"""Decisions about people: who they are (identity), who may talk (access) and what they
may spend (budget).

`budget` holds the pure arithmetic (money, windows, the clamp rule, reports);
`BudgetGate` reserves before each model call and settles after it, in Redis, with
a durable ledger (`Ledger`) it can be rebuilt from.
"""

from gateway.policy._access_store import AccessStore, Offer, Pending
from gateway.policy._budget_store import BudgetGate, Outcome, Reservation, Settlement
from gateway.policy._ledger import Ledger
from gateway.policy.budget import TokenPrice, Usage, WindowUse, render_usage, render_warning
from gateway.policy.identity import Identities, identity_field

__all__ = [
    "AccessStore",
    "BudgetGate",
    "Identities",
    "Ledger",
    "Offer",
    "Outcome",
    "Pending",
    "Reservation",
    "Settlement",
    "TokenPrice",
    "Usage",
    "WindowUse",
    "identity_field",
    "render_usage",
    "render_warning",
]
