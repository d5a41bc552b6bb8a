"""Decisions about people: who they are (identity); access and budgets come later."""

from gateway.policy.identity import Identities, identity_field

__all__ = ["Identities", "identity_field"]
