"""B-STaR (Balanced Self-Taught Reasoner: "B-STaR: Monitoring and Balancing Exploration and Exploitation in
Self-Taught Reasoners", Zeng et al., ICLR 2025, arXiv 2412.17256): each iteration's temperature and reward
threshold picked by the balance score, and exploration and exploitation logged. Checked against the official
code, hkust-nlp/B-STaR at a0f5d95: `train_code/determine_hyper.py` (the temperature), `train_code/
metric_modiacc_auto.py` (the threshold of the training data), `train_code/train_bstar.sh` (the loop).

- `sampling.adaptive=bstar` (an adaptive sampler of the sample stage): before the shard is sampled, the first
  `bstar.probe_prompts` prompts are sampled from M_t at each temperature of `bstar.temperatures` and scored by
  the run's rewarder; the temperature (and threshold) of the grid point with the highest balance score on that
  probe samples the shard (determine_hyper.py:157-176, 223: for each temperature the best balance over the
  thresholds, then the best temperature), and the probe's threshold goes to `adaptive.json`.
- `pairs.filters=[reward_threshold]`: the threshold is chosen again on the iteration's own responses, the one of
  `bstar.thresholds` with the highest balance score (`bstar.threshold_from=shard`, as metric_modiacc_auto.py:
  457-477 chooses the threshold of the data it trains on; `probe`: the probe's threshold); a pair whose chosen
  response is not selected is dropped. Logged per iteration: exploration (`bstar/distinct_per_prompt`; pass@N is
  the pairs stage's `explore/any_correct`, logged for every method), exploitation (`bstar/selected_accuracy`,
  the share of selected responses that are correct; the chosen responses' is `reward_accuracy/chosen_correct`)
  and `bstar/balance`.

Selection (the same in the probe, the balance score and the filter): a response is selected when its reward is
strictly above the threshold (determine_hyper.py:82, `solu["score"] > score_threshold`).

Balance score of a prompt (determine_hyper.py:100-135, `cal_modi_acc_soft`): the selected responses are
deduplicated by text (lines 87-94: one per distinct (query, output)); n = the distinct selected responses, n' =
the correct ones among them (line 121), and the score is n'/n if n' >= n* else (n' x n'/n) / n* (lines 128-133),
i.e. min(n'/n*, 1) x n'/n, with n* = `bstar.n_star` (8 there); averaged over the prompts (line 135).
Correctness is against the known answer (`cream.eval.extract`).

The gold solution (`bstar.gold_solution`, on by default): the official code adds each query's reference solution
to its candidates with score 1.0 (line 72), above every threshold it tries (-1.0 .. 1.0, lines 162-174), so it
is always selected, is correct, and no query is empty. Our prompts carry a known answer but no solution text,
so each prompt with a known answer counts one extra selected, correct response, distinct from its sampled ones:
n + 1 and n' + 1 (an empty prompt scores min(1/n*, 1)). It enters the counts only: there is no text to train
on. Off, a prompt with nothing selected scores 0 (the official mean runs over the queries present in the
selected data, which with the gold solution is every query; dropping empty prompts instead would reward
thresholds that select nothing on the hard ones).

Differs from the official code, and why:
- the selection score is the run's self-reward standardized over the set's scored responses, (r - mean) / std
  (all 0 when std is 0), not min(PRM step score) / 5 + 1 for a correct final answer (lines 63-69): a self-reward
  has no fixed scale, and a self-rewarding method may not read the answer (rewarder=oracle comes closest);
- the grids are short (`bstar.temperatures`, `bstar.thresholds` on the standardized reward) and the probe is
  `bstar.probe_prompts` prompts of the shard, where the official script tries 0.50-1.20 by 0.05 (train_bstar.sh
  :106) on a 1k-prompt dev set with 64 samples, thresholds -1.0-1.0 by 0.01: each grid point costs a sampling
  and scoring pass here; N is `sampling.n` (the official also searches sample_num, determine_hyper.py:208);
- no per-query cap: the official keeps the top `max_samples` selected responses of each query, raising
  `max_samples` until the data reaches a target size (lines 139-153); here every selected response counts;
- the selected responses train as DPO pairs (a pair is kept when its chosen response is selected), where the
  official fine-tunes on the selected responses and the gold solutions (rejection-sampling SFT);
- every response counts, where the official drops outputs without its "\\n\\n# Answer\\n\\n" format (line 61),
  and correctness is the harness's answer extraction, not a string match of the text after that marker;
- ties in a grid go to the earlier temperature, then the earlier threshold (the official keeps the first of
  equal scores, lines 168 and 223, over thresholds searched upward: list `bstar.thresholds` ascending).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from cream.runs.artifacts import read_json
from cream.config import Config
from cream.errors import ConfigError, require
from cream.engine.generation import generate
from cream.engine.models import load_tokenizer
from cream.plugins.contracts import FilterResult, SamplingChoice
from cream.plugins.registry import ADAPTIVE_SAMPLERS, FILTERS, REWARDERS, SETTINGS, settings_of
from cream.rewards.rewarders import correctness, reward_specs, spec_logp_models, spec_scores
from cream.runs.rows import PromptSamples, read_rows
from cream.engine.scoring import distinct_count, logprobs_under


@dataclass
class BstarConfig:
    """B-STaR (`sampling.adaptive=bstar`, `pairs.filters=[reward_threshold]`): each iteration's temperature and
    reward threshold, picked from these grids by the balance score (cream/methods/bstar.py): the temperature on a
    probe slice of the shard, the threshold on the shard's own responses (`threshold_from`)."""

    temperatures: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.1])
    # on the reward standardized over the iteration's responses, (r - mean) / std: a response is selected when its
    # standardized reward is strictly above (the official `score > threshold`); ties in the grid go to the earlier
    # temperature, then the earlier threshold (list them ascending, as the official search runs)
    thresholds: list[float] = field(default_factory=lambda: [-0.5, 0.0, 0.5])
    probe_prompts: int = 8  # the first prompts of the shard, sampled once per temperature
    n_star: int = 8  # n*: distinct correct selected responses per prompt that count as enough exploration (official: 8)
    # the official convention: every prompt's selected set also holds its gold solution (correct, distinct, always
    # selected); our prompts carry a known answer but no solution text, so it counts as one such extra response
    gold_solution: bool = True
    # shard: the filter applies the threshold of `thresholds` with the highest balance score on the iteration's own
    # responses (the official picks the training data's threshold on them) | probe: the probe's threshold
    threshold_from: str = "shard"

    def __post_init__(self) -> None:
        require(self.threshold_from in ("shard", "probe"), "bstar.threshold_from",
                f"expected shard or probe, got {self.threshold_from!r}")
        require(len(self.temperatures) > 0 and all(t > 0 for t in self.temperatures), "bstar.temperatures",
                f"must be a non-empty list of values > 0, got {self.temperatures}")
        require(len(self.thresholds) > 0, "bstar.thresholds", "must name at least one threshold")
        require(self.probe_prompts >= 1, "bstar.probe_prompts", f"must be >= 1, got {self.probe_prompts}")
        require(self.n_star >= 1, "bstar.n_star", f"must be >= 1, got {self.n_star}")


def standardized(scores: Sequence[Sequence[Optional[float]]]) -> list[list[Optional[float]]]:
    """(r - mean) / std over every scored response of the set (population std; 0 everywhere when it is 0)."""
    values = [r for row in scores for r in row if r is not None]
    mean = sum(values) / len(values) if values else 0.0
    std = (sum((r - mean) ** 2 for r in values) / len(values)) ** 0.5 if values else 0.0
    return [[None if r is None else (r - mean) / std if std > 0 else 0.0 for r in row] for row in scores]


def selected(z: Sequence[Optional[float]], threshold: float) -> list[bool]:
    """Strictly above the threshold (determine_hyper.py:82); an unscored response never is."""
    return [r is not None and r > threshold for r in z]


def balance_score(z: Sequence[Optional[float]], correct: Sequence[bool], texts: Sequence[str], threshold: float,
                  n_star: int, gold: bool = False) -> float:
    """One prompt's min(n'/n*, 1) x n'/n over its distinct selected responses (n) and the correct ones among
    them (n'), with the gold solution one more of each when `gold`; 0 when nothing is selected."""
    chosen = [i for i, s in enumerate(selected(z, threshold)) if s]
    n = len({texts[i] for i in chosen}) + gold
    n_correct = len({texts[i] for i in chosen if correct[i]}) + gold
    return min(n_correct / n_star, 1.0) * n_correct / n if n else 0.0


def mean_balance(z: Sequence[Sequence[Optional[float]]], correct: Sequence[Sequence[bool]], texts: Sequence[Sequence[str]],
                 threshold: float, n_star: int, gold: Optional[Sequence[bool]] = None) -> float:
    """The balance score averaged over prompts; `gold`: per prompt, whether it has a gold solution (None: none)."""
    gold = gold if gold is not None else [False] * len(z)
    return sum(balance_score(*prompt, threshold, n_star, g) for *prompt, g in zip(z, correct, texts, gold)) / len(z)


def has_gold(cfg: Config, answers: Sequence[str]) -> list[bool]:
    """Per prompt, whether its gold solution counts: `bstar.gold_solution` and a known answer."""
    return [cfg.bstar.gold_solution and bool(str(a).strip()) for a in answers]


def best_setting(grid: dict[tuple[float, float], float]) -> tuple[float, float]:
    """The (temperature, threshold) of the highest score; the first in the grid's order among equal ones."""
    return max(grid, key=lambda key: (grid[key], -list(grid).index(key)))


def probe_grid(probes: dict[float, tuple[list[PromptSamples], list[list[Optional[float]]]]], cfg: Config
               ) -> dict[tuple[float, float], float]:
    """The mean balance score of each (temperature, threshold): `probes` holds, per temperature, the probe's rows
    sampled at it and their rewards (standardized per temperature over the probe's scored responses)."""
    grid = {}
    for t, (rows, scores) in probes.items():
        z, correct = standardized(scores), [correctness(r) for r in rows]
        texts, gold = [[resp.text for resp in r.responses] for r in rows], has_gold(cfg, [r.answer for r in rows])
        for threshold in cfg.bstar.thresholds:
            grid[(t, threshold)] = mean_balance(z, correct, texts, threshold, cfg.bstar.n_star, gold)
    return grid


def _check(cfg: Config) -> None:
    if cfg.sampling.adaptive != "bstar" or "reward_threshold" not in cfg.pairs.filters:
        raise ConfigError(f"config keys `sampling.adaptive` and `pairs.filters`: B-STaR's threshold is picked by "
                          f"sampling.adaptive=bstar and applied by the pair filter reward_threshold; set both "
                          f"(conf/experiment/bstar_smollm.yaml), got sampling.adaptive={cfg.sampling.adaptive}, "
                          f"pairs.filters={list(cfg.pairs.filters)}")


def _sampler_settings(cfg: Config) -> tuple[str, ...]:
    """The probe is scored by the run's rewarder: its settings too."""
    return ("bstar", "rewarder", *settings_of([REWARDERS.get(cfg.rewarder.name)], cfg))


class BalancedSampler:
    check = staticmethod(_check)
    settings = staticmethod(_sampler_settings)

    def probe(self, ctx, rows: list[PromptSamples], temperature: float, folder: Path
              ) -> tuple[list[PromptSamples], list[list[Optional[float]]], int]:
        """The probe's rows sampled from M_t at `temperature`, their rewards, and the forward passes it took."""
        cfg = ctx.cfg
        spec, _ = reward_specs(cfg, ctx.models, ctx.iteration)
        tokenizer = load_tokenizer(ctx.policy.base)
        sampling = dataclasses.replace(cfg.sampling, temperature=temperature)
        samples = generate(ctx.pool, ctx.policy, tokenizer, [r.prompt_ids for r in rows], sampling, cfg.sampling,
                           ctx.sampling_seed, folder / "chunks", f"probe T={temperature}", cfg.model.max_length)
        rows_t = [dataclasses.replace(r, responses=s) for r, s in zip(rows, samples)]
        sequences = [(r.prompt_ids, resp.ids) for r in rows_t for resp in r.responses]
        logps = dict(logprobs_under(ctx.pool, spec_logp_models(spec), sequences, cfg.rewarder.batch_size,
                                    tokenizer.pad_token_id, "probe logprobs"))
        scores, _ = spec_scores(spec, rows_t, logps, cfg, ctx.pool, ctx.sampling_seed, folder)
        return rows_t, scores, len(logps) * distinct_count(sequences)

    def choose(self, ctx, rows: list[PromptSamples], stage_dir: Path) -> SamplingChoice:
        cfg, settings = ctx.cfg, ctx.cfg.bstar
        probe = rows[: settings.probe_prompts]
        probes, computed = {}, 0
        for t in settings.temperatures:
            rows_t, scores, passes = self.probe(ctx, probe, t, stage_dir / "probe" / f"temperature_{t}")
            probes[t], computed = (rows_t, scores), computed + passes
        grid = probe_grid(probes, cfg)
        temperature, threshold = best_setting(grid)
        metrics = {"bstar/temperature": temperature, "bstar/probe_threshold": threshold,
                   "bstar/probe_balance": grid[(temperature, threshold)], "bstar/probe_prompts": len(probe),
                   "bstar/probe_forward_passes": computed,
                   **{f"bstar/probe_balance/t{t}_threshold{h}": v for (t, h), v in grid.items()}}
        return SamplingChoice(dataclasses.replace(cfg.sampling, temperature=temperature), metrics,
                              {"temperature": temperature, "threshold": threshold, "grid": [[t, h, v] for (t, h), v in grid.items()]})


class RewardThresholdFilter:
    check = staticmethod(_check)
    settings = ("bstar",)

    def rewarders(self, cfg: Config) -> tuple[str, ...]:
        return ()

    def apply(self, pairs, rewards, ctx) -> FilterResult:
        settings = ctx.cfg.bstar
        ids = list(rewards)
        z = dict(zip(ids, standardized([rewards[i].rewards for i in ids])))
        samples = {r.id: r for r in read_rows(ctx.file("sample", "responses"), PromptSamples)}
        texts = {i: [resp.text for resp in samples[i].responses] for i in ids}
        gold = has_gold(ctx.cfg, [rewards[i].answer for i in ids])

        def balance(threshold: float) -> float:
            return mean_balance([z[i] for i in ids], [rewards[i].correct for i in ids], [texts[i] for i in ids],
                                threshold, settings.n_star, gold)

        probe_threshold = read_json(ctx.file("sample", "adaptive"))["threshold"]
        shard_grid = {h: balance(h) for h in settings.thresholds}
        threshold = (max(shard_grid, key=lambda h: (shard_grid[h], -settings.thresholds.index(h)))
                     if settings.threshold_from == "shard" else probe_threshold)
        keep = [selected(z[p.id], threshold)[p.chosen_index] for p in pairs]
        chosen = [(i, k) for i in ids for k, s in enumerate(selected(z[i], threshold)) if s]
        metrics = {
            "bstar/threshold": threshold, "bstar/probe_threshold": probe_threshold,
            **{f"bstar/balance/threshold{h}": v for h, v in shard_grid.items()},
            "bstar/distinct_per_prompt": sum(len({t.strip() for t in texts[i]}) for i in ids) / len(ids),
            "bstar/selected_accuracy": sum(rewards[i].correct[k] for i, k in chosen) / len(chosen) if chosen else float("nan"),
            "bstar/balance": balance(threshold),
            "bstar/dropped_below_threshold": keep.count(False),
        }
        return FilterResult(keep=keep, weight=[1.0] * len(pairs), metrics=metrics)


ADAPTIVE_SAMPLERS.register("bstar", BalancedSampler())
FILTERS.register("reward_threshold", RewardThresholdFilter())
SETTINGS.register("bstar", BstarConfig)
