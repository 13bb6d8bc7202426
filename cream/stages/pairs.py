"""Pairs: per prompt, chosen = argmax and rejected = argmin of M_t's rewards, with the C of the
consistency stage and the reference log-probs under M_t -> `pairs.jsonl` (`Pair`s)."""

from __future__ import annotations

import math
from pathlib import Path

from cream.diagnostics import reward_accuracy
from cream.errors import StageError
from cream.pairing import PairStats, choose_pair
from cream.rows import ConsistencyRow, Pair, PromptSamples, RewardRow, read_rows, write_rows
from cream.stages import Context, StageResult

NAME = "pairs"
READS = ("sample", "reward", "consistency")
CONFIG: tuple[str, ...] = ()  # its C comes from the consistency stage
PAIRS = "pairs.jsonl"
TABLE_COLUMNS = ("prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "consistency",
                 "chosen_correct", "rejected_correct")


def run(ctx: Context, stage_dir: Path) -> StageResult:
    samples = {r.id: r for r in read_rows(ctx.file("sample", "responses"), PromptSamples)}
    consistency = {r.id: r.consistency for r in read_rows(ctx.file("consistency", "consistency"), ConsistencyRow)}
    reward_rows = read_rows(ctx.file("reward", "rewards"), RewardRow)
    policy = ctx.policy.name  # M_t: DPO starts from it and takes it as the reference
    stats, pairs, choices = PairStats(), [], []
    for row in reward_rows:
        sample = samples[row.id]
        choice = choose_pair(row.rewards, [r.text for r in sample.responses], stats)
        if choice is None:
            continue
        c = consistency[row.id]
        if c is None or not math.isfinite(c):
            raise StageError(f"prompt {row.id} has a pair but no consistency C to train it with "
                             f"(regularizer.name={ctx.cfg.regularizer.name.value}); see {ctx.file('consistency', 'consistency')}")
        good, bad = sample.responses[choice.chosen], sample.responses[choice.rejected]
        logps = row.logps[policy]
        choices.append((row, choice))
        pairs.append(Pair(
            id=row.id, task=row.task, answer=row.answer, prompt=sample.prompt, chosen=good.text, rejected=bad.text,
            chosen_reward=row.rewards[choice.chosen], rejected_reward=row.rewards[choice.rejected], consistency=c,
            chosen_correct=row.correct[choice.chosen], rejected_correct=row.correct[choice.rejected],
            prompt_ids=sample.prompt_ids, chosen_ids=good.ids, rejected_ids=bad.ids,
            ref_chosen_logps=logps[choice.chosen], ref_rejected_logps=logps[choice.rejected],
        ))
    if not pairs:
        raise StageError(f"no preference pair survived ({stats.as_metrics()}): nothing to train on")
    write_rows(Path(stage_dir) / PAIRS, pairs)
    shown = pairs[: ctx.cfg.logger.pairs_table_rows]
    ctx.logger.table(ctx.iteration, "pairs/table", list(TABLE_COLUMNS), [[getattr(p, c) for c in TABLE_COLUMNS] for p in shown])
    accuracy = reward_accuracy(
        [(row.correct[c.chosen], row.correct[c.rejected]) for row, c in choices],
        [(row.rewards, row.correct) for row in reward_rows],
    )
    margins = [p.chosen_reward - p.rejected_reward for p in pairs]
    metrics = {**stats.as_metrics(), **accuracy, "pairs/mean_reward_margin": sum(margins) / len(margins),
               "pairs/mean_consistency": sum(p.consistency for p in pairs) / len(pairs)}
    return StageResult(metrics, {"pairs": Path(stage_dir) / PAIRS})
