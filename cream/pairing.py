"""Which two responses of a prompt make its preference pair: chosen = argmax, rejected = argmin of the
current model's rewards; a prompt with no preference is dropped, and why is counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence


@dataclass
class PairStats:
    kept: int = 0
    dropped_all_equal: int = 0  # every scored response has the same reward: no preference
    dropped_identical_text: int = 0  # best and worst responses are the same text
    dropped_unscored: int = 0  # fewer than two responses carry a score

    @property
    def dropped(self) -> int:
        return self.dropped_all_equal + self.dropped_identical_text + self.dropped_unscored

    def as_metrics(self) -> dict[str, int]:
        return {
            "pairs/kept": self.kept,
            "pairs/dropped": self.dropped,
            "pairs/dropped_all_equal": self.dropped_all_equal,
            "pairs/dropped_identical_text": self.dropped_identical_text,
            "pairs/dropped_unscored": self.dropped_unscored,
        }


@dataclass(frozen=True)
class Choice:
    chosen: int
    rejected: int


def choose_pair(rewards: Sequence[Optional[float]], texts: Sequence[str], stats: PairStats) -> Optional[Choice]:
    """Indices of the best and worst scored responses, or None (counted in `stats`) when there is no preference.

    Responses scored None (no valid judgement) take no part. The first index wins among equal rewards.
    """
    scored = [i for i, r in enumerate(rewards) if r is not None]
    if len(scored) < 2:
        stats.dropped_unscored += 1
        return None
    best = max(scored, key=lambda i: (rewards[i], -i))
    worst = min(scored, key=lambda i: (rewards[i], i))
    if rewards[best] == rewards[worst]:
        stats.dropped_all_equal += 1
        return None
    if texts[best].strip() == texts[worst].strip():
        stats.dropped_identical_text += 1
        return None
    stats.kept += 1
    return Choice(best, worst)
