"""The rows of the run folder's JSONL artifacts, typed, and the one place they are read and written.

responses.jsonl holds `PromptSamples`, rewards.jsonl `RewardRow`s, consistency.jsonl `ConsistencyRow`s,
pairs.jsonl `Pair`s, scored_responses.jsonl `ScoredResponse`s (the examples of a per-response loss). Every
row carries its prompt id, so no value can move to another prompt when prompts are dropped along the way
(mistake 1 of the published code). The consistency C of a prompt is called `consistency` from the
consistency stage to the pairs; what the loss reads of a pair is its `target`, `weight` and penalty.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, TypeVar

from cream.runs.artifacts import iter_numbered_jsonl, write_jsonl
from cream.errors import DataError


@dataclass
class Response:
    text: str
    ids: list[int]  # generated ids, up to and including the end-of-turn token when it was reached
    finished: bool  # reached the end-of-turn token before the length limit


@dataclass
class PromptSamples:
    """One prompt of the shard and its N sampled responses (responses.jsonl)."""

    id: str
    task: str
    prompt: str
    answer: str  # ground truth, for diagnostics only: never shown to the model
    prompt_ids: list[int]  # the prompt in the chat template, as the model saw it
    responses: list[Response] = field(default_factory=list)


@dataclass
class RewardRow:
    """Per prompt: every response's reward under M_t and under M_{t-1}, and its log-probs (rewards.jsonl)."""

    id: str
    task: str
    answer: str
    rewards: list[Optional[float]]  # None: the rewarder could not score it (no valid judgement)
    previous_rewards: Optional[list[Optional[float]]]  # None: no previous ranking this iteration
    correct: list[bool]  # against the ground truth, for diagnostics
    logps: dict[str, list[float]]  # model name -> summed log-prob of each response
    n_tokens: list[int]
    # rewarder name -> M_t's score of each response, for the rewarders the pair filters read (`pairs.filters`)
    scores: dict[str, list[Optional[float]]] = field(default_factory=dict)


@dataclass
class ConsistencyRow:
    """Per prompt: the measured agreement C_j of the two rankings, and the C its pair trains with."""

    id: str
    measured: Optional[float]  # (tau + 1) / 2 or the measure's equivalent; None when fewer than 2 responses are scored twice
    consistency: Optional[float]  # by `regularizer.name`: 1 (none), the iteration's mean (cream_avg), C_j (cream_dyn)


@dataclass
class Pair:
    """One preference pair with everything DPO reads (pairs.jsonl)."""

    id: str
    task: str
    answer: str
    prompt: str
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    consistency: float
    chosen_correct: bool
    rejected_correct: bool
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    ref_chosen_logps: float  # under M_t, the policy DPO starts from, from the reward stage
    ref_rejected_logps: float
    # Added with the plug-in methods; the defaults read a pairs.jsonl written before them as it trained.
    chosen_index: Optional[int] = None  # the responses' positions among the prompt's samples
    rejected_index: Optional[int] = None
    strength: float = 1.0  # p: how surely chosen beats rejected, from the reward gap (`reward_scale`, `pairs.tau`); 1 = surely
    target: Optional[float] = None  # the label of sigmoid(h) in the loss: C*p + (1-C)*(1-p); None -> C
    weight: float = 1.0  # multiplies the pair's loss (filters set it, e.g. SCIR's joint confidence)
    penalty: float = 0.0  # weight of a second label term of the loss (SCIR's inconsistency penalty); 0 = none
    penalty_target: float = 0.5  # that term's label of sigmoid(h) (SCIR: the judge's preference probability)

    def __post_init__(self) -> None:
        if self.target is None:
            self.target = self.consistency


@dataclass
class ScoredResponse:
    """One scored response with what a per-response loss reads (scored_responses.jsonl; dpo.loss=sppo)."""

    id: str  # the prompt's
    task: str
    index: int  # its position among the prompt's samples
    prompt: str
    text: str
    reward: float
    correct: bool
    prompt_ids: list[int]
    completion_ids: list[int]
    ref_logps: float  # under M_t, from the reward stage
    target: float  # its win rate against the prompt's other scored responses under the self-reward
    weight: float = 1.0


Row = TypeVar("Row")
_NESTED = {(PromptSamples, "responses"): Response}


def write_rows(path: Path, rows: Iterable) -> None:
    """Write typed rows as JSONL, atomically."""
    write_jsonl(path, (dataclasses.asdict(r) for r in rows))


def read_rows(path: Path, row_type: type[Row]) -> list[Row]:
    """Typed rows of a JSONL artifact; a row lacking a field fails naming file:line and the field."""
    names = [f.name for f in dataclasses.fields(row_type)]
    required = [f.name for f in dataclasses.fields(row_type)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    rows = []
    for lineno, raw in iter_numbered_jsonl(path):
        missing = [n for n in required if n not in raw]
        if missing:
            raise DataError(f"{path}:{lineno}: a {row_type.__name__} row lacks field `{missing[0]}`")
        values = {n: raw[n] for n in names if n in raw}
        for (owner, name), item_type in _NESTED.items():
            if owner is row_type:
                values[name] = [item_type(**item) for item in values.get(name, [])]
        rows.append(row_type(**values))
    return rows
