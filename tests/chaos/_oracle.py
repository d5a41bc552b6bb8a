"""What a chaos run must show, decided from plain values: which accepted messages got no
reply, which ran twice, how many replies were duplicates, and when to kill what."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from tests.chaos._echo_model import TAG

CRASH_NOTICE: Final = "Your agent stopped unexpectedly"


@dataclass(frozen=True)
class Verdict:
    accepted: int
    answered: int
    lost: int
    """Accepted messages with no reply at all."""
    duplicate_runs: tuple[str, ...]
    """Tags of messages the model was called for more than once."""
    duplicate_replies: int
    """Replies beyond one per message."""
    notices: int
    """The supervisor's "your agent stopped unexpectedly" notices: no reply to a message."""
    degraded: int
    """Replies that do not carry their message's answer (an error sentence the agent
    wrote when the model call was cut off by a kill)."""


def judge(
    accepted: Mapping[str, str],
    replies: Iterable[tuple[str, str]],
    model_calls: Mapping[str, int],
) -> Verdict:
    """`accepted`: message tag -> chat id; `replies`: (chat id, text) as the platform got
    them; `model_calls`: calls per tag at the provider.

    A reply naming a tag answers that message. A reply naming none answers, in its chat,
    one message that got no tagged reply; past those it is a duplicate.
    """
    tagged: Counter[str] = Counter()
    untagged: Counter[str] = Counter()
    notices = 0
    for chat, text in replies:
        if text.startswith(CRASH_NOTICE):
            notices += 1
            continue
        found = TAG.search(text)
        if found and found.group(0) in accepted:
            tagged[found.group(0)] += 1
        elif found is None:
            untagged[chat] += 1
    missing: defaultdict[str, int] = defaultdict(int)
    for message_tag, chat in accepted.items():
        if tagged[message_tag] == 0:
            missing[chat] += 1
    lost = sum(max(0, count - untagged[chat]) for chat, count in missing.items())
    extra_untagged = sum(max(0, count - missing[chat]) for chat, count in untagged.items())
    extra_tagged = sum(count - 1 for count in tagged.values() if count > 1)
    degraded = sum(min(count, untagged[chat]) for chat, count in missing.items())
    return Verdict(
        accepted=len(accepted),
        answered=len(accepted) - lost,
        lost=lost,
        duplicate_runs=tuple(sorted(t for t in accepted if model_calls.get(t, 0) > 1)),
        duplicate_replies=extra_tagged + extra_untagged,
        notices=notices,
        degraded=degraded,
    )


def confirmed(update_ids: Mapping[str, int], offsets: Iterable[int | None]) -> dict[str, int]:
    """The tags whose update a later getUpdates offset confirmed (Telegram's success)."""
    highest = max((offset for offset in offsets if offset is not None), default=0)
    return {t: u for t, u in update_ids.items() if u < highest}


@dataclass(frozen=True)
class Kill:
    at_s: float
    """Seconds after the chaos phase began."""
    target: str


def kill_plan(seed: int, targets: tuple[str, ...], kills: int, window_s: float) -> list[Kill]:
    """`kills` kills at random moments of `window_s`, every target at least once (when
    `kills` allows), in time order; the same seed gives the same plan."""
    rng = random.Random(seed)
    chosen = list(targets[:kills]) + [rng.choice(targets) for _ in range(kills - len(targets))]
    rng.shuffle(chosen)
    moments = sorted(rng.uniform(0.05 * window_s, window_s) for _ in chosen)
    return [Kill(round(at, 2), target) for at, target in zip(moments, chosen, strict=True)]
