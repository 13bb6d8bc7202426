"""The scoring kernel: summed log-probs of responses given their prompts, each prompt encoded once.

A prompt and its responses run as one packed row: the responses side by side after the prompt, each
attending to the prompt and to itself only (a block mask) and placed at the positions it would have right
after the prompt. Each response token thus costs one forward position, the prompt one per batch, and rows
are padded only to the longest packed row. A preamble many prompts start with (a fixed few-shot primer)
is encoded once, its KV cache under every row. The LM head runs only where a response token is predicted.

The reward stage's log-probs come from here (`logprobs_under`: the responses under each model of a pool),
and with them the DPO reference log-probs of chosen and rejected; so do lm-eval's log-likelihood requests
(`cream.eval.lm_eval_scoring`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ContextManager, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import DynamicCache

from cream.errors import ModelError, StageError

if TYPE_CHECKING:
    from cream.engine.model_pool import ModelPool
    from cream.runs.model_ref import ModelRef

# Prompts sharing this many first tokens (TruthfulQA's 6-shot preamble: 172) encode them once for all batches.
PRIMER_MIN_TOKENS = 32
HEAD_TILE = 1024  # predicted positions per LM-head product: bounds the logits held at once
# A packed row's attention grows with its square: a prompt with more responses than fit this many tokens
# (say 16 of 512) gets several rows, each with the prompt and some of its responses.
ROW_TOKENS = 1024

Sequence = tuple[tuple[int, ...], tuple[int, ...]]  # (prompt tokens, response tokens)
Group = tuple[tuple[int, ...], list[tuple[int, ...]]]  # one packed row: a prompt and (some of) its distinct responses
Batch = tuple[tuple[int, ...], list[Group]]  # (the primer its prompts share, or (); its groups)


def distinct_count(sequences: list[tuple[list[int], list[int]]]) -> int:
    """How many log-probs `sequence_logprobs` computes for these sequences: one per distinct pair."""
    return len({(tuple(p), tuple(r)) for p, r in sequences})


def _common_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def primers(prompts: list[tuple[int, ...]], min_tokens: int = PRIMER_MIN_TOKENS) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each prompt's primer: the first tokens it shares with other prompts (a few-shot preamble), when at least
    `min_tokens` long; `()` for none. In sorted order the prompts that share a primer are neighbours: a run of
    neighbours sharing `min_tokens` gets the tokens all of them share, leaving each at least one of its own."""
    ordered = sorted(set(prompts))
    result: dict[tuple[int, ...], tuple[int, ...]] = {}
    run = ordered[:1]
    for previous, prompt in zip(ordered, ordered[1:] + [()]):
        if prompt and _common_length(previous, prompt) >= min_tokens:
            run.append(prompt)
            continue
        shared = min((_common_length(a, b) for a, b in zip(run, run[1:])), default=0)
        shared = min(shared, min(len(p) for p in run) - 1)
        primer = run[0][:shared] if shared >= min_tokens else ()
        result.update((p, primer) for p in run)
        run = [prompt]
    return result


def _rows(prompt: tuple[int, ...], responses: list[tuple[int, ...]], row_tokens: int) -> list[Group]:
    """The prompt's packed rows: its responses in order, a new row where the next would pass `row_tokens`."""
    rows: list[Group] = [(prompt, [])]
    size = len(prompt)
    for response in responses:
        if rows[-1][1] and size + len(response) > row_tokens:
            rows.append((prompt, []))
            size = len(prompt)
        rows[-1][1].append(response)
        size += len(response)
    return rows


def plan_batches(sequences: list[Sequence], batch_size: int, min_primer: int = PRIMER_MIN_TOKENS,
                 share_prompts: bool = True, row_tokens: int = ROW_TOKENS) -> list[Batch]:
    """Distinct sequences grouped by prompt into packed rows (`_rows`), whole rows per batch of about
    `batch_size` responses, the prompts of a batch sharing its primer (`primers`), in row-length order.
    Without `share_prompts` each sequence is a row of its own and nothing is shared: the work of
    whole-sequence scoring."""
    groups: dict[tuple, tuple[tuple[int, ...], dict[tuple[int, ...], None]]] = {}
    for i, (prompt, response) in enumerate(sequences):
        if not prompt:
            raise StageError(f"sequence {i}: an empty prompt; scoring needs at least one token before the response")
        key = prompt if share_prompts else (prompt, response)
        groups.setdefault(key, (prompt, {}))[1][response] = None  # a dict keeps first-seen order, no duplicates
    primer_of = primers([p for p, _ in groups.values()], min_primer) if share_prompts else {}
    by_primer: dict[tuple[int, ...], list[Group]] = {}
    for prompt, responses in groups.values():
        by_primer.setdefault(primer_of.get(prompt, ()), []).extend(_rows(prompt, list(responses), row_tokens))
    batches = []
    for primer in sorted(by_primer):
        current, size = [], 0
        for group in sorted(by_primer[primer], key=lambda g: len(g[0]) + sum(map(len, g[1]))):
            current.append(group)
            size += len(group[1])
            if size >= batch_size:
                batches.append((primer, current))
                current, size = [], 0
        batches += [(primer, current)] if current else []
    return batches


def _backbone(model):
    """The transformer under the LM head (adapters included)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, getattr(base, "base_model_prefix", "model"))


def _head(model):
    """The LM head, for models whose logits are its product alone."""
    text = model.config.get_text_config()
    if getattr(text, "final_logit_softcapping", None) or getattr(text, "logit_scale", None) not in (None, 1, 1.0):
        raise ModelError(f"{type(model).__name__}: scaled or soft-capped logits are not supported by cream.engine.scoring")
    return model.get_output_embeddings()


@dataclass(frozen=True)
class Primer:
    """Tokens every prompt of a batch starts with, encoded once for many batches."""

    tokens: tuple[int, ...]
    cache: DynamicCache  # their keys and values, one row


def encode_primer(model, tokens: tuple[int, ...]) -> Primer:
    """The primer's cache from one pass of the backbone over its tokens."""
    with torch.inference_mode():
        ids = torch.tensor([list(tokens)], device=model.device)
        return Primer(tuple(tokens), _backbone(model)(input_ids=ids, use_cache=True).past_key_values)


def packed_hidden(model, groups: list[Group], pad_id: int, primer: Primer | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's hidden state at each position that predicts a response token, and that token: one
    row per token of the groups' responses, in order. Each group is one row: its prompt (after the
    primer) then its responses, each masked from the others and positioned right after the prompt."""
    skip = len(primer.tokens) if primer is not None else 0
    packed = [list(prompt[skip:]) + [t for r in responses for t in r] for prompt, responses in groups]
    width = max(map(len, packed))
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    segment = torch.full((len(groups), width), -1, dtype=torch.long)  # 0: prompt, k: response k, -1: padding
    rows, columns, targets = [], [], []
    for g, ((prompt, responses), row) in enumerate(zip(groups, packed)):
        own = len(prompt) - skip  # the prompt's tokens in the row
        ids[g, : len(row)] = torch.tensor(row)
        positions[g, :own] = torch.arange(skip, len(prompt))
        segment[g, :own] = 0
        start = own
        for k, response in enumerate(responses, start=1):
            positions[g, start : start + len(response)] = torch.arange(len(prompt), len(prompt) + len(response))
            segment[g, start : start + len(response)] = k
            # the prompt's last token predicts a response's first token, each token the next
            rows += [g] * len(response)
            columns += [own - 1, *range(start, start + len(response) - 1)][: len(response)]  # none if empty
            targets += response
            start += len(response)
    real = segment >= 0
    visible = (segment[:, None, :] == segment[:, :, None]) | (segment[:, None, :] == 0)  # [row, query, key]
    mask = visible & real[:, None, :] & (positions[:, None, :] <= positions[:, :, None])
    mask[:, :, 0] |= ~real  # a padding query sees the first token, so that no attention row is empty
    mask = torch.cat([torch.ones((len(groups), width, skip), dtype=torch.bool), mask], dim=2)[:, None]
    device = model.device
    ids, positions, mask = ids.to(device), positions.to(device), mask.to(device)
    with torch.inference_mode():
        cache = None
        if primer is not None:
            cache = DynamicCache(ddp_cache_data=[(k.expand(len(groups), -1, -1, -1), v.expand(len(groups), -1, -1, -1))
                                                 for k, v, *_ in primer.cache], config=_backbone(model).config)
        hidden = _backbone(model)(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                                  use_cache=cache is not None).last_hidden_state
        index = (torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(columns, dtype=torch.long, device=device))
        return hidden[index], torch.tensor(targets, dtype=torch.long, device=device)


def score_batch(model, groups: list[Group], pad_id: int, primer: Primer | None = None,
                softmax_dtype: torch.dtype | None = torch.float32) -> list[tuple[float, bool]]:
    """(summed log-prob, every token the most likely) of each response of `groups`, in order. The log-softmax
    runs in `softmax_dtype` (None: the model's), and the sum in the same dtype, as lm-eval's HF model does."""
    hidden, targets = packed_hidden(model, groups, pad_id, primer)
    head = _head(model)
    picked, greedy = [], []
    with torch.inference_mode():
        for start in range(0, len(targets), HEAD_TILE):
            tile = targets[start : start + HEAD_TILE]
            log_probs = F.log_softmax(head(hidden[start : start + HEAD_TILE]), dim=-1, dtype=softmax_dtype)
            picked.append(log_probs.gather(1, tile[:, None])[:, 0])
            greedy.append(log_probs.argmax(dim=-1) == tile)
        lengths = [len(r) for _, responses in groups for r in responses]
        picked = torch.cat(picked).split(lengths) if picked else [torch.zeros(0)] * len(lengths)
        greedy = torch.cat(greedy).split(lengths) if greedy else [torch.zeros(0, dtype=torch.bool)] * len(lengths)
        return [(float(p.sum()), bool(g.all())) for p, g in zip(picked, greedy)]


def score_sequences(model, sequences: list[Sequence], batch_size: int, pad_id: int,
                    softmax_dtype: torch.dtype | None = torch.float32, autocast=contextlib.nullcontext,
                    desc: str = "log-probs", disable_tqdm: bool = False,
                    share_prompts: bool = True) -> dict[Sequence, tuple[float, bool]]:
    """(summed log-prob, every token the most likely) of each distinct (prompt, response), scored once."""
    values: dict[Sequence, tuple[float, bool]] = {}
    primer = None
    for primer_tokens, groups in tqdm(plan_batches(sequences, batch_size, share_prompts=share_prompts),
                                      desc=desc, unit="batch", disable=disable_tqdm):
        with autocast():
            if primer_tokens and (primer is None or primer.tokens != primer_tokens):
                primer = encode_primer(model, primer_tokens)  # batches of one primer come in a row
            scored = score_batch(model, groups, pad_id, primer if primer_tokens else None, softmax_dtype)
        values.update(zip(((prompt, r) for prompt, responses in groups for r in responses), scored))
    return values


def sequence_logprobs(model, sequences: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, desc: str,
                      share_prompts: bool = True) -> list[float]:
    """Summed log-probs of each response given its prompt (packed rows, `score_sequences`), in input order.

    Each distinct (prompt, response) is scored once and its value shared: the same sequence in two
    batch rows would get log-probs a few 1e-6 apart, an order that Kendall's tie rule would count.
    """
    keys = [(tuple(p), tuple(r)) for p, r in sequences]
    values = score_sequences(model, keys, batch_size, pad_id, desc=desc, share_prompts=share_prompts)
    return [values[k][0] for k in keys]


def logprobs_under(pool: ModelPool, models: Iterable[ModelRef], sequences: list[tuple[list[int], list[int]]],
                   batch_size: int, pad_id: int, desc: str, passes: int = 1,
                   within: Optional[Callable[[torch.nn.Module], ContextManager]] = None) -> Iterator[tuple[str, list[float]]]:
    """(model name, `sequence_logprobs` of `sequences`) under each of `models`, once per distinct name, one model
    of `pool` loaded at a time; each yielded once that model is done with, so that a caller can keep it before
    the next one loads. `passes` scores each model that many times inside the context `within(model)` opens
    (UPO's dropout passes), a pair yielded per pass. A non-finite log-prob is a broken model: it stops here."""
    for ref in {m.name: m for m in models}.values():
        with pool.use(ref) as model, (within(model) if within is not None else contextlib.nullcontext()):
            scored = [sequence_logprobs(model, sequences, batch_size, pad_id,
                                        desc=f"{desc} {ref.name}" + (f" pass {k + 1}" if passes > 1 else ""))
                      for k in range(passes)]
        for values in scored:
            bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
            if bad:
                raise StageError(f"non-finite log-prob under model {ref.name} for {len(bad)} of {len(values)} "
                                 f"responses ({desc}; first: sequence {bad[0]})")
            yield ref.name, values
