"""B-STaR (Balanced Self-Taught Reasoner: "B-STaR: Monitoring and Balancing Exploration and Exploitation in
Self-Taught Reasoners", Zeng et al., ICLR 2025, arXiv 2412.17256): each iteration's temperature and reward
threshold picked by the balance score, and exploration and exploitation logged.

- `sampling.adaptive=bstar` (an adaptive sampler of the sample stage): before the shard is sampled, the first
  `bstar.probe_prompts` prompts are sampled from M_t at each temperature of `bstar.temperatures` and scored by
  the run's rewarder; the (temperature, threshold) of the grid with the highest balance score on that probe
  samples the shard, and the threshold goes to `adaptive.json`.
- `pairs.filters=[reward_threshold]`: a pair whose chosen response is not selected (its standardized reward
  below the threshold) is dropped; logged per iteration: exploration (`bstar/distinct_per_prompt`; pass@N is
  the pairs stage's `explore/any_correct`, logged for every method), exploitation (`bstar/selected_accuracy`,
  the share of selected responses that are correct; the chosen responses' is `reward_accuracy/chosen_correct`)
  and `bstar/balance`.

Balance score of a prompt (the paper's, as we read it): min(n' / n*, 1) * n' / n, with n the selected
responses, n' the distinct (by text) correct ones among them and n* = `bstar.n_star`; 0 when none is
selected; averaged over prompts. Correctness is the known answer's (`cream.eval.extract`), as in the paper.

Choices: the paper thresholds a reward model's probability; a self-reward has no fixed scale, so the threshold
is on the reward standardized over the set's scored responses, (r - mean) / std (all 0 when std is 0); ties
in the grid go to the earlier temperature, then the earlier threshold.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

from cream.runs.artifacts import read_json
from cream.config import Config
from cream.errors import ConfigError
from cream.engine.generation import generate
from cream.engine.models import load_tokenizer
from cream.plugins.contracts import FilterResult, SamplingChoice
from cream.plugins.registry import ADAPTIVE_SAMPLERS, FILTERS
from cream.rewards.rewarders import correctness, reward_specs, spec_logp_models, spec_scores
from cream.runs.rows import PromptSamples, read_rows
from cream.engine.scoring import distinct_count, logprobs_under


def standardized(scores: Sequence[Sequence[Optional[float]]]) -> list[list[Optional[float]]]:
    """(r - mean) / std over every scored response of the set (population std; 0 everywhere when it is 0)."""
    values = [r for row in scores for r in row if r is not None]
    mean = sum(values) / len(values) if values else 0.0
    std = (sum((r - mean) ** 2 for r in values) / len(values)) ** 0.5 if values else 0.0
    return [[None if r is None else (r - mean) / std if std > 0 else 0.0 for r in row] for row in scores]


def selected(z: Sequence[Optional[float]], threshold: float) -> list[bool]:
    return [r is not None and r >= threshold for r in z]


def balance_score(z: Sequence[Optional[float]], correct: Sequence[bool], texts: Sequence[str], threshold: float,
                  n_star: int) -> float:
    """One prompt's min(n' / n*, 1) * n' / n: n selected responses, n' distinct correct ones among them."""
    chosen = [i for i, s in enumerate(selected(z, threshold)) if s]
    if not chosen:
        return 0.0
    unique_correct = len({texts[i].strip() for i in chosen if correct[i]})
    return min(unique_correct / n_star, 1.0) * unique_correct / len(chosen)


def mean_balance(z: Sequence[Sequence[Optional[float]]], correct: Sequence[Sequence[bool]], texts: Sequence[Sequence[str]],
                 threshold: float, n_star: int) -> float:
    return sum(balance_score(*prompt, threshold, n_star) for prompt in zip(z, correct, texts)) / len(z)


def best_setting(grid: dict[tuple[float, float], float]) -> tuple[float, float]:
    """The (temperature, threshold) of the highest score; the first in the grid's order among equal ones."""
    return max(grid, key=lambda key: (grid[key], -list(grid).index(key)))


def _check(cfg: Config) -> None:
    if cfg.sampling.adaptive != "bstar" or "reward_threshold" not in cfg.pairs.filters:
        raise ConfigError(f"config keys `sampling.adaptive` and `pairs.filters`: B-STaR's threshold is picked by "
                          f"sampling.adaptive=bstar and applied by the pair filter reward_threshold; set both "
                          f"(conf/experiment/bstar_smollm.yaml), got sampling.adaptive={cfg.sampling.adaptive}, "
                          f"pairs.filters={list(cfg.pairs.filters)}")


class BalancedSampler:
    check = staticmethod(_check)

    def choose(self, ctx, rows: list[PromptSamples], stage_dir: Path) -> SamplingChoice:
        cfg, settings = ctx.cfg, ctx.cfg.bstar
        probe = rows[: settings.probe_prompts]
        spec, _ = reward_specs(cfg, ctx.models, ctx.iteration)
        tokenizer = load_tokenizer(ctx.policy.base)
        grid, computed = {}, 0
        for t in settings.temperatures:
            folder = stage_dir / "probe" / f"temperature_{t}"
            sampling = dataclasses.replace(cfg.sampling, temperature=t)
            samples = generate(ctx.pool, ctx.policy, tokenizer, [r.prompt_ids for r in probe], sampling, cfg.sampling,
                               ctx.sampling_seed, folder / "chunks", f"probe T={t}", cfg.model.max_length)
            rows_t = [dataclasses.replace(r, responses=s) for r, s in zip(probe, samples)]
            sequences = [(r.prompt_ids, resp.ids) for r in rows_t for resp in r.responses]
            logps = dict(logprobs_under(ctx.pool, spec_logp_models(spec), sequences, cfg.rewarder.batch_size,
                                        tokenizer.pad_token_id, "probe logprobs"))
            computed += len(logps) * distinct_count(sequences)
            scores, _ = spec_scores(spec, rows_t, logps, cfg, ctx.pool, ctx.sampling_seed, folder)
            z, correct = standardized(scores), [correctness(r) for r in rows_t]
            texts = [[resp.text for resp in r.responses] for r in rows_t]
            for threshold in settings.thresholds:
                grid[(t, threshold)] = mean_balance(z, correct, texts, threshold, settings.n_star)
        temperature, threshold = best_setting(grid)
        metrics = {"bstar/temperature": temperature, "bstar/threshold": threshold,
                   "bstar/probe_balance": grid[(temperature, threshold)], "bstar/probe_prompts": len(probe),
                   "bstar/probe_forward_passes": computed,
                   **{f"bstar/probe_balance/t{t}_threshold{h}": v for (t, h), v in grid.items()}}
        return SamplingChoice(dataclasses.replace(cfg.sampling, temperature=temperature), metrics,
                              {"temperature": temperature, "threshold": threshold, "grid": [[t, h, v] for (t, h), v in grid.items()]})


class RewardThresholdFilter:
    check = staticmethod(_check)

    def rewarders(self, cfg: Config) -> tuple[str, ...]:
        return ()

    def apply(self, pairs, rewards, ctx) -> FilterResult:
        threshold = read_json(ctx.file("sample", "adaptive"))["threshold"]
        ids = list(rewards)
        z = dict(zip(ids, standardized([rewards[i].rewards for i in ids])))
        samples = {r.id: r for r in read_rows(ctx.file("sample", "responses"), PromptSamples)}
        texts = {i: [resp.text for resp in samples[i].responses] for i in ids}
        keep = [z[p.id][p.chosen_index] is not None and z[p.id][p.chosen_index] >= threshold for p in pairs]
        chosen = [(i, k) for i in ids for k, s in enumerate(selected(z[i], threshold)) if s]
        metrics = {
            "bstar/threshold": threshold,
            "bstar/distinct_per_prompt": sum(len({t.strip() for t in texts[i]}) for i in ids) / len(ids),
            "bstar/selected_accuracy": sum(rewards[i].correct[k] for i, k in chosen) / len(chosen) if chosen else float("nan"),
            "bstar/balance": mean_balance([z[i] for i in ids], [rewards[i].correct for i in ids], [texts[i] for i in ids],
                                          threshold, ctx.cfg.bstar.n_star),
            "bstar/dropped_below_threshold": keep.count(False),
        }
        return FilterResult(keep=keep, weight=[1.0] * len(pairs), metrics=metrics)


ADAPTIVE_SAMPLERS.register("bstar", BalancedSampler())
FILTERS.register("reward_threshold", RewardThresholdFilter())
