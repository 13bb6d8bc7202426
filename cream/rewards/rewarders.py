"""The rewarders: what scores a response, under which model, and the reference schedule across iterations.

A `RewardSpec` (`cream.plugins.contracts`) is a rewarder applied to one model. Rewarders are registered by name
(`cream.plugins.registry.REWARDERS`): `implicit` and `likelihood` read the log-probs
the reward stage computed once per (model, response); `judge` samples judgements of the model itself;
`oracle` checks the known answer. A rewarder that scores with model calls of its own gets the model pool
through `RewardInputs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cream.config import Config
from cream.config.rewards import ModelRole
from cream.eval.extract import is_correct
from cream.rewards.judge import judge_scores
from cream.engine.model_pool import ModelPool
from cream.runs.model_ref import ModelRef
from cream.plugins.contracts import RewardInputs, RewardSpec, Scores
from cream.plugins.registry import REWARDERS
from cream.runs.rows import PromptSamples


def rewarder_spec(cfg: Config, models: list[ModelRef], k: int, name: str) -> RewardSpec:
    """Rewarder `name` applied to M_k, with the reference `rewarder.reference` names when it needs one."""
    if not REWARDERS.get(name).needs_reference:
        return RewardSpec(name, models[k])
    return RewardSpec(name, models[k], models[0] if cfg.rewarder.reference == ModelRole.m0 else models[max(k - 1, 0)])


def reward_specs(cfg: Config, models: list[ModelRef], t: int) -> tuple[RewardSpec, RewardSpec]:
    """The reward of M_t and the ranking of M_{t-1} it is compared with, from the reference schedule in config."""

    def spec(k: int) -> RewardSpec:
        own = rewarder_spec(cfg, models, k, cfg.rewarder.name)
        if own.reference == models[k]:  # a model is its own reference: its implicit reward is 0 everywhere
            first = cfg.regularizer.first_previous
            return RewardSpec(first, models[k], models[0] if REWARDERS.get(first).needs_reference else None)
        return own

    return spec(t), spec(t - 1)


def correctness(row: PromptSamples) -> list[bool]:
    return [is_correct(resp.text, row.answer, row.task) for resp in row.responses]


def oracle_scores(rows: list[PromptSamples]) -> Scores:
    """1 when a response reaches the prompt's known answer, else 0 (same extraction as evaluation)."""
    return [[float(c) for c in correctness(row)] for row in rows]


def spec_logp_models(spec: RewardSpec) -> list[ModelRef]:
    """The models whose log-probs of the responses `spec` reads."""
    return REWARDERS.get(spec.rewarder).logp_models(spec)


def spec_scores(spec: RewardSpec, rows: list[PromptSamples], logps: dict[str, list[float]], config: Config,
                pool: ModelPool, seed: int, stage_dir: Path) -> tuple[Scores, dict]:
    """Per prompt, the reward of each of its responses under `spec`, and the rewarder's own statistics.

    `logps` holds, per model name, the summed log-prob of every response of `rows`, flattened in order.
    """
    inputs = RewardInputs(config, pool, seed, Path(stage_dir))
    return REWARDERS.get(spec.rewarder).scores(spec, rows, logps, inputs)


@dataclass(frozen=True)
class LogpRewarder:
    """A reward computed per prompt from the log-probs of its responses (no model call of its own)."""

    needs_reference: bool
    # (spec, the prompt's samples, model name -> the log-probs of its responses) -> one reward per response
    per_prompt: Callable[[RewardSpec, PromptSamples, Callable[[ModelRef], np.ndarray]], np.ndarray]

    def logp_models(self, spec: RewardSpec) -> list[ModelRef]:
        return [spec.model, spec.reference] if self.needs_reference else [spec.model]

    def scores(self, spec: RewardSpec, rows: list[PromptSamples], logps: dict[str, list[float]],
               inputs: RewardInputs) -> tuple[Scores, dict]:
        out, cursor = [], 0
        for row in rows:
            n = len(row.responses)
            out.append(self.per_prompt(spec, row, lambda m: np.asarray(logps[m.name][cursor : cursor + n], dtype=float)).tolist())
            cursor += n
        return out, {}


@dataclass(frozen=True)
class JudgeRewarder:
    """SRLM's LLM-as-a-judge: the model grades its own responses (`cream.rewards.judge`)."""

    needs_reference: bool = False
    settings: tuple[str, ...] = ("judge",)

    def logp_models(self, spec: RewardSpec) -> list[ModelRef]:
        return []

    def scores(self, spec: RewardSpec, rows: list[PromptSamples], logps: dict[str, list[float]],
               inputs: RewardInputs) -> tuple[Scores, dict]:
        return judge_scores(inputs.pool, spec.model, inputs.judge, inputs.engine, rows, inputs.max_length, inputs.seed,
                            inputs.stage_dir / "judge" / spec.model.name)


@dataclass(frozen=True)
class OracleRewarder:
    needs_reference: bool = False

    def logp_models(self, spec: RewardSpec) -> list[ModelRef]:
        return []

    def scores(self, spec: RewardSpec, rows: list[PromptSamples], logps: dict[str, list[float]],
               inputs: RewardInputs) -> tuple[Scores, dict]:
        return oracle_scores(rows), {}


def _mean_token_logprob(spec: RewardSpec, row: PromptSamples, logps_of) -> np.ndarray:
    return logps_of(spec.model) / np.array([max(len(r.ids), 1) for r in row.responses], dtype=float)


REWARDERS.register("implicit",  # log pi_t - log pi_ref, summed over the response
                   LogpRewarder(True, lambda spec, row, logps_of: logps_of(spec.model) - logps_of(spec.reference)))
REWARDERS.register("likelihood", LogpRewarder(False, _mean_token_logprob))
REWARDERS.register("judge", JudgeRewarder())
REWARDERS.register("oracle", OracleRewarder())
