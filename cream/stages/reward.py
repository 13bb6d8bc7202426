"""Reward: every response's reward under M_t and the ranking of M_{t-1} -> `rewards.jsonl` (`RewardRow`s).

Every (model, response) log-probability is computed once per iteration and kept in `rewards.jsonl`:
the current model's reward, the previous model's ranking (consistency) and the DPO reference
log-probs of chosen and rejected (training) all read it from there. The current model's log-probs
are always computed: whatever the rewarder, DPO reads its reference log-probs from here. The rewarders
the pair filters read (`pairs.filters`, e.g. SCIR's implicit reward and judge) score M_t's responses here
too, into `RewardRow.scores`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cream.runs.artifacts import read_json, write_json
from cream.errors import StageError
from cream.engine.models import load_tokenizer
from cream.plugins.registry import FILTERS, rewarders_of, settings_of
from cream.rewards.rewarders import correctness, reward_specs, rewarder_spec, spec_logp_models, spec_scores
from cream.runs.rows import PromptSamples, RewardRow, read_rows, write_rows
from cream.engine.scoring import distinct_count, logprobs_under
from cream.plugins.contracts import Context
from cream.stages import StageResult

NAME = "reward"
DATA = ("prompts",)  # the parts of the run's data it reads (`data_identity`)
READS = ("sample",)
# `sampling`: a rewarder that generates (the judge) does so with its backend and dtype
CONFIG = ("rewarder", "sampling", "regularizer.first_previous", "model", "seed", "pairs.filters")


def plugin_settings(cfg) -> tuple[str, ...]:
    """The settings of every rewarder it scores with, and the keys that name a filter's rewarders (`rewarders_from`)."""
    filters = [FILTERS.get(name) for name in cfg.pairs.filters]
    names = [cfg.rewarder.name, cfg.regularizer.first_previous, *(n for f in filters for n in f.rewarders(cfg))]
    return settings_of(rewarders_of(cfg, names), cfg) + tuple(k for f in filters for k in getattr(f, "rewarders_from", ()))

REWARDS = "rewards.jsonl"


def run(ctx: Context, stage_dir: Path) -> StageResult:
    cfg = ctx.cfg
    rows = read_rows(ctx.file("sample", "responses"), PromptSamples)
    current, previous = reward_specs(cfg, ctx.models, ctx.iteration)
    filtered_by = {name: rewarder_spec(cfg, ctx.models, ctx.iteration, name)
                   for f in cfg.pairs.filters for name in FILTERS.get(f).rewarders(cfg)}
    tokenizer = load_tokenizer(current.model.base)
    sequences = [(row.prompt_ids, resp.ids) for row in rows for resp in row.responses]
    needed = {m.name: m for m in [current.model, *spec_logp_models(current), *spec_logp_models(previous),
                                  *(m for spec in filtered_by.values() for m in spec_logp_models(spec))]}
    kept_dir = Path(stage_dir) / "logps"  # each model's, written as soon as computed: a resumed run keeps them
    logps = {name: read_json(kept_dir / f"{name}.json") for name in needed if (kept_dir / f"{name}.json").is_file()}
    computed = 0  # (model, sequence) log-probs computed here; every later use reads them
    for name, values in logprobs_under(ctx.pool, [ref for name, ref in needed.items() if name not in logps], sequences,
                                       cfg.rewarder.batch_size, tokenizer.pad_token_id, desc="logprobs"):
        write_json(kept_dir / f"{name}.json", values)
        computed += distinct_count(sequences)
        logps[name] = values
    flat = {name: logps[name] for name in needed}  # in `needed`'s order, whatever an interrupted run kept

    def scores_of(spec):
        return spec_scores(spec, rows, flat, cfg, ctx.pool, ctx.sampling_seed, stage_dir)

    scores, stats = scores_of(current)
    previous_scores, _ = scores_of(previous)
    filter_scores = {}
    for name, spec in filtered_by.items():
        filter_scores[name], filter_stats = (scores, stats) if spec == current else scores_of(spec)
        stats = {**filter_stats, **stats}
    if stats.get("judge/judgements") and stats["judge/parse_rate"] == 0:
        raise StageError(f"the judge returned no parsable score in {stats['judge/judgements']} judgements: "
                         f"check `judge.template` and `judge.pattern` ({cfg.judge.pattern})")
    out_rows, cursor = [], 0
    for j, (row, row_scores, row_previous) in enumerate(zip(rows, scores, previous_scores)):
        n = len(row.responses)
        out_rows.append(RewardRow(
            id=row.id, task=row.task, answer=row.answer, rewards=row_scores, previous_rewards=row_previous,
            correct=correctness(row), logps={name: values[cursor : cursor + n] for name, values in flat.items()},
            n_tokens=[len(resp.ids) for resp in row.responses],
            scores={name: values[j] for name, values in filter_scores.items()},
        ))
        cursor += n
    valid = np.array([r for row in scores for r in row if r is not None], dtype=float)
    if valid.size == 0 or np.all(valid == valid[0]):
        raise StageError(
            f"every reward of this iteration is equal or missing ({valid[:1].tolist()}): the rewarder cannot rank anything "
            f"(with rewarder=implicit this happens when the current model {current.model.name} equals its "
            f"reference; enable SFT (`sft.enabled=true`) or use another rewarder)"
        )
    write_rows(Path(stage_dir) / REWARDS, out_rows)
    metrics = {
        "reward/mean": float(valid.mean()),
        "reward/std": float(valid.std()),
        "reward/min": float(valid.min()),
        "reward/max": float(valid.max()),
        "reward/forward_passes": computed,
        "reward/models_scored": len(needed),
        **stats,
    }
    return StageResult(metrics, {"rewards": Path(stage_dir) / REWARDS})
