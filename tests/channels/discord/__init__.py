"""Tests of the Discord channel against its wire-level fake."""
