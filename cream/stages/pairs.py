"""Pairs: per prompt, the preference pairs of `pairs.strategy` over M_t's rewards, each with its strength,
label and weight, through the filters of `pairs.filters` -> `pairs.jsonl` (`Pair`s); and, when the loss
trains on single responses (layout `responses`, e.g. `dpo.loss=sppo`), `scored_responses.jsonl`
(`ScoredResponse`s) with the targets the loss's `response_targets` gives.

What the loss sees of a pair is set here: its label `target` = C*p + (1-C)*(1-p) (`cream.training.losses.soft_label`:
the consistency C of the consistency stage, the strength p = preference_probability(reward_scale x reward gap,
pairs.tau), the one convention of `cream.rewards.pairing`: tau = 1 is the rewarder's own Bradley-Terry
probability, sigmoid(dpo.beta x gap) for the implicit reward), its `weight`
(1, times each filter's weight) and its penalty term (a filter's). The strategies, filters and losses are
looked up by name in `cream.plugins.registry`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from cream.rewards.diagnostics import length_bias, reward_accuracy
from cream.errors import StageError
from cream.training.losses import soft_label
from cream.config import Config
from cream.plugins.contracts import Context, Loss, PairStats
from cream.rewards.pairing import preference_probability, reward_scale
from cream.plugins.registry import FILTERS, LOSSES, PAIRINGS, settings_of
from cream.runs.rows import ConsistencyRow, Pair, PromptSamples, RewardRow, ScoredResponse, read_rows, write_rows
from cream.stages import StageResult

NAME = "pairs"
DATA = ("prompts",)  # the parts of the run's data it reads (`data_identity`)
READS = ("sample", "reward", "consistency")
# its C comes from the consistency stage; dpo.loss decides the examples written; a strength's scale is the
# rewarder's (`reward_scale`: dpo.beta for the implicit reward)
CONFIG: tuple[str, ...] = ("pairs", "dpo.loss", "dpo.beta", "rewarder.name")


def plugin_settings(cfg) -> tuple[str, ...]:
    """The settings of its pairing, its filters and its loss (which may set the examples' targets)."""
    entries = [PAIRINGS.get(cfg.pairs.strategy), *(FILTERS.get(name) for name in cfg.pairs.filters), LOSSES.get(cfg.dpo.loss)]
    return settings_of(entries, cfg)

PAIRS, RESPONSES = "pairs.jsonl", "scored_responses.jsonl"
TABLE_COLUMNS = ("prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "consistency", "target", "weight",
                 "chosen_correct", "rejected_correct")


def run(ctx: Context, stage_dir: Path) -> StageResult:
    settings = ctx.cfg.pairs
    samples = {r.id: r for r in read_rows(ctx.file("sample", "responses"), PromptSamples)}
    consistency = {r.id: r.consistency for r in read_rows(ctx.file("consistency", "consistency"), ConsistencyRow)}
    reward_rows = read_rows(ctx.file("reward", "rewards"), RewardRow)
    strategy = PAIRINGS.get(settings.strategy)
    policy = ctx.policy.name  # M_t: DPO starts from it and takes it as the reference
    rewarder = ctx.cfg.rewarder.name  # the scale of its reward gaps
    stats, pairs = PairStats(), []
    for row in reward_rows:
        sample = samples[row.id]
        choices = strategy(row.rewards, [r.text for r in sample.responses], stats)
        c = consistency[row.id]
        if choices and (c is None or not math.isfinite(c)):
            raise StageError(f"prompt {row.id} has a pair but no consistency C to train it with "
                             f"(regularizer.name={ctx.cfg.regularizer.name.value}); see {ctx.file('consistency', 'consistency')}")
        logps = row.logps[policy]
        for choice in choices:
            good, bad = sample.responses[choice.chosen], sample.responses[choice.rejected]
            gap = row.rewards[choice.chosen] - row.rewards[choice.rejected]
            strength = preference_probability(reward_scale(rewarder, ctx.cfg.dpo.beta) * gap, settings.tau)
            pairs.append(Pair(
                id=row.id, task=row.task, answer=row.answer, prompt=sample.prompt, chosen=good.text, rejected=bad.text,
                chosen_reward=row.rewards[choice.chosen], rejected_reward=row.rewards[choice.rejected], consistency=c,
                chosen_correct=row.correct[choice.chosen], rejected_correct=row.correct[choice.rejected],
                prompt_ids=sample.prompt_ids, chosen_ids=good.ids, rejected_ids=bad.ids,
                ref_chosen_logps=logps[choice.chosen], ref_rejected_logps=logps[choice.rejected],
                chosen_index=choice.chosen, rejected_index=choice.rejected,
                strength=strength, target=soft_label(c, strength),
            ))
    metrics = {**stats.as_metrics()}
    rows_by_id = {row.id: row for row in reward_rows}
    for name in settings.filters:
        if not pairs:
            break
        result = FILTERS.get(name).apply(pairs, rows_by_id, ctx)
        pairs = [dataclasses.replace(pair, weight=pair.weight * result.weight[i],
                                     **{field: values[i] for field, values in result.fields.items()})
                 for i, pair in enumerate(pairs) if result.keep[i]]
        metrics.update(result.metrics)
    if not pairs:
        raise StageError(f"no preference pair survived ({metrics}): nothing to train on")
    outputs = {"pairs": Path(stage_dir) / PAIRS}  # named by layout: the train stage reads its loss's
    write_rows(outputs["pairs"], pairs)
    if LOSSES.get(ctx.cfg.dpo.loss).layout == "responses":
        responses = scored_responses(pairs, rows_by_id, samples, policy, LOSSES.get(ctx.cfg.dpo.loss), ctx.cfg)
        outputs["responses"] = Path(stage_dir) / RESPONSES
        write_rows(outputs["responses"], responses)
        metrics["pairs/scored_responses"] = len(responses)
    shown = pairs[: ctx.cfg.logger.pairs_table_rows]
    ctx.logger.table(ctx.iteration, "pairs/table", list(TABLE_COLUMNS), [[getattr(p, c) for c in TABLE_COLUMNS] for p in shown])
    accuracy = reward_accuracy([(p.chosen_correct, p.rejected_correct) for p in pairs],
                               [(row.rewards, row.correct) for row in reward_rows])
    margins = [p.chosen_reward - p.rejected_reward for p in pairs]
    bias = length_bias([(row.rewards, row.n_tokens) for row in reward_rows],
                       [(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs], seed=ctx.sampling_seed)
    metrics.update({
        **accuracy, **bias, "pairs/kept": len(pairs), "pairs/mean_reward_margin": sum(margins) / len(margins),
        "pairs/mean_consistency": sum(p.consistency for p in pairs) / len(pairs),
        "pairs/mean_target": sum(p.target for p in pairs) / len(pairs),
        "pairs/mean_weight": sum(p.weight for p in pairs) / len(pairs),
    })
    return StageResult(metrics, outputs)


def scored_responses(pairs: list[Pair], rewards: dict[str, RewardRow], samples: dict[str, PromptSamples], policy: str,
                     loss: Loss, cfg: Config) -> list[ScoredResponse]:
    """The examples of a `responses` loss: per prompt that kept a pair, each response the loss gives a target
    (`Loss.response_targets`, from the prompt's rewards and the responses of its kept pairs), with that target."""
    if loss.response_targets is None:
        raise StageError(f"dpo.loss={cfg.dpo.loss} trains on responses but sets no response targets (Loss.response_targets)")
    paired: dict[str, list[int]] = {}
    for p in pairs:  # prompts in the pairs' order, once each
        indices = paired.setdefault(p.id, [])
        indices += [i for i in (p.chosen_index, p.rejected_index) if i not in indices]
    out = []
    for pid, indices in paired.items():
        row, sample = rewards[pid], samples[pid]
        for i, (reward, target) in enumerate(zip(row.rewards, loss.response_targets(row.rewards, indices, cfg))):
            if target is None:
                continue
            response = sample.responses[i]
            out.append(ScoredResponse(
                id=pid, task=row.task, index=i, prompt=sample.prompt, text=response.text, reward=reward,
                correct=row.correct[i], prompt_ids=sample.prompt_ids, completion_ids=response.ids,
                ref_logps=row.logps[policy][i], target=target,
            ))
    return out
