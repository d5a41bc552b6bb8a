"""Pieces every adapter needs, written once: the run loop; chunking and retry join it."""

from channels._shared.runner import SENDER_GROUP, run_channel

__all__ = ["SENDER_GROUP", "run_channel"]
