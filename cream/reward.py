"""Reward stage: response log-probabilities under each model a rewarder needs, computed once, then rewards.

Every (model, sequence) log-probability is computed once per iteration and kept in `rewards.jsonl`:
the current model's reward, the previous model's ranking (consistency) and the DPO reference
log-probs of chosen and rejected (training) all read it from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from cream.artifacts import read_json, read_jsonl, write_json, write_jsonl
from cream.config import JudgeConfig, RewarderName, SamplingConfig
from cream.errors import StageError
from cream.extract import is_correct
from cream.judge import judge_scores
from cream.models import ModelPool, ModelRef, load_tokenizer

REWARDS = "rewards.jsonl"


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


def oracle_scores(rows: list[dict]) -> list[list[float]]:
    """1 when a response reaches the prompt's known answer, else 0 (same extraction as evaluation)."""
    return [[float(c) for c in correctness(row)] for row in rows]


def correctness(row: dict) -> list[bool]:
    return [is_correct(resp["text"], row["answer"], row["task"]) for resp in row["responses"]]


def spec_scores(spec: RewardSpec, rows: list[dict], logps: dict[str, list[float]], judge: JudgeConfig,
                engine: SamplingConfig, pool: ModelPool, max_length: int, seed: int, stage_dir: Path) -> tuple[list[list[Optional[float]]], dict]:
    """Per prompt, the reward of each of its responses under `spec`, and the rewarder's own statistics."""
    if spec.rewarder == RewarderName.oracle:
        return oracle_scores(rows), {}
    if spec.rewarder == RewarderName.judge:
        return judge_scores(pool, spec.model, judge, engine, rows, max_length, seed,
                            Path(stage_dir) / "judge" / spec.model.name)
    out, cursor = [], 0
    for row in rows:
        n = len(row["responses"])
        own = np.asarray(logps[spec.model.name][cursor : cursor + n], dtype=float)
        if spec.rewarder == RewarderName.likelihood:
            lengths = np.array([max(len(r["ids"]), 1) for r in row["responses"]], dtype=float)
            out.append((own / lengths).tolist())
        else:
            out.append((own - np.asarray(logps[spec.reference.name][cursor : cursor + n], dtype=float)).tolist())
        cursor += n
    return out, {}


def sequence_logprobs(model, sequences: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, desc: str,
                      share_prompts: bool = True) -> list[float]:
    """Summed log-probs of each response given its prompt; prompt and padding masked out.

    Each prompt but its last token is encoded once per batch, its KV cache repeated for its
    responses; then the last prompt token and each response run on top of it. With `share_prompts`
    the responses of a prompt share that encoding (the prompt is over half of each sequence in the
    default run); without, every sequence encodes its own prompt: the work of whole-sequence scoring.
    Batches of about `batch_size` responses in prompt-length order; results in input order.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt, _) in enumerate(sequences):
        if len(prompt) < 2:
            raise StageError(f"sequence {i}: a prompt of {len(prompt)} token(s); scoring needs at least 2")
        groups.setdefault(tuple(prompt) if share_prompts else (i, *prompt), []).append(i)
    batches, current = [], []
    for key in sorted(groups, key=len):  # whole groups per batch, about batch_size responses each
        current.append(key)
        if sum(len(groups[k]) for k in current) >= batch_size:
            batches.append(current)
            current = []
    batches += [current] if current else []
    result = [0.0] * len(sequences)
    for batch in tqdm(batches, desc=desc, unit="batch"):
        members = [i for key in batch for i in groups[key]]
        prompts = [sequences[groups[key][0]][0] for key in batch]
        owner = [g for g, key in enumerate(batch) for _ in groups[key]]
        values = _score_batch(model, prompts, owner, [sequences[i][1] for i in members], pad_id)
        for i, value in zip(members, values):
            result[i] = value
    return result


def _score_batch(model, prompts: list[list[int]], owner: list[int], responses: list[list[int]], pad_id: int) -> list[float]:
    """Summed log-probs of `responses[j]` after `prompts[owner[j]]`: one prefix pass, one suffix pass."""
    backbone = (model.get_base_model() if hasattr(model, "get_base_model") else model).model  # adapters included
    width = max(len(p) for p in prompts) - 1
    prefix = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for g, prompt in enumerate(prompts):  # left-padded, so every prefix ends at the last cache slot
        prefix[g, width - len(prompt) + 1 :] = torch.tensor(prompt[:-1])
        prefix_mask[g, width - len(prompt) + 1 :] = 1
    span = max(len(r) for r in responses) + 1
    suffix = torch.full((len(responses), span), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((len(responses), span), dtype=torch.long)
    labels = torch.full((len(responses), span), -100, dtype=torch.long)
    for j, (g, response) in enumerate(zip(owner, responses)):
        suffix[j, : len(response) + 1] = torch.tensor(prompts[g][-1:] + response)
        suffix_mask[j, : len(response) + 1] = 1
        labels[j, 1 : len(response) + 1] = torch.tensor(response, dtype=torch.long)
    rows = torch.tensor(owner)
    starts = torch.tensor([len(prompts[g]) - 1 for g in owner])
    with torch.inference_mode():
        cache = backbone(input_ids=prefix, attention_mask=prefix_mask,
                         position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True).past_key_values
        cache.batch_select_indices(rows)  # each response gets its prompt's cache rows
        out = model(input_ids=suffix, attention_mask=torch.cat([prefix_mask[rows], suffix_mask], dim=1),
                    position_ids=starts[:, None] + torch.arange(span)[None], past_key_values=cache,
                    labels=labels, fused_lm_head=True)
    return out.log_probs.float().sum(dim=1).tolist()


def reward(
    current: RewardSpec,
    previous: Optional[RewardSpec],
    pool: ModelPool,
    samples_path: Path,
    stage_dir: Path,
    batch_size: int,
    judge: JudgeConfig,
    engine: SamplingConfig,
    max_length: int,
    seed: int,
) -> dict:
    """Write `rewards.jsonl`: per prompt id, current and previous rewards, correctness, every log-prob.

    The current model's log-probs are always computed: whatever the rewarder, DPO reads its
    reference log-probs of chosen and rejected from here.
    """
    rows = read_jsonl(samples_path)
    tokenizer = load_tokenizer(current.model.base)
    sequences = [(row["prompt_ids"], resp["ids"]) for row in rows for resp in row["responses"]]
    needed = {m.name: m for m in [current.model, *current.logp_models(), *(previous.logp_models() if previous else [])]}
    flat: dict[str, list[float]] = {}
    computed = 0  # (model, sequence) log-probs computed here; every later use reads them
    for name, ref in needed.items():
        path = Path(stage_dir) / "logps" / f"{name}.json"
        if path.is_file():  # kept from an interrupted run
            flat[name] = read_json(path)
            continue
        with pool.use(ref) as model:
            values = sequence_logprobs(model, sequences, batch_size, tokenizer.pad_token_id, desc=f"logprobs {name}")
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise StageError(f"non-finite log-prob under model {name} for {len(bad)} responses (first: sequence {bad[0]} of {samples_path})")
        write_json(path, values)
        computed += len(values)
        flat[name] = values

    scores, stats = spec_scores(current, rows, flat, judge, engine, pool, max_length, seed, stage_dir)
    previous_scores = (spec_scores(previous, rows, flat, judge, engine, pool, max_length, seed, stage_dir)[0]
                       if previous is not None else [None] * len(rows))
    if stats.get("judge/judgements") and stats["judge/parse_rate"] == 0:
        raise StageError(f"the judge returned no parsable score in {stats['judge/judgements']} judgements: "
                         f"check `judge.template` and `judge.pattern` ({judge.pattern})")
    out_rows, cursor = [], 0
    for row, row_scores, row_previous in zip(rows, scores, previous_scores):
        n = len(row["responses"])
        out_rows.append({
            "id": row["id"],
            "task": row["task"],
            "answer": row["answer"],
            "rewards": row_scores,
            "previous_rewards": row_previous,
            "correct": correctness(row),
            "logps": {name: values[cursor : cursor + n] for name, values in flat.items()},
            "n_tokens": [len(resp["ids"]) for resp in row["responses"]],
        })
        cursor += n
    valid = np.array([r for row in scores for r in row if r is not None], dtype=float)
    if valid.size == 0 or np.all(valid == valid[0]):
        raise StageError(
            f"every reward of this iteration is equal or missing ({valid[:1].tolist()}): the rewarder cannot rank anything "
            f"(with rewarder=implicit this happens when the current model {current.model.name} equals its "
            f"reference; enable SFT (`sft.enabled=true`) or use another rewarder)"
        )
    write_jsonl(Path(stage_dir) / REWARDS, out_rows)
    return {
        "reward/mean": float(valid.mean()),
        "reward/std": float(valid.std()),
        "reward/min": float(valid.min()),
        "reward/max": float(valid.max()),
        "reward/forward_passes": computed,
        "reward/models_scored": len(needed),
        **stats,
    }
