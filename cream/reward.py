"""Reward stage: response log-probabilities under each model a rewarder needs, computed once, then rewards.

Every (model, sequence) log-probability is computed once per iteration and kept in `rewards.jsonl`:
the current model's reward, the previous model's ranking (consistency) and the DPO reference
log-probs of chosen and rejected (training) all read it from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cream.artifacts import read_json, read_jsonl, write_json, write_jsonl
from cream.config import RewarderName
from cream.errors import StageError
from cream.models import ModelPool, ModelRef, load_tokenizer

REWARDS = "rewards.jsonl"


@dataclass(frozen=True)
class RewardSpec:
    """A rewarder applied to one model: r = log pi(y|x) - log pi_ref(y|x), or the mean token log-prob."""

    rewarder: RewarderName
    model: ModelRef
    reference: Optional[ModelRef] = None  # implicit only

    def models(self) -> list[ModelRef]:
        return [self.model] + ([self.reference] if self.reference is not None else [])

    def scores(self, logps: dict[str, Sequence[float]], n_tokens: Sequence[int]) -> list[float]:
        own = np.asarray(logps[self.model.name], dtype=float)
        if self.rewarder == RewarderName.likelihood:
            return (own / np.maximum(np.asarray(n_tokens, dtype=float), 1.0)).tolist()
        return (own - np.asarray(logps[self.reference.name], dtype=float)).tolist()


def sequence_logprobs(model, sequences: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, desc: str) -> list[float]:
    """Summed log-probs of each response given its prompt; prompt and padding masked out.

    Sequences are batched in length order (less padding) and right-padded exactly as the DPO
    collator pads them; the result comes back in input order.
    """
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    result = [0.0] * len(sequences)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start : start + batch_size]
        width = max(len(sequences[i][0]) + len(sequences[i][1]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            prompt, response = sequences[i]
            n = len(prompt) + len(response)
            input_ids[row, :n] = torch.tensor(prompt + response)
            attention[row, :n] = 1
            labels[row, len(prompt) : n] = torch.tensor(response, dtype=torch.long)
        with torch.inference_mode():
            out = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True, use_cache=False)
        for row, value in enumerate(out.log_probs.float().sum(dim=1).tolist()):
            result[idx[row]] = value
    return result


def reward(
    current: RewardSpec,
    previous: Optional[RewardSpec],
    pool: ModelPool,
    samples_path: Path,
    stage_dir: Path,
    batch_size: int,
) -> dict:
    """Write `rewards.jsonl`: per prompt id, the current and previous rewards and every log-prob computed."""
    rows = read_jsonl(samples_path)
    tokenizer = load_tokenizer(current.model.base)
    sequences = [(row["prompt_ids"], resp["ids"]) for row in rows for resp in row["responses"]]
    needed = {m.name: m for spec in (current, previous) if spec is not None for m in spec.models()}
    flat: dict[str, list[float]] = {}
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
        flat[name] = values

    out_rows, cursor = [], 0
    for row in rows:
        n = len(row["responses"])
        logps = {name: values[cursor : cursor + n] for name, values in flat.items()}
        n_tokens = [len(resp["ids"]) for resp in row["responses"]]
        cursor += n
        out_rows.append(
            {
                "id": row["id"],
                "task": row["task"],
                "answer": row["answer"],
                "rewards": current.scores(logps, n_tokens),
                "previous_rewards": previous.scores(logps, n_tokens) if previous is not None else None,
                "logps": logps,
                "n_tokens": n_tokens,
            }
        )
    all_rewards = np.array([r for row in out_rows for r in row["rewards"]])
    if all_rewards.size and np.all(all_rewards == all_rewards[0]):
        raise StageError(
            f"every reward of this iteration equals {all_rewards[0]}: the rewarder cannot rank anything "
            f"(with rewarder=implicit this happens when the current model {current.model.name} equals its "
            f"reference; enable SFT (`sft.enabled=true`) or use `rewarder=likelihood`)"
        )
    write_jsonl(Path(stage_dir) / REWARDS, out_rows)
    return {
        "reward/mean": float(all_rewards.mean()),
        "reward/std": float(all_rewards.std()),
        "reward/min": float(all_rewards.min()),
        "reward/max": float(all_rewards.max()),
        "reward/forward_passes": len(needed) * len(sequences),
        "reward/models_scored": len(needed),
    }
