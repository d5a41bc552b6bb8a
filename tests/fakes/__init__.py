"""Fakes that speak the real wire protocol of what they stand in for: platforms, providers."""
