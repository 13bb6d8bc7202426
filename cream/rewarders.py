"""The rewarders: what scores a response, under which model, and the reference schedule across iterations.

A `RewardSpec` is a rewarder applied to one model. Implicit and likelihood rewards read log-probs
the reward stage computed once per (model, response); the judge samples judgements; the oracle
checks the known answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cream.config import Config, JudgeConfig, ModelRole, RewarderName, SamplingConfig
from cream.extract import is_correct
from cream.judge import judge_scores
from cream.model_pool import ModelPool
from cream.models import ModelRef
from cream.rows import PromptSamples


@dataclass(frozen=True)
class RewardSpec:
    """A rewarder applied to one model. Responses in, one score per response (or None) out."""

    rewarder: RewarderName
    model: ModelRef
    reference: Optional[ModelRef] = None  # implicit only

    def logp_models(self) -> list[ModelRef]:
        """The models whose log-probs of the responses this reward reads."""
        if self.rewarder == RewarderName.implicit:
            return [self.model, self.reference]
        return [self.model] if self.rewarder == RewarderName.likelihood else []


def reward_specs(cfg: Config, models: list[ModelRef], t: int) -> tuple[RewardSpec, RewardSpec]:
    """The reward of M_t and the ranking of M_{t-1} it is compared with, from the reference schedule in config."""

    def spec(k: int) -> RewardSpec:
        if cfg.rewarder.name != RewarderName.implicit:
            return RewardSpec(cfg.rewarder.name, models[k])
        reference = models[0] if cfg.rewarder.reference == ModelRole.m0 else models[max(k - 1, 0)]
        if reference == models[k]:  # a model is its own reference: its implicit reward is 0 everywhere
            first = cfg.regularizer.first_previous
            return RewardSpec(first, models[k], models[0] if first == RewarderName.implicit else None)
        return RewardSpec(RewarderName.implicit, models[k], reference)

    return spec(t), spec(t - 1)


def correctness(row: PromptSamples) -> list[bool]:
    return [is_correct(resp.text, row.answer, row.task) for resp in row.responses]


def oracle_scores(rows: list[PromptSamples]) -> list[list[float]]:
    """1 when a response reaches the prompt's known answer, else 0 (same extraction as evaluation)."""
    return [[float(c) for c in correctness(row)] for row in rows]


def spec_scores(spec: RewardSpec, rows: list[PromptSamples], logps: dict[str, list[float]], judge: JudgeConfig,
                engine: SamplingConfig, pool: ModelPool, max_length: int, seed: int, stage_dir: Path
                ) -> tuple[list[list[Optional[float]]], dict]:
    """Per prompt, the reward of each of its responses under `spec`, and the rewarder's own statistics.

    `logps` holds, per model name, the summed log-prob of every response of `rows`, flattened in order.
    """
    if spec.rewarder == RewarderName.oracle:
        return oracle_scores(rows), {}
    if spec.rewarder == RewarderName.judge:
        return judge_scores(pool, spec.model, judge, engine, rows, max_length, seed,
                            Path(stage_dir) / "judge" / spec.model.name)
    out, cursor = [], 0
    for row in rows:
        n = len(row.responses)
        own = np.asarray(logps[spec.model.name][cursor : cursor + n], dtype=float)
        if spec.rewarder == RewarderName.likelihood:
            lengths = np.array([max(len(r.ids), 1) for r in row.responses], dtype=float)
            out.append((own / lengths).tolist())
        else:
            out.append((own - np.asarray(logps[spec.reference.name][cursor : cursor + n], dtype=float)).tolist())
        cursor += n
    return out, {}
