"""Tests of the Matrix channel against a real Synapse."""
