"""The scoring kernel: summed log-probs of responses given their prompts, each prompt encoded once.

The reward stage's log-probs come from here, and with them the DPO reference log-probs of chosen and
rejected; the fused log-prob head is the one the DPO trainer uses, so both compute alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import DynamicCache

from cream.errors import StageError

# A chunk of responses runs as one rectangle: a longer response starts a new chunk where it would pad the
# chunk's area beyond this multiple of its tokens (lm-eval's options differ in length up to tenfold), once
# the chunk holds enough tokens to be worth a forward of its own (each streams all the weights).
SUFFIX_PADDING_SLACK = 1.25
SUFFIX_CHUNK_MIN_TOKENS = 128


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
    values = [0.0] * len(responses)
    for rows, out in shared_prefix_forward(model, prompts, owner, responses, pad_id, fused_log_probs=True):
        for j, value in zip(rows, out.log_probs.float().sum(dim=1).tolist()):
            values[j] = value
    return values


def _backbone(model):
    """The transformer under the LM head (adapters included), for the prefix pass."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, getattr(base, "base_model_prefix", "model"))


@dataclass(frozen=True)
class Primer:
    """Tokens every prompt of a batch starts with (a few-shot preamble), encoded once for many batches."""

    tokens: tuple[int, ...]
    cache: DynamicCache  # their keys and values, one row


def encode_primer(model, tokens: tuple[int, ...]) -> Primer:
    """The primer's cache from one pass of the backbone over its tokens."""
    with torch.inference_mode():
        ids = torch.tensor([list(tokens)], device=model.device)
        return Primer(tuple(tokens), _backbone(model)(input_ids=ids, use_cache=True).past_key_values)


def _cache_rows(cache: DynamicCache, rows: torch.Tensor, config) -> DynamicCache:
    """A new cache holding `rows` of `cache` (which stays as it is, to be selected from again)."""
    return DynamicCache(ddp_cache_data=[(keys[rows], values[rows]) for keys, values, *_ in cache], config=config)


def suffix_chunks(lengths: list[int], slack: float = SUFFIX_PADDING_SLACK,
                  min_tokens: int = SUFFIX_CHUNK_MIN_TOKENS) -> list[list[int]]:
    """Row indices in chunks of similar length: rows by length, a new chunk where the next row would pad the
    chunk's area (rows x longest) beyond `slack` times its tokens, if it has `min_tokens` already."""
    chunks, tokens = [], 0
    for j in sorted(range(len(lengths)), key=lengths.__getitem__):
        if chunks and tokens >= min_tokens and (len(chunks[-1]) + 1) * lengths[j] > slack * (tokens + lengths[j]):
            chunks.append([])
            tokens = 0
        if not chunks:
            chunks.append([])
        chunks[-1].append(j)
        tokens += lengths[j]
    return chunks


def shared_prefix_forward(model, prompts: list[list[int]], owner: list[int], responses: list[list[int]], pad_id: int,
                          fused_log_probs: bool = False, primer: Primer | None = None):
    """The model's output over each `responses[j]` preceded by the last token of `prompts[owner[j]]`, attending
    to one KV cache per prompt. A list of `(rows, output)`, one per chunk of responses of similar length:
    position i of output row k predicts `responses[rows[k]][i]`: `.logits`, or with `fused_log_probs` only
    the log-probs of those tokens (`.log_probs`, the DPO trainer's head).

    One pass over the prompts but their last token (left-padded, so each ends at the last cache slot; none
    for one-token prompts), on top of the `primer`'s cache when every prompt starts with its tokens (and is
    longer); then one pass per chunk of responses, so short responses are not padded to the longest.
    """
    skip = len(primer.tokens) if primer is not None else 0
    width = max(len(p) for p in prompts) - 1 - skip
    prefix = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(prompts), skip + width), dtype=torch.long)
    prefix_mask[:, :skip] = 1
    for g, prompt in enumerate(prompts):
        middle = prompt[skip:-1]  # after the primer, before the last token
        if middle:
            prefix[g, width - len(middle) :] = torch.tensor(middle)
            prefix_mask[g, skip + width - len(middle) :] = 1
    device = model.device  # built on the CPU, moved once
    prefix, prefix_mask = prefix.to(device), prefix_mask.to(device)
    config = _backbone(model).config
    outputs = []
    with torch.inference_mode():
        cache = _cache_rows(primer.cache, torch.zeros(len(prompts), dtype=torch.long), config) if skip else None
        if width > 0:
            cache = _backbone(model)(input_ids=prefix, attention_mask=prefix_mask, past_key_values=cache,
                                     position_ids=(prefix_mask.cumsum(-1)[:, skip:] - 1).clamp(min=0),
                                     use_cache=True).past_key_values
        for chunk in suffix_chunks([len(r) + 1 for r in responses]):  # each runs after its prompt's last token
            span = max(len(responses[j]) for j in chunk) + 1
            suffix = torch.full((len(chunk), span), pad_id, dtype=torch.long)
            suffix_mask = torch.zeros((len(chunk), span), dtype=torch.long)
            labels = torch.full((len(chunk), span), -100, dtype=torch.long)
            for k, j in enumerate(chunk):
                response = responses[j]
                suffix[k, : len(response) + 1] = torch.tensor(list(prompts[owner[j]][-1:]) + list(response))
                suffix_mask[k, : len(response) + 1] = 1
                labels[k, 1 : len(response) + 1] = torch.tensor(response, dtype=torch.long)
            rows = torch.tensor([owner[j] for j in chunk])
            starts = torch.tensor([len(prompts[owner[j]]) - 1 for j in chunk])
            suffix, suffix_mask, labels, rows, starts = (t.to(device) for t in (suffix, suffix_mask, labels, rows, starts))
            head = {"labels": labels, "fused_lm_head": True} if fused_log_probs else {}
            chunk_cache = _cache_rows(cache, rows, config) if cache is not None else None
            mask = torch.cat([prefix_mask[rows], suffix_mask], dim=1) if cache is not None else suffix_mask
            outputs.append((chunk, model(input_ids=suffix, attention_mask=mask, past_key_values=chunk_cache,
                                         position_ids=starts[:, None] + torch.arange(span, device=device)[None],
                                         use_cache=chunk_cache is not None, **head)))
    return outputs
