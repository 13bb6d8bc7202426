"""Does the self-reward pick the right response? Measured on prompts whose answer is known.

This is the rewarding bias CREAM claims to reduce: a reward that prefers wrong answers trains the
model towards them.
"""

from __future__ import annotations

from typing import Optional, Sequence


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def reward_accuracy(
    pairs: Sequence[tuple[bool, bool]],
    prompts: Sequence[tuple[Sequence[Optional[float]], Sequence[bool]]],
) -> dict[str, float]:
    """Pair and ranking accuracy of a reward against ground-truth correctness.

    pairs: (chosen is correct, rejected is correct) per preference pair.
    prompts: (rewards, correctness) per prompt, one entry per response; None rewards are skipped.
    `auc` is the chance that a correct response outranks a wrong one of the same prompt (ties 1/2).
    """
    wins = comparisons = 0.0
    for rewards, correct in prompts:
        good = [r for r, c in zip(rewards, correct) if c and r is not None]
        bad = [r for r, c in zip(rewards, correct) if not c and r is not None]
        for g in good:
            for b in bad:
                wins += 1.0 if g > b else 0.5 if g == b else 0.0
                comparisons += 1
    return {
        "reward_accuracy/chosen_correct": _share([c for c, _ in pairs]),
        "reward_accuracy/rejected_wrong": _share([not r for _, r in pairs]),
        "reward_accuracy/inverted": _share([r and not c for c, r in pairs]),
        "reward_accuracy/auc": wins / comparisons if comparisons else float("nan"),
        "reward_accuracy/comparisons": int(comparisons),
        "explore/any_correct": _share([any(correct) for _, correct in prompts]),
    }
