"""Chaos tests: the pipeline as separate processes, killed at random, then checked."""
