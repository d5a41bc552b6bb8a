"""Tests of gateway.policy: identities and budgets."""
