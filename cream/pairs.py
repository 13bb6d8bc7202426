"""Preference pairs: chosen = argmax, rejected = argmin of the current model's rewards, per prompt."""

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


def pairs_stage(samples_path, rewards_path, consistency_path, regularizer, policy_name: str, stage_dir) -> tuple[dict, list[dict]]:
    """Write `pairs.jsonl`: tokenized chosen/rejected, their rewards, the reference log-probs under
    the policy `policy_name` (M_t, which DPO starts from) and C."""
    from pathlib import Path

    from cream.artifacts import read_jsonl, write_jsonl
    from cream.consistency import pair_confidence
    from cream.diagnostics import reward_accuracy
    from cream.errors import StageError

    samples = {r["id"]: r for r in read_jsonl(samples_path)}
    rates = {r["id"]: r["rate"] for r in read_jsonl(consistency_path)}
    stats, chosen = PairStats(), []
    reward_rows = read_jsonl(rewards_path)
    for row in reward_rows:
        responses = samples[row["id"]]["responses"]
        choice = choose_pair(row["rewards"], [r["text"] for r in responses], stats)
        if choice is not None:
            chosen.append((row, choice))
    if not chosen:
        raise StageError(f"no preference pair survived ({stats.as_metrics()}): nothing to train on")
    confidence = pair_confidence(rates, [row["id"] for row, _ in chosen], regularizer)
    pairs = []
    for row, choice in chosen:
        sample, current_logps = samples[row["id"]], row["logps"][policy_name]
        good, bad = sample["responses"][choice.chosen], sample["responses"][choice.rejected]
        pairs.append({
            "id": row["id"],
            "task": row["task"],
            "answer": row["answer"],
            "prompt": sample["prompt"],
            "chosen": good["text"],
            "rejected": bad["text"],
            "chosen_reward": row["rewards"][choice.chosen],
            "rejected_reward": row["rewards"][choice.rejected],
            "consistency": confidence[row["id"]],
            "chosen_correct": row["correct"][choice.chosen],
            "rejected_correct": row["correct"][choice.rejected],
            "prompt_ids": sample["prompt_ids"],
            "chosen_ids": good["ids"],
            "rejected_ids": bad["ids"],
            "ref_chosen_logps": current_logps[choice.chosen],
            "ref_rejected_logps": current_logps[choice.rejected],
        })
    write_jsonl(Path(stage_dir) / "pairs.jsonl", pairs)
    accuracy = reward_accuracy(
        [(row["correct"][c.chosen], row["correct"][c.rejected]) for row, c in chosen],
        [(row["rewards"], row["correct"]) for row in reward_rows],
    )
    margins = [p["chosen_reward"] - p["rejected_reward"] for p in pairs]
    metrics = {**stats.as_metrics(), **accuracy, "pairs/mean_reward_margin": sum(margins) / len(margins),
               "pairs/mean_confidence": sum(p["consistency"] for p in pairs) / len(pairs)}
    return metrics, pairs
