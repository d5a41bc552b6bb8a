"""The pure audit chain: sealing, hashing, verification verdicts and rendering."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from gateway.audit import (
    GENESIS,
    AuditEntry,
    Head,
    Verifier,
    entry_hash,
    parse_pin,
    render,
    seal,
    verify,
)
from gateway.audit._chain import DETAIL_MAX, clean

T0 = 1_795_341_845.0  # 2026-11-22 10:04:05 UTC
ADMIN = "u00000000000a11ce"
USER = "u0000000000000b0b"


def chain(n: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    head = Head()
    for i in range(n):
        entry = seal(head, at=T0 + i, actor=ADMIN, action="kill", target=USER, detail=f"#{i}")
        entries.append(entry)
        head = Head(entry.seq, entry.hash)
    return entries


def last_head(entries: list[AuditEntry]) -> tuple[int, str]:
    return entries[-1].seq, entries[-1].hash


def test_first_entry_has_seq_one_and_follows_64_zeros() -> None:
    entry = seal(Head(), at=T0, actor=ADMIN, action="allow", target=USER)
    assert entry.seq == 1
    assert entry.prev == GENESIS == "0" * 64
    assert entry.outcome == "ok"


def test_each_entry_carries_the_hash_of_the_one_before() -> None:
    entries = chain(3)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[1].prev == entries[0].hash
    assert entries[2].prev == entries[1].hash


def test_hash_is_sha256_of_sorted_compact_json_of_every_field_but_hash() -> None:
    entry = seal(Head(), at=T0, actor=ADMIN, action="budget.set", target=USER, detail="日 $5")
    body = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry) if f.name != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert entry.hash == hashlib.sha256(canonical.encode()).hexdigest()
    assert entry.hash == entry_hash(**body)


def test_hash_changes_with_any_field() -> None:
    entry = chain(1)[0]
    for name, value in (
        ("seq", 2),
        ("at", T0 + 1),
        ("actor", "system"),
        ("action", "reset"),
        ("target", "x"),
        ("detail", "y"),
        ("outcome", "failed"),
        ("prev", "1" * 64),
    ):
        changed = dataclasses.replace(entry, **{name: value})
        assert changed.computed_hash() != entry.hash, name


def test_newlines_and_bidi_controls_in_values_cannot_forge_a_line() -> None:
    entry = seal(
        Head(),
        at=T0,
        actor=ADMIN,
        action="allow",
        target="eve\n#2 2026-11-22 10:04:06 UTC system kill u1 ok",
        detail="a\rb\x1b[2Jc\u202ed\u2028e\x85f",
    )
    assert "\n" not in entry.target
    assert entry.target.startswith("eve\ufffd#2")
    assert entry.detail == "a\ufffdb\ufffd[2Jc\ufffdd\ufffde\ufffdf"
    assert len(render([entry]).splitlines()) == 1


def test_long_values_are_capped_with_an_ellipsis() -> None:
    entry = seal(Head(), at=T0, actor=ADMIN, action="allow", detail="x" * 10_000)
    assert len(entry.detail) == DETAIL_MAX
    assert entry.detail.endswith("…")


def test_text_in_any_language_and_emoji_is_kept() -> None:
    text = "Zoë 日本語 مرحبا 👩‍💻 🏴󠁧󠁢󠁳󠁣󠁴󠁿"
    assert clean(text, 500) == text


@pytest.mark.parametrize(
    ("actor", "action", "outcome", "at"),
    [
        ("", "kill", "ok", T0),
        (ADMIN, "", "ok", T0),
        (ADMIN, "kill", "maybe", T0),
        (ADMIN, "kill", "ok", float("nan")),
    ],
)
def test_sealing_refuses_caller_mistakes(actor: str, action: str, outcome: str, at: float) -> None:
    with pytest.raises(ValueError):
        seal(Head(), at=at, actor=actor, action=action, outcome=outcome)  # type: ignore[arg-type]


def test_intact_chain_verifies_against_its_head() -> None:
    entries = chain(12)
    verdict = verify(entries, last_head(entries))
    assert verdict.ok
    assert verdict.checked == 12
    assert verdict.head == entries[-1].hash
    assert verdict.bad_seq is None and verdict.reason == ""


def test_empty_log_with_no_head_is_intact() -> None:
    verdict = verify([], None)
    assert verdict.ok and verdict.checked == 0 and verdict.head == GENESIS
    assert verify([], (0, GENESIS)).ok


def test_changed_content_is_found_at_that_entry() -> None:
    entries = chain(10)
    entries[6] = dataclasses.replace(entries[6], detail="nothing happened")
    verdict = verify(entries, last_head(entries))
    assert not verdict.ok
    assert verdict.bad_seq == 7
    assert verdict.checked == 6
    assert verdict.reason == "entry 7 was changed: its hash does not match its content"


def test_changed_entry_with_recomputed_hash_is_found_at_the_next_one() -> None:
    entries = chain(10)
    forged = dataclasses.replace(entries[7], detail="nothing happened")
    entries[7] = dataclasses.replace(forged, hash=forged.computed_hash())
    verdict = verify(entries, last_head(entries))
    assert verdict.bad_seq == 9
    assert verdict.reason == "entry 9 does not follow 8: its prev is not 8's hash"


def test_a_removed_entry_is_named() -> None:
    entries = chain(10)
    del entries[7]
    verdict = verify(entries, last_head(entries))
    assert verdict.bad_seq == 8
    assert verdict.reason == "entry 8 is missing: 7 is followed by 9"


def test_a_removed_first_entry_is_named() -> None:
    entries = chain(3)[1:]
    verdict = verify(entries, None)
    assert verdict.bad_seq == 1
    assert verdict.reason == "entry 1 is missing: the log starts at 2"


def test_a_repeated_entry_is_out_of_place() -> None:
    entries = chain(4)
    entries.insert(3, entries[1])
    verdict = verify(entries, None)
    assert verdict.bad_seq == 2
    assert verdict.reason == "entry 2 is out of place: it comes after 3"


def test_a_first_entry_that_does_not_start_from_zeros_is_refused() -> None:
    entry = seal(Head(0, "f" * 64), at=T0, actor=ADMIN, action="kill")
    verdict = verify([entry], None)
    assert verdict.bad_seq == 1
    assert "does not start the chain" in verdict.reason


def test_entries_cut_from_the_end_are_found_by_the_head() -> None:
    entries = chain(14)
    verdict = verify(entries[:12], last_head(entries))
    assert not verdict.ok
    assert verdict.checked == 12
    assert verdict.bad_seq == 13
    assert verdict.reason == (
        "the log ends at 12 but its head says 14: entries were cut from the end"
    )


def test_every_entry_cut_is_found_by_the_head() -> None:
    entries = chain(2)
    verdict = verify([], last_head(entries))
    assert verdict.bad_seq == 1
    assert verdict.reason.startswith("the log is empty but its head says 2")


def test_a_head_behind_the_log_is_refused() -> None:
    entries = chain(5)
    verdict = verify(entries, (3, entries[2].hash))
    assert verdict.bad_seq == 4
    assert "its head says 3" in verdict.reason


def test_a_log_rewritten_under_the_same_length_is_found_by_the_head_hash() -> None:
    original = chain(3)
    rewritten = chain(2)
    rewritten.append(seal(Head(2, rewritten[1].hash), at=T0, actor="system", action="allow"))
    verdict = verify(rewritten, last_head(original))
    assert verdict.bad_seq == 3
    assert "the log was rewritten" in verdict.reason


def test_only_the_first_fault_is_reported() -> None:
    entries = chain(6)
    entries[1] = dataclasses.replace(entries[1], detail="a")
    entries[4] = dataclasses.replace(entries[4], detail="b")
    assert verify(entries, None).bad_seq == 2


def test_verifier_reports_a_record_that_is_not_an_entry() -> None:
    verifier = Verifier()
    for entry in chain(3):
        verifier.feed(entry)
    verifier.malformed("with stream id 5-0", "missing field 'hash'")
    verdict = verifier.finish(None)
    assert verdict.bad_seq == 4
    assert verdict.checked == 3
    assert verdict.reason == (
        "the record with stream id 5-0 after entry 3 is not a valid entry: missing field 'hash'"
    )


def test_render_is_one_line_per_entry_with_time_in_utc() -> None:
    first = seal(Head(), at=T0, actor=ADMIN, action="kill", target=USER, detail="stuck")
    second = seal(
        Head(1, first.hash), at=T0 + 60, actor="cli:root", action="pause", outcome="refused"
    )
    assert render([first, second]).splitlines() == [
        f"#1 2026-11-22 10:04:05 UTC {ADMIN} kill {USER} ok — stuck",
        "#2 2026-11-22 10:05:05 UTC cli:root pause - refused",
    ]


def test_render_of_a_tampered_entry_still_shows_one_line() -> None:
    entry = dataclasses.replace(chain(1)[0], actor="a\nb", at=1e300)
    lines = render([entry]).splitlines()
    assert len(lines) == 1
    assert "a\ufffdb" in lines[0]


def test_a_pinned_entry_still_in_the_chain_passes_and_is_named() -> None:
    entries = chain(5)
    verdict = verify(entries, last_head(entries), pinned=entries[2].hash[:16])
    assert verdict.ok and verdict.pinned_seq == 3
    assert verify(entries, last_head(entries), pinned=entries[4].hash).pinned_seq == 5


def test_a_chain_rebuilt_from_the_start_fails_against_an_earlier_pin() -> None:
    # Whoever can write the store re-seals every entry: the chain and its head check out.
    original = chain(4)
    rebuilt: list[AuditEntry] = []
    head = Head()
    for entry in original:
        detail = "nothing happened" if entry.seq == 2 else entry.detail
        forged = seal(
            head,
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            detail=detail,
        )
        rebuilt.append(forged)
        head = Head(forged.seq, forged.hash)
    assert verify(rebuilt, last_head(rebuilt)).ok

    verdict = verify(rebuilt, last_head(rebuilt), pinned=original[2].hash[:16])
    assert not verdict.ok and verdict.pinned_seq is None
    assert f"no entry has the pinned hash {original[2].hash[:16]}" in verdict.reason
    # An entry before the forged one is still the same: that pin holds.
    assert verify(rebuilt, last_head(rebuilt), pinned=original[0].hash).ok


@pytest.mark.parametrize("text", ["", "abc", "g" * 16, "0" * 65, "12345678 90abcdef"])
def test_a_pin_that_is_not_16_to_64_hex_digits_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="16 to 64 hex digits"):
        parse_pin(text)


def test_a_pin_is_taken_in_either_case_with_spaces_around() -> None:
    assert parse_pin("  ABCDEF0123456789 ") == "abcdef0123456789"
