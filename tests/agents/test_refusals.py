"""The sentences a user reads when the mesh refuses a model call."""

from __future__ import annotations

from agents._client import MeshRefused
from agents._loop import refusal_text


def test_a_budget_refusal_reaches_the_user_word_for_word() -> None:
    sentence = "Your daily budget of $1.00 is used up; it resets at 00:00 UTC (in 3 h)."
    assert refusal_text(MeshRefused(402, "budget_exceeded", sentence)) == sentence


def test_other_refusals_say_the_model_cannot_be_used() -> None:
    text = refusal_text(MeshRefused(403, "model_not_allowed", "model 'x' is not allowed"))
    assert text == "I can't use the model for this: model 'x' is not allowed."


def test_server_side_failures_ask_to_try_later() -> None:
    text = refusal_text(MeshRefused(503, "budget_unavailable", "spending cannot be checked"))
    assert "try again later" in text
