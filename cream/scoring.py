"""The scoring kernel: summed log-probs of responses given their prompts, each prompt encoded once.

The reward stage's log-probs come from here, and with them the DPO reference log-probs of chosen and
rejected; the fused log-prob head is the one the DPO trainer uses, so both compute alike.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from cream.errors import StageError


def distinct_count(sequences: list[tuple[list[int], list[int]]]) -> int:
    """How many log-probs `sequence_logprobs` computes for these sequences: one per distinct pair."""
    return len({(tuple(p), tuple(r)) for p, r in sequences})


def sequence_logprobs(model, sequences: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, desc: str,
                      share_prompts: bool = True) -> list[float]:
    """Summed log-probs of each response given its prompt; prompt and padding masked out.

    Each prompt but its last token is encoded once per batch, its KV cache repeated for its
    responses; then the last prompt token and each response run on top of it. With `share_prompts`
    the responses of a prompt share that encoding (the prompt is over half of each sequence in the
    default run); without, every sequence encodes its own prompt: the work of whole-sequence scoring.
    Batches of about `batch_size` responses in prompt-length order; results in input order.

    Each distinct (prompt, response) is scored once and its value shared: the same sequence in two
    batch rows would get log-probs a few 1e-6 apart, an order that Kendall's tie rule would count.
    """
    groups: dict[tuple[int, ...], list[int]] = {}  # prompt -> its distinct responses' indices
    first: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    shared_from = list(range(len(sequences)))  # the index whose value each sequence takes
    for i, (prompt, response) in enumerate(sequences):
        if len(prompt) < 2:
            raise StageError(f"sequence {i}: a prompt of {len(prompt)} token(s); scoring needs at least 2")
        key = (tuple(prompt), tuple(response))
        if key in first:
            shared_from[i] = first[key]
            continue
        first[key] = i
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
    return [result[j] for j in shared_from]


def _score_batch(model, prompts: list[list[int]], owner: list[int], responses: list[list[int]], pad_id: int) -> list[float]:
    """Summed log-probs of `responses[j]` after `prompts[owner[j]]`, from the fused log-prob head."""
    out = shared_prefix_forward(model, prompts, owner, responses, pad_id, fused_log_probs=True)
    return out.log_probs.float().sum(dim=1).tolist()


def _backbone(model):
    """The transformer under the LM head (adapters included), for the prefix pass."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, getattr(base, "base_model_prefix", "model"))


def shared_prefix_forward(model, prompts: list[list[int]], owner: list[int], responses: list[list[int]], pad_id: int,
                          fused_log_probs: bool = False):
    """The model's output over each `responses[j]` preceded by the last token of `prompts[owner[j]]`, attending
    to one KV cache per prompt: one pass over the prompts but their last token (left-padded, so each ends at
    the last cache slot; none for one-token prompts), one over the responses. Position i of row j predicts
    `responses[j][i]`: `.logits`, or with `fused_log_probs` only the log-probs of those tokens (`.log_probs`,
    the DPO trainer's head)."""
    width = max(len(p) for p in prompts) - 1
    prefix = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for g, prompt in enumerate(prompts):
        if len(prompt) > 1:
            prefix[g, width - len(prompt) + 1 :] = torch.tensor(prompt[:-1])
            prefix_mask[g, width - len(prompt) + 1 :] = 1
    span = max(len(r) for r in responses) + 1
    suffix = torch.full((len(responses), span), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((len(responses), span), dtype=torch.long)
    labels = torch.full((len(responses), span), -100, dtype=torch.long)
    for j, (g, response) in enumerate(zip(owner, responses)):
        suffix[j, : len(response) + 1] = torch.tensor(list(prompts[g][-1:]) + list(response))
        suffix_mask[j, : len(response) + 1] = 1
        labels[j, 1 : len(response) + 1] = torch.tensor(response, dtype=torch.long)
    rows = torch.tensor(owner)
    starts = torch.tensor([len(prompts[g]) - 1 for g in owner])
    device = model.device  # built on the CPU, moved once
    if device.type != "cpu":
        prefix, prefix_mask, suffix, suffix_mask, labels, rows, starts = (
            t.to(device) for t in (prefix, prefix_mask, suffix, suffix_mask, labels, rows, starts))
    head = {"labels": labels, "fused_lm_head": True} if fused_log_probs else {}
    with torch.inference_mode():
        cache = None
        if width > 0:
            cache = _backbone(model)(input_ids=prefix, attention_mask=prefix_mask,
                                     position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True).past_key_values
            cache.batch_select_indices(rows)  # each response gets its prompt's cache rows
        mask = torch.cat([prefix_mask[rows], suffix_mask], dim=1) if cache is not None else suffix_mask
        return model(input_ids=suffix, attention_mask=mask, position_ids=starts[:, None] + torch.arange(span, device=device)[None],
                     past_key_values=cache, use_cache=cache is not None, **head)
