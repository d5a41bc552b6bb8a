"""Tests of the Telegram channel against its wire-level fake."""
