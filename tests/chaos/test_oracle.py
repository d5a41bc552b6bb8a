"""The chaos oracle, on plain values."""

from __future__ import annotations

from tests.chaos._oracle import confirmed, judge, kill_plan


def test_every_message_answered_once_is_a_clean_verdict() -> None:
    verdict = judge(
        {"m1-1": "1", "m1-2": "1"}, [("1", "ok m1-1"), ("1", "ok m1-2")], {"m1-1": 1, "m1-2": 1}
    )
    assert (verdict.lost, verdict.duplicate_replies, verdict.duplicate_runs) == (0, 0, ())
    assert verdict.answered == 2 and verdict.degraded == 0


def test_a_message_without_any_reply_is_lost() -> None:
    verdict = judge({"m1-1": "1", "m2-1": "2"}, [("1", "ok m1-1")], {})
    assert verdict.lost == 1 and verdict.answered == 1


def test_an_untagged_reply_answers_a_missing_message_of_its_own_chat_only() -> None:
    replies = [("1", "I can't reach the model right now.")]
    verdict = judge({"m1-1": "1", "m2-1": "2"}, [*replies, ("2", "ok m2-1")], {})
    assert (verdict.lost, verdict.degraded, verdict.duplicate_replies) == (0, 1, 0)
    other_chat = judge({"m1-1": "1", "m2-1": "2"}, [("2", "x"), ("2", "ok m2-1")], {})
    assert (other_chat.lost, other_chat.duplicate_replies) == (1, 1)


def test_replies_beyond_one_per_message_are_counted_as_duplicates() -> None:
    replies = [("1", "ok m1-1"), ("1", "ok m1-1"), ("1", "oops")]
    verdict = judge({"m1-1": "1"}, replies, {"m1-1": 1})
    assert verdict.duplicate_replies == 2 and verdict.lost == 0


def test_a_message_the_model_was_called_for_twice_is_a_duplicate_run() -> None:
    verdict = judge({"m1-1": "1", "m1-2": "1"}, [], {"m1-1": 2, "m1-2": 1})
    assert verdict.duplicate_runs == ("m1-1",)


def test_only_updates_below_the_highest_offset_are_accepted() -> None:
    assert confirmed({"a": 10, "b": 11, "c": 12}, [None, 5, 12, None]) == {"a": 10, "b": 11}
    assert confirmed({"a": 10}, [None]) == {}


def test_a_kill_plan_is_reproducible_ordered_and_hits_every_target() -> None:
    targets = ("router", "channels", "agents", "container", "redis")
    plan = kill_plan(7, targets, 8, 60.0)
    assert plan == kill_plan(7, targets, 8, 60.0)
    assert plan != kill_plan(8, targets, 8, 60.0)
    assert [k.at_s for k in plan] == sorted(k.at_s for k in plan)
    assert {k.target for k in plan} == set(targets)
    assert all(3.0 <= k.at_s <= 60.0 for k in plan)


def test_the_supervisors_crash_notice_is_no_reply() -> None:
    notice = "Your agent stopped unexpectedly (exit 137) and has been restarted."
    verdict = judge({"m1-1": "1"}, [("1", notice)], {})
    assert (verdict.lost, verdict.notices) == (1, 1)
